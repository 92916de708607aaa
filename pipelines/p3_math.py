"""P3 on MATH as a Kubeflow pipeline: --compile, --local, --submit, --schedule.

    python pipelines/p3_math.py --compile            # -> p3_math.yaml
    python pipelines/p3_math.py --local              # tiny preset, 3 epochs, runs/math-tiny/
    python pipelines/p3_math.py --submit --host http://localhost:8080

The DAG is built in src/p3/kfp/builder.py, the command line in src/p3/kfp/entry.py;
docs/operator-guide.md covers the cluster side.
"""

import sys

from p3.kfp.entry import main

TASK = "math"

if __name__ == "__main__":
    sys.exit(main(TASK))
