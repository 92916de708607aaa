"""The ``p3`` command line, generated from each step's config dataclass.

Every subcommand is one ``@dataclass`` (fields documented with ``metadata={"help": …}``)
and one function that takes it; the same function is what the Kubeflow component
calls. A field ``budget: int`` becomes ``--budget``; a field without a default is a
required option; ``bool`` fields are ``--flag/--no-flag``; ``metadata["choices"]``
limits the values. A field that is itself a dataclass (a shared group such as
``GenerationConfig``) contributes its fields as options of their own (see p3.configs).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import signal
import sys
import traceback
import types
import typing
from typing import Any, Callable

from p3 import configs, logs, outputs, storage
from p3.checks import ConfigError

# (words, module, config class, function). Modules import lazily so that `p3 grade`
# never pays for torch and `p3 --help` is instant.
COMMANDS: list[tuple[str, str, str, str]] = [
    ("data prepare", "p3.sources", "PrepareConfig", "prepare"),
    ("data synth", "p3.minimath", "SynthConfig", "synth"),
    ("select", "p3.selection", "SelectConfig", "select"),
    ("grade", "p3.verify.grade", "GradeConfig", "grade"),
    ("model bootstrap", "p3.tiny", "TinyConfig", "build_tiny_model"),
    ("score", "p3.score", "ScoreConfig", "score"),
    ("embed", "p3.embed", "EmbedConfig", "embed"),
    ("train", "p3.train", "TrainConfig", "train"),
    ("evaluate", "p3.evaluate", "EvaluateConfig", "evaluate"),
    ("report", "p3.report", "ReportConfig", "render_report"),
]

SUMMARIES = {
    "data prepare": "Convert a MATH or APPS source (file, s3:// URI or HF dataset) to a problems table.",
    "data synth": "Write the synthetic mini-MATH problems table.",
    "select": "Pick this epoch's training subset (random, full, static, spl, dpp, p3).",
    "grade": "Grade completions: MATH answers with math-verify, APPS programs in a sandbox.",
    "model bootstrap": "Build (and optionally warm up) the tiny offline causal LM that starts the local demo and tests.",
    "score": "Policy-driven difficulty: likelihood, rollout or hybrid.",
    "embed": "Embed problems (sentence-transformers or the policy's hidden states).",
    "train": "Supervised fine-tuning (LoRA, QLoRA or full) on a selection.",
    "evaluate": "Generate, grade and report accuracy / pass@k on a test table.",
    "report": "Render the per-epoch selection report (HTML + Markdown + plots).",
}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--option`` per setting of the config class (nested groups flattened), typed
    and documented from the field."""
    for name, s in configs.settings(cls).items():
        f = s.field
        tp, _ = _unwrap_optional(s.type)
        flag = "--" + name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": name, "help": f.metadata.get("help", "")}
        has_default = configs.has_default(f)
        default = configs.default(f) if has_default else None
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["default"] = default if has_default else False
        elif typing.get_origin(tp) is list:
            (inner,) = typing.get_args(tp)
            kwargs.update(type=inner, nargs="*", default=default)
        else:
            kwargs["type"] = tp if tp in (int, float, str) else str
            if has_default:
                kwargs["default"] = default
            else:
                kwargs["required"] = True
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if has_default and tp is not bool and default is not None:
            kwargs["help"] += f" (default: {default})"
        parser.add_argument(flag, **kwargs)


def build_parser() -> tuple[argparse.ArgumentParser, dict[tuple[str, ...], tuple[str, str, str]]]:
    parser = argparse.ArgumentParser(prog="p3", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    table: dict[tuple[str, ...], tuple[str, str, str]] = {}
    for words, module, cls, func in COMMANDS:
        parts = tuple(words.split())
        parent = sub
        if len(parts) == 2:
            if parts[0] not in groups:
                gp = sub.add_parser(parts[0], help=f"{parts[0]} commands")
                groups[parts[0]] = gp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
            parent = groups[parts[0]]
        p = parent.add_parser(parts[-1], help=SUMMARIES.get(words, ""), description=SUMMARIES.get(words, ""))
        p.set_defaults(_command=parts)
        table[parts] = (module, cls, func)
    return parser, table


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, table = build_parser()
    # Options are added only for the chosen command, so that `p3 --help` imports nothing heavy.
    words = tuple(a for a in argv if not a.startswith("-"))[:2]  # `p3 -v data synth …` too
    key = next((k for k in table if words[: len(k)] == k), None)
    if key is not None:
        module, cls_name, func_name = table[key]
        cls = getattr(importlib.import_module(module), cls_name)
        sub = _find_subparser(parser, key)
        add_dataclass_arguments(sub, cls)
    args = parser.parse_args(argv)
    logs.configure(verbose=args.verbose)
    if key is None or not hasattr(args, "_command"):
        parser.print_help()
        return 2
    prog = f"p3 {' '.join(key)}"
    try:
        cfg = configs.from_flat(cls, {name: getattr(args, name) for name in configs.settings(cls)})
        func: Callable[[Any], Any] = getattr(importlib.import_module(module), func_name)
        with _terminate_as_exit(), outputs.claim(cfg):
            func(cfg)
    except (ConfigError, outputs.PathClash) as exc:  # usage: refused before any work
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (its outputs are all there or none is)", file=sys.stderr)
        return 130
    except EXPECTED as exc:
        # Bad input, I/O, an unreachable store, a missing device: one line naming the path or field.
        logging.getLogger("p3").debug("failed", exc_info=True)
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: the line says so; -v shows where
        if args.verbose:
            traceback.print_exc()
        print(f"{prog}: unexpected error: {_one_line(exc)}" + ("" if args.verbose else " (run with -v for the traceback)"),
              file=sys.stderr)
        return 1
    return 0


# Expected failures: bad values and tables (ValueError, ContractError), files and stores
# (OSError: missing, denied, full, unreachable), unmet requirements (RuntimeError: no CUDA,
# another writer), a missing optional package (ImportError).
EXPECTED = (ValueError, OSError, RuntimeError, ImportError)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, storage.StorageError) and exc.filename and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    if not isinstance(exc, (ValueError, OSError, RuntimeError)):
        text = f"{type(exc).__name__}: {text}"
    return " ".join(text.split())


@contextlib.contextmanager
def _terminate_as_exit():
    """SIGTERM (a pod deleted, `kill`) unwinds like Ctrl-C, so temp files and leases are
    cleaned on the way out; only SIGKILL leaves them, for the next run to remove."""
    def stop(signum, frame):
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _find_subparser(parser: argparse.ArgumentParser, key: tuple[str, ...]) -> argparse.ArgumentParser:
    p = parser
    for word in key:
        action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        p = action.choices[word]
    return p


if __name__ == "__main__":
    sys.exit(main())
