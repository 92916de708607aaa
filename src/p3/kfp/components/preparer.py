"""Component: a dataset source -> the problems table (``p3 data prepare`` / ``p3 data synth``)."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from p3.kfp.components.images import BASE


@dsl.component(base_image=BASE, install_kfp_package=False)
def preparer(
    problems: Output[Dataset],
    task: str,
    source: str,
    split: str = "train",
    hf_config: str = "",
    limit: int = 0,
    seed: int = 0,
    skip_invalid: bool = False,
    synth_n: int = 500,
    synth_levels: str = "1-5",
):
    """Write the problems table of ``source``.

    Args:
        problems: Output problems table (Parquet, the problems contract).
        task: Which dataset schema the source has (one of: math, apps).
        source: A .jsonl/.json/.parquet file (local or s3://) in the dataset's raw schema, hf:NAME for a
            Hugging Face hub dataset, or a local dataset folder (or synth:mini-math: the synthetic mini-MATH set).
        split: Split to load from a HF dataset; also part of MATH ids (mini-MATH: train or test).
        hf_config: HF dataset config name(s), comma-separated to concatenate several ('' = none).
        limit: Keep a seeded random sample of this many rows (0 = all).
        seed: Seed of the --limit sample (and of mini-MATH).
        skip_invalid: Drop bad rows (and count them) instead of stopping.
        synth_n: Number of problems (spread evenly over the levels).
        synth_levels: Levels to generate: a range 1-5 or a list 1,3,5.
    """
    from p3.logs import configure

    configure()  # an entry point: the step's log lines go to its pod log
    from p3 import minimath, sources

    if source.startswith("synth:"):
        minimath.synth(minimath.SynthConfig(out=problems.path, n=synth_n, levels=synth_levels, seed=seed, split=split))
    else:
        sources.prepare(sources.PrepareConfig(task=task, source=source, out=problems.path, split=split,
                                        limit=limit or None, seed=seed, skip_invalid=skip_invalid,
                                        hf_config=hf_config or None))
