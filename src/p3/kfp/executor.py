"""One executor for every component on a cluster: ``python3 -m p3.kfp.executor``.

A lightweight KFP component carries its function's source in the compiled YAML, one
copy per task: at 20 epochs that alone is over a third of a megabyte, near the size an
Argo Workflow object may have in etcd. In the project images the same functions are
installed already, so a cluster build points every task at this module instead::

    python3 -m p3.kfp.executor --component trainer --executor_input {{$}}

It imports ``p3.kfp.components.<component>`` from the image and hands the function and
the executor input to KFP's own executor (kfp.dsl.executor.Executor, the class that
``kfp.dsl.executor_main`` uses for a lightweight component), so inputs, outputs and
metadata are handled exactly as before. kfp.local's SubprocessRunner runs only
lightweight components, so local runs keep the embedded source (builder: ``image_executor``).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json

from kfp import dsl

COMMAND = ["python3", "-m", "p3.kfp.executor"]


def component(module: str):
    """The one component defined in ``p3.kfp.components.<module>``."""
    from kfp.dsl.base_component import BaseComponent

    mod = importlib.import_module(f"p3.kfp.components.{module}")
    found = [v for v in vars(mod).values() if isinstance(v, BaseComponent)]
    if len(found) != 1:
        raise ValueError(f"p3.kfp.components.{module} defines {len(found)} components, not one")
    return found[0]


def from_image(comp):
    """A copy of the lightweight component ``comp`` that runs its function from the
    installed package (this module) instead of from source embedded in the YAML.

    The copy's inputs carry no descriptions either: the YAML repeats a component's whole
    interface for every task that uses it (about 100 KB of the same text at 20 epochs),
    while the arguments stay documented in the component's module and the pipeline's own
    parameters keep theirs."""
    module = comp.python_func.__module__.rpartition(".")[2]
    image_comp = copy.deepcopy(comp)
    for spec in (image_comp.component_spec.inputs or {}).values():
        spec.description = None
    container = image_comp.component_spec.implementation.container
    container.command = list(COMMAND)
    container.args = ["--component", module, "--executor_input", dsl.PIPELINE_TASK_EXECUTOR_INPUT_PLACEHOLDER]
    return image_comp


def main(argv: list[str] | None = None) -> None:
    from kfp.dsl.executor import Executor

    parser = argparse.ArgumentParser(prog="python3 -m p3.kfp.executor", description=__doc__.splitlines()[0])
    parser.add_argument("--component", required=True, help="module under p3.kfp.components")
    parser.add_argument("--executor_input", required=True, help="KFP's ExecutorInput JSON ({{$}})")
    args = parser.parse_args(argv)
    Executor(executor_input=json.loads(args.executor_input), function_to_execute=component(args.component)).execute()


if __name__ == "__main__":
    main()
