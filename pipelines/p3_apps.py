"""P3 on APPS as a Kubeflow pipeline: --compile, --local, --submit, --schedule.

    python pipelines/p3_apps.py --compile            # -> p3_apps.yaml
    python pipelines/p3_apps.py --local              # tiny preset, 3 epochs, runs/apps-tiny/
    python pipelines/p3_apps.py --submit --host http://localhost:8080

See pipelines/builder.py for the DAG and docs/operator-guide.md for the cluster side.
"""

import sys

from p3.pipelines.builder import BuildOptions, build
from p3.pipelines.entry import main

TASK = "apps"


def pipeline(epochs: int = 5, shards: int = 1, preset: str = "full"):
    """The APPS pipeline (a kfp GraphComponent) for a build configuration."""
    return build(BuildOptions(task=TASK, epochs=epochs, shards=shards, preset=preset)).pipeline


if __name__ == "__main__":
    sys.exit(main(TASK))
