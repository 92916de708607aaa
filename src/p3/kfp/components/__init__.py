"""Kubeflow components: one thin, typed wrapper per module around a ``p3`` function.

prepare_data, bootstrap_tiny_model, scorer, embedder, selector, trainer,
evaluator, epoch_report, and shard_split / shard_merge for scale-out. Each is a
lightweight ``@dsl.component`` (its body imports ``p3`` inside the project image), so
the same component runs on a cluster and under ``kfp.local``'s SubprocessRunner.
"""
