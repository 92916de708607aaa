"""Component: a dataset source -> the problems table (``p3 data prepare`` / ``p3 data synth``)."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from p3.kfp.components.images import BASE


@dsl.component(base_image=BASE, install_kfp_package=False)
def prepare_data(
    problems: Output[Dataset],
    task: str = "math",
    source: str = "synth:mini-math",
    split: str = "train",
    hf_config: str = "",
    limit: int = 0,
    seed: int = 0,
    skip_invalid: bool = False,
    synth_n: int = 400,
    synth_levels: str = "1-5",
):
    """Write the problems table of ``source``.

    Args:
        problems: Output problems table (Parquet, the problems contract).
        task: ``math`` or ``apps``: which raw schema the source has.
        source: A .jsonl/.json/.parquet file (local or s3://), a Hugging Face dataset
            name, or ``synth:mini-math`` for the synthetic mini-MATH set.
        split: Split to load (HF datasets), or ``train``/``test`` of mini-MATH.
        hf_config: HF dataset config name(s), comma-separated ('' = none).
        limit: Keep a seeded random sample of this many rows (0 = all).
        seed: Seed of the sample, and of mini-MATH.
        skip_invalid: Drop bad rows (counted in the log) instead of stopping.
        synth_n: Number of mini-MATH problems (synth source only).
        synth_levels: mini-MATH levels, e.g. ``1-5`` (synth source only).
    """
    from p3 import data

    if source.startswith("synth:"):
        data.synth(data.SynthConfig(out=problems.path, n=synth_n, levels=synth_levels, seed=seed, split=split))
    else:
        data.prepare(data.PrepareConfig(task=task, source=source, out=problems.path, split=split,
                                        limit=limit or None, seed=seed, skip_invalid=skip_invalid,
                                        hf_config=hf_config or None))
