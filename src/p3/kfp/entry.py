"""The command line shared by p3_math.py and p3_apps.py.

    python pipelines/p3_math.py --compile [PATH]          write the pipeline YAML
    python pipelines/p3_math.py --local                   run it here (kfp.local), preset tiny
    python pipelines/p3_math.py --submit --host URL       upload and start a run
    python pipelines/p3_math.py --schedule CRON --host URL   upload and create (or update) a recurring run
    python pipelines/p3_math.py --unschedule NAME --host URL  delete the recurring run NAME

``--epoch-per-run`` builds the per-epoch pipeline instead (one run = one epoch of the training
run ``--set training_run=…`` whose state lives under ``--set state_uri=…``).

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
from p3.kfp.resources import parse_resources
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
    mode.add_argument("--schedule", metavar="CRON", help="upload to --host and create the recurring run --name "
                      "(5 or 6 cron fields); one of that name already in the experiment is updated")
    mode.add_argument("--unschedule", metavar="NAME", help="delete the recurring run NAME from the experiment")
    mode.add_argument("--list-params", action="store_true", help="print the run parameters and their defaults")

    b = ap.add_argument_group("build")
    b.add_argument("--preset", choices=["tiny", "full"], help="parameter defaults: tiny (CPU, minutes) or full "
                   "(real model and data); default tiny for --local, full otherwise")
    b.add_argument("--epochs", type=int, help="epochs, unrolled into the DAG (default: tiny 3, full 5); with "
                   "--epoch-per-run the training run's schedule length")
    b.add_argument("--epoch-per-run", action="store_true", help="build the per-epoch pipeline: each run does the next "
                   "epoch of the training run training_run (state under state_uri), a no-op after the last")
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
    c.add_argument("--resources", default="", metavar="KIND:FIELD=VALUE,…",
                   help="requests, limits, retries, deadline per step kind, e.g. train:memory=160Gi,train:retries=5 "
                   "(defaults: docs/operator-guide.md §6)")

    r = ap.add_argument_group("remote (--submit, --schedule)")
    r.add_argument("--host", help="KFP API endpoint (default: $KF_PIPELINES_ENDPOINT or kfp's discovery)")
    r.add_argument("--experiment", default=f"p3-{task}", help="experiment name")
    r.add_argument("--namespace", help="Kubeflow namespace (multi-user deployments)")
    r.add_argument("--run-name", help="display name of the run; of the recurring run unless --name is given")
    r.add_argument("--max-concurrency", type=int, default=1, help="recurring run: runs at once (KFP allows 1-10)")
    r.add_argument("--catchup", action="store_true", help="recurring run: also start the runs missed while paused")
    r.add_argument("--pipeline-root", help="artifact root, e.g. s3://bucket/p3 (default: the backend's)")

    lo = ap.add_argument_group("local (--local)")
    lo.add_argument("--runs-dir", default="runs", help="where run folders go")
    lo.add_argument("--name", help="--local: run folder name under --runs-dir (default <task>-<preset>); "
                    "--schedule: the recurring run's name (default --run-name, else 'p3-<task> (recurring)')")
    lo.add_argument("--fresh", action="store_true", help="start over instead of resuming from the run's cache")
    lo.add_argument("--export", metavar="URI", help="also copy report, selections and final model to a folder or s3:// URI")
    lo.add_argument("-v", "--verbose", action="store_true", help="show every log line, not just the summary lines")
    return ap


def parse_params(task: str, preset: str, sets: list[str], per_epoch: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """(defaults of the preset, overrides from --set NAME=VALUE), each value checked against its
    run parameter's type and, for a step setting, the config field's choices and bounds."""
    defaults = preset_defaults(task, preset)
    fields = {f.name: f for f in dataclasses.fields(PipelineParams)}
    if per_epoch:
        from p3.kfp.per_epoch import STATE_PARAMS

        defaults.update(training_run=f"p3-{task}", state_uri="")
        fields.update({name: dataclasses.field(metadata={"help": h}) for name, (_, h) in STATE_PARAMS.items()})
        for name, (tp, _) in STATE_PARAMS.items():
            fields[name].type = tp
    overrides: dict[str, Any] = {}
    for item in sets:
        name, sep, raw = item.partition("=")
        if not sep or name not in fields:
            raise SystemExit(f"--set {item!r}: unknown parameter (see --list-params"
                             f"{'' if per_epoch or name not in ('training_run', 'state_uri') else '; needs --epoch-per-run'})")
        overrides[name] = parse_value(name, raw, fields[name])
    return defaults, overrides


TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_value(name: str, raw: str, f: dataclasses.Field) -> Any:
    """``raw`` as the run parameter ``f`` takes it, within its step setting's rules (p3.checks);
    SystemExit with one line naming it otherwise."""
    tp = f.type
    if tp is bool:
        if raw.lower() not in TRUE + FALSE:
            raise SystemExit(f"--set {name}={raw}: {name} is true or false")
        return raw.lower() in TRUE
    try:
        value = tp(raw)
    except ValueError:
        raise SystemExit(f"--set {name}={raw}: {name} takes {'an integer' if tp is int else 'a number'}") from None
    setting = f.metadata.get("setting")
    why = checks.problem_of(value, tp, setting.metadata if setting is not None else {})
    if why:  # the rules of the step's config field, before anything is compiled or submitted
        raise SystemExit(f"--set {name}={raw}: {name} {why}")
    return value


def cluster_settings(args: argparse.Namespace, preset: str) -> ClusterSettings:
    base = dict(CLUSTER.gpus) if preset == "full" else {}
    try:
        gpus = parse_gpus(args.gpus, base)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    c = ClusterSettings(gpu_type=args.gpu_type, gpus=gpus, shm_size=args.shm_size,
                        model_cache_pvc=args.model_cache_pvc, s3_secret=args.s3_secret, hf_secret=args.hf_secret)
    try:
        c.resources = parse_resources(args.resources, c.resources)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
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
    # everything on the command line is checked here, before compiling, running or calling an API
    defaults, overrides = parse_params(task, preset, args.set, per_epoch=args.epoch_per_run)
    if args.list_params:
        for f in dataclasses.fields(PipelineParams):
            print(f"{f.name:16} {f.type.__name__:5} {defaults[f.name]!r:40} {f.metadata['help']}")
        if args.epoch_per_run:
            from p3.kfp.per_epoch import STATE_PARAMS

            for n, (tp, help_) in STATE_PARAMS.items():
                print(f"{n:16} {tp.__name__:5} {defaults[n]!r:40} {help_}")
        return 0
    if args.epoch_per_run:
        from p3.kfp import epoch_state

        try:
            epoch_state.check_name({**defaults, **overrides}["training_run"])
        except epoch_state.StateError as e:
            raise SystemExit(f"--set {e}") from None
        if not args.local and not args.compile and not {**defaults, **overrides}["state_uri"]:
            raise SystemExit("--epoch-per-run: set where training runs keep their state: --set state_uri=s3://BUCKET/PATH")
    for flag, value in (("--epochs", args.epochs), ("--shards", args.shards)):
        if value is not None and value < 1:
            raise SystemExit(f"{flag} {value}: must be at least 1")
    opts = BuildOptions(task=task, epochs=args.epochs or (3 if preset == "tiny" else 5), shards=args.shards,
                        preset=preset, bootstrap_tiny=preset == "tiny", cluster=cluster_settings(args, preset),
                        embed_per_epoch={**defaults, **overrides}["embedder"] == "policy")
    from p3.kfp import remote

    name = f"p3-{task}-per-epoch" if args.epoch_per_run else f"p3-{task}"
    if args.schedule is not None:
        remote.schedule_of(args.name or args.run_name or f"{name} (recurring)", args.schedule, args.max_concurrency,
                           args.catchup)
    if args.submit or args.schedule is not None or args.unschedule is not None:
        remote.target_of(args.host, args.namespace, args.experiment)
    if args.unschedule is not None:
        n = remote.unschedule(args.unschedule, args.host, args.experiment, args.namespace)
        print(f"deleted {n} recurring run(s) named {args.unschedule!r} (experiment {args.experiment})")
        return 0
    if args.local:
        return _local(args, opts, overrides)
    defaults = {**defaults, **overrides}  # compiled in as the defaults of the run parameters
    if args.compile:
        print(compile_pipeline(opts, args.compile, defaults, build_fn=_build_fn(args)))
        return 0
    with tempfile.TemporaryDirectory(prefix="p3-pipeline-") as tmp:
        package = compile_pipeline(opts, os.path.join(tmp, f"{name}.yaml"), defaults, build_fn=_build_fn(args))
        common = dict(package=package, name=name, params=overrides, host=args.host,
                      experiment=args.experiment, namespace=args.namespace, pipeline_root=args.pipeline_root)
        if args.submit:
            run = remote.submit(run_name=args.run_name, **common)
            print(f"submitted run {run.run_id} (experiment {args.experiment})")
        else:
            job = remote.schedule(cron=args.schedule, run_name=args.name or args.run_name,
                                  max_concurrency=args.max_concurrency, catchup=args.catchup, **common)
            print(f"scheduled recurring run {job.recurring_run_id} ({job.display_name!r}) on "
                  f"'{remote.kfp_cron(args.schedule)}' (experiment {args.experiment})")
    return 0


def _build_fn(args: argparse.Namespace):
    if not args.epoch_per_run:
        return None
    from p3.kfp.per_epoch import build_per_epoch

    return build_per_epoch


def _local(args: argparse.Namespace, opts: BuildOptions, overrides: dict[str, Any]) -> int:
    if args.epoch_per_run:
        from p3.kfp.per_epoch import run_local

        run_dir = os.path.join(args.runs_dir, args.name or f"{opts.task}-{opts.preset}-per-epoch")
        params = {"state_uri": os.path.abspath(os.path.join(run_dir, "state")), **overrides}
        from p3.kfp.epoch_state import StateError

        try:
            out = run_local(opts, params, run_dir)
        except StateError as exc:  # the run does not fit its training run: already one line, naming what differs
            print(f"p3_{opts.task}.py: error: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:  # noqa: BLE001 - one line; the step's own error (EpochConflict, …) is in the log
            print(f"p3_{opts.task}.py: error: {' '.join(str(exc).split())[:300] or type(exc).__name__} "
                  f"(log: {os.path.join(run_dir, 'pipeline.log')})", file=sys.stderr)
            return 1
        s = out["state"]
        print(f"training run {s.training_run!r}: {s.epoch} of {s.epochs} epochs done in {out['wall_s']:.0f}s"
              f"{' (finished)' if s.done else ''}; model: {s.policy or '-'}; log: {os.path.join(run_dir, 'pipeline.log')}")
        return 0
    from p3.kfp.localrun import run_local

    try:
        run_local(opts, overrides, runs_dir=args.runs_dir, name=args.name, fresh=args.fresh,
                  verbose=args.verbose, export=args.export)
    except KeyboardInterrupt:
        return 130  # stopped: the same command resumes
    except Exception as exc:  # noqa: BLE001 - one line: the run's summary, or this one when it never started
        if not getattr(exc, "p3_summarised", False):
            print(f"p3_{opts.task}.py: error: {' '.join(str(exc).split()) or type(exc).__name__}", file=sys.stderr)
        return 1
    return 0
