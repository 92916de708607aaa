"""The components: one per module, typed and documented, and the little plumbing they share."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

import pyarrow as pa
import pytest

import p3.kfp.components
from p3 import contracts, rundata, storage
from p3.kfp.components import _glue, images
from p3.kfp.steps import STEPS
from kfp.dsl.base_component import BaseComponent

MODULES = sorted(m.name for m in pkgutil.iter_modules(p3.kfp.components.__path__) if not m.name.startswith("_")
                 and m.name != "images")
EXPECTED = {s.component for s in STEPS}  # every step's component, and nothing else


def component_of(module: str) -> BaseComponent:
    mod = importlib.import_module(f"p3.kfp.components.{module}")
    found = [v for v in vars(mod).values() if isinstance(v, BaseComponent)]
    assert len(found) == 1, f"{module}: one component per module, found {len(found)}"
    return found[0]


def test_every_expected_component_has_its_module():
    assert set(MODULES) == EXPECTED


@pytest.mark.parametrize("module", MODULES)
def test_component_is_lightweight_typed_and_documents_every_argument(module):
    comp = component_of(module)
    assert comp.name == module.replace("_", "-")
    spec = comp.component_spec
    container = spec.implementation.container
    # lightweight (the local runner refuses containerized components), on a pinned project image
    assert any("kfp.dsl.executor_main" in part for part in container.command + (container.args or []))
    assert container.image in (images.BASE, images.VLLM, images.TRAIN)
    # no pip install at start-up: the image has the project (and kfp) installed
    assert not any("pip install" in part for part in container.command)
    for name, io in spec.inputs.items():
        assert io.description, f"{module}: argument {name!r} is not documented"
    outputs = spec.outputs or {}
    # kfp keeps no description for outputs: read them from the docstring's Args section
    doc = comp.python_func.__doc__
    for name in outputs:
        assert f"\n        {name}: " in doc, f"{module}: output {name!r} is not documented"
    assert outputs, "a component must produce an artifact"
    artifacts = [o for o in outputs.values() if o.type not in ("Integer", "Boolean", "String", "Float")]
    assert artifacts and all(o.type.startswith("system.") for o in artifacts)


def test_gpu_components_run_on_gpu_images():
    assert component_of("scorer").component_spec.implementation.container.image == images.VLLM
    assert component_of("evaluator").component_spec.implementation.container.image == images.VLLM
    assert component_of("trainer").component_spec.implementation.container.image == images.TRAIN
    assert component_of("selector").component_spec.implementation.container.image == images.BASE


def _table(n: int) -> pa.Table:
    return pa.table({"id": [f"p{i}" for i in range(n)], "x": list(range(n))})


def test_shards_cover_the_table_once_and_merge_back_in_order(tmp_path):
    src = str(tmp_path / "t.parquet")
    storage.write_table(_table(11), src)
    parts = []
    for i in range(4):
        parts.append(str(tmp_path / f"s{i}.parquet"))
        _glue.split_rows(src, i, 4, parts[-1])
    ids = [storage.read_table(p).column("id").to_pylist() for p in parts]
    assert sorted(sum(ids, [])) == sorted(f"p{i}" for i in range(11))
    assert [len(x) for x in ids] == [3, 3, 3, 2]
    merged = str(tmp_path / "m.parquet")
    assert _glue.concat_tables(reversed(parts), merged, order_by=src) == 11
    assert storage.read_table(merged).equals(storage.read_table(src))
    with pytest.raises(ValueError):
        _glue.split_rows(src, 4, 4, parts[0])
    # rows that are not in the pool are an error, not silently kept
    stray = str(tmp_path / "stray.parquet")
    storage.write_table(pa.table({"id": ["nope"], "x": [0]}), stray)
    with pytest.raises(ValueError, match="not in"):
        _glue.concat_tables([parts[0], stray], merged, order_by=src)


def test_model_ref_prefers_the_artifact():
    class Art:
        path = "/pipeline/root/trainer/model"

    assert _glue.model_ref(Art(), "base") == Art.path
    assert _glue.model_ref(None, "org/base") == "org/base"
    with pytest.raises(ValueError):
        _glue.model_ref(None, "")


def test_config_argv_rebuilds_the_same_config_through_the_p3_cli():
    """torchrun gets a command line; it must mean exactly the config the component built."""
    from p3 import cli
    from p3.train import TrainConfig

    cfg = TrainConfig(problems="/a/p.parquet", selection="/a/s.parquet", model="org/m", out="/a/out",
                      lora="16,32,0.05", full=False, lr=1e-4, max_steps=7, seed=3)
    parser, _ = cli.build_parser()
    sub = cli._find_subparser(parser, ("train",))
    cli.add_dataclass_arguments(sub, TrainConfig)
    ns = parser.parse_args(["train", *_glue.config_argv(cfg)])
    again = TrainConfig(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(TrainConfig)})
    assert again == cfg
    cmd = _glue.torchrun_command(["train"], cfg, 4)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]
    assert cmd[5:8] == ["-m", "p3.cli", "train"]


def test_empty_table_only_when_nothing_was_written(tmp_path):
    path = str(tmp_path / "rollouts")
    _glue.empty_table_unless_written(path, contracts.ROLLOUTS)
    assert contracts.read(path, contracts.ROLLOUTS).num_rows == 0
    full = pa.table({"id": ["a"], "sample": [0], "completion": ["x"], "score": [1.0], "status": ["ok"],
                     "isolation": ["bwrap"]},
                    schema=contracts.ROLLOUTS)
    storage.write_table(full, path)
    _glue.empty_table_unless_written(path, contracts.ROLLOUTS)
    assert contracts.read(path, contracts.ROLLOUTS).num_rows == 1


def test_add_epoch_hands_the_run_folder_on(tmp_path):
    files = {}
    for key in _glue.epoch_file_names():
        files[key] = str(tmp_path / f"in-{key}")
        (tmp_path / f"in-{key}").write_text(key)
    problems = tmp_path / "problems"
    problems.write_text("problems")
    run0, run1 = str(tmp_path / "run0"), str(tmp_path / "run1")
    _glue.add_epoch(run0, 0, files, str(problems), None)
    _glue.add_epoch(run1, 1, files, str(problems), run0)
    for run, epochs in ((run0, [0]), (run1, [0, 1])):
        for e in epochs:
            for key in files:  # under the name the report renderer looks for first
                assert (tmp_path / run / f"epoch_{e}" / rundata.EPOCH_FILES[key]).read_text() == key
        assert (tmp_path / run / "problems.parquet").read_text() == "problems"
    assert not (tmp_path / "run0" / "epoch_1").exists()  # the previous folder is copied, not changed
