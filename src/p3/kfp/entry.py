"""The command line shared by p3_math.py and p3_apps.py.

    python pipelines/p3_math.py --compile [PATH]          write the pipeline YAML
    python pipelines/p3_math.py --local                   run it here (kfp.local), preset tiny
    python pipelines/p3_math.py --submit --host URL       upload and start a run
    python pipelines/p3_math.py --schedule CRON --host URL   upload and create a recurring run

Build options (``--epochs``, ``--shards``, ``--preset``, GPU settings) shape the DAG;
``--set NAME=VALUE`` overrides a run parameter (``--list-params`` shows them all).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from typing import Any

from p3 import checks, logs
from p3.kfp.builder import BuildOptions, ClusterSettings, compile_pipeline, parse_gpus, preset_defaults
from p3.kfp.params import PipelineParams

CLUSTER = ClusterSettings()  # the CLI's defaults are the settings' own


def build_parser(task: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"p3_{task}.py", description=f"P3 on {task.upper()} as a Kubeflow pipeline.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--compile", nargs="?", const=f"p3_{task}.yaml", metavar="PATH",
                      help=f"write the pipeline YAML (default p3_{task}.yaml) and print its path")
    mode.add_argument("--local", action="store_true", help="run with kfp.local's SubprocessRunner in this environment")
    mode.add_argument("--submit", action="store_true", help="upload to --host and start a run")
    mode.add_argument("--schedule", metavar="CRON", help="upload to --host and create a recurring run (5 or 6 cron fields)")
    mode.add_argument("--list-params", action="store_true", help="print the run parameters and their defaults")

    b = ap.add_argument_group("build")
    b.add_argument("--preset", choices=["tiny", "full"], help="parameter defaults: tiny (CPU, minutes) or full "
                   "(real model and data); default tiny for --local, full otherwise")
    b.add_argument("--epochs", type=int, help="epochs, unrolled into the DAG (default: tiny 3, full 5)")
    b.add_argument("--shards", type=int, default=1, help="score and embed the pool in S parallel shards")
    b.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a run parameter")

    c = ap.add_argument_group("cluster (kfp-kubernetes; ignored by --local)")
    c.add_argument("--gpu-type", default=CLUSTER.gpu_type, help="accelerator resource name")
    c.add_argument("--gpus", default="", metavar="KIND=N,…",
                   help="GPUs per step kind (score, embed, train, evaluate); train > 1 runs torchrun "
                   "(default: 1 each for preset full, 0 for tiny)")
    c.add_argument("--node-selector", action="append", default=[], metavar="KEY=VALUE", help="for GPU steps")
    c.add_argument("--toleration", action="append", default=None, metavar="KEY[=VALUE]:EFFECT",
                   help="for GPU steps (default: nvidia.com/gpu Exists NoSchedule)")
    c.add_argument("--shm-size", default=CLUSTER.shm_size, help="/dev/shm (memory) of vLLM and training steps")
    c.add_argument("--model-cache-pvc", default=CLUSTER.model_cache_pvc, help="PVC mounted at /cache ('' = none)")
    c.add_argument("--s3-secret", default=CLUSTER.s3_secret, help="secret with AWS_* and P3_S3_ENDPOINT_URL ('' = none)")
    c.add_argument("--hf-secret", default=CLUSTER.hf_secret, help="secret with HF_TOKEN ('' = none)")

    r = ap.add_argument_group("remote (--submit, --schedule)")
    r.add_argument("--host", help="KFP API endpoint (default: $KF_PIPELINES_ENDPOINT or kfp's discovery)")
    r.add_argument("--experiment", default=f"p3-{task}", help="experiment name")
    r.add_argument("--namespace", help="Kubeflow namespace (multi-user deployments)")
    r.add_argument("--run-name", help="display name of the run / recurring run")
    r.add_argument("--pipeline-root", help="artifact root, e.g. s3://bucket/p3 (default: the backend's)")

    lo = ap.add_argument_group("local (--local)")
    lo.add_argument("--runs-dir", default="runs", help="where run folders go")
    lo.add_argument("--name", help="run folder name under --runs-dir (default <task>-<preset>)")
    lo.add_argument("--fresh", action="store_true", help="start over instead of resuming from the run's cache")
    lo.add_argument("--export", metavar="URI", help="also copy report, selections and final model to a folder or s3:// URI")
    lo.add_argument("-v", "--verbose", action="store_true", help="show every log line, not just the summary lines")
    return ap


def parse_params(task: str, preset: str, sets: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(defaults of the preset, overrides from --set NAME=VALUE typed by PipelineParams)."""
    defaults = preset_defaults(task, preset)
    fields = {f.name: f for f in dataclasses.fields(PipelineParams)}
    types = {name: f.type for name, f in fields.items()}
    overrides: dict[str, Any] = {}
    for item in sets:
        name, sep, value = item.partition("=")
        if not sep or name not in types:
            raise SystemExit(f"--set {item!r}: unknown parameter (see --list-params)")
        tp = types[name]
        if tp is bool:
            overrides[name] = value.lower() in ("1", "true", "yes", "on")
        else:
            try:
                overrides[name] = tp(value)
            except ValueError:
                raise SystemExit(f"--set {item!r}: {name} takes a {tp.__name__}") from None
        setting = fields[name].metadata.get("setting")
        why = setting is not None and checks.problem_of(overrides[name], tp, setting.metadata)
        if why:  # the rules of the step's config field, before anything is compiled or submitted
            raise SystemExit(f"--set {item!r}: {name} {why}")
    return defaults, overrides


def cluster_settings(args: argparse.Namespace, preset: str) -> ClusterSettings:
    base = dict(CLUSTER.gpus) if preset == "full" else {}
    c = ClusterSettings(gpu_type=args.gpu_type, gpus=parse_gpus(args.gpus, base), shm_size=args.shm_size,
                        model_cache_pvc=args.model_cache_pvc, s3_secret=args.s3_secret, hf_secret=args.hf_secret)
    for item in args.node_selector:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--node-selector {item!r}: want KEY=VALUE")
        c.node_selector[key] = value
    if args.toleration is not None:
        c.tolerations = [parse_toleration(t) for t in args.toleration]
    return c


def parse_toleration(spec: str) -> dict[str, str]:
    """``key=value:Effect`` (operator Equal) or ``key:Effect`` (operator Exists)."""
    kv, _, effect = spec.rpartition(":") if ":" in spec else (spec, "", "")
    key, sep, value = kv.partition("=")
    t = {"key": key, "operator": "Equal" if sep else "Exists"}
    if sep:
        t["value"] = value
    if effect:
        t["effect"] = effect
    return t


def main(task: str, argv: list[str] | None = None) -> int:
    args = build_parser(task).parse_args(argv)
    logs.configure()  # an entry point: modules configure no logging themselves
    preset = args.preset or ("tiny" if args.local else "full")
    defaults, overrides = parse_params(task, preset, args.set)
    if args.list_params:
        for f in dataclasses.fields(PipelineParams):
            print(f"{f.name:16} {f.type.__name__:5} {defaults[f.name]!r:40} {f.metadata['help']}")
        return 0
    opts = BuildOptions(task=task, epochs=args.epochs or (3 if preset == "tiny" else 5), shards=args.shards,
                        preset=preset, bootstrap_tiny=preset == "tiny", cluster=cluster_settings(args, preset))
    if args.local:
        from p3.kfp.localrun import run_local

        try:
            run_local(opts, overrides, runs_dir=args.runs_dir, name=args.name, fresh=args.fresh,
                      verbose=args.verbose, export=args.export)
        except KeyboardInterrupt:
            return 130  # stopped: the same command resumes
        except Exception as exc:  # noqa: BLE001 - one line: the run's summary, or this one when it never started
            if not getattr(exc, "p3_summarised", False):
                print(f"p3_{task}.py: error: {' '.join(str(exc).split()) or type(exc).__name__}", file=sys.stderr)
            return 1
        return 0
    defaults = {**defaults, **overrides}  # compiled in as the defaults of the run parameters
    if args.compile:
        print(compile_pipeline(opts, args.compile, defaults))
        return 0
    from p3.kfp import remote

    with tempfile.TemporaryDirectory(prefix="p3-pipeline-") as tmp:
        package = compile_pipeline(opts, os.path.join(tmp, f"p3_{task}.yaml"), defaults)
        common = dict(package=package, name=f"p3-{task}", params=overrides, host=args.host,
                      experiment=args.experiment, namespace=args.namespace, run_name=args.run_name,
                      pipeline_root=args.pipeline_root)
        if args.submit:
            run = remote.submit(**common)
            print(f"submitted run {run.run_id} (experiment {args.experiment})")
        else:
            job = remote.schedule(cron=args.schedule, **common)
            print(f"scheduled recurring run {job.recurring_run_id} on '{remote.kfp_cron(args.schedule)}' "
                  f"(experiment {args.experiment})")
    return 0
