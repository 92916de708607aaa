"""Kubeflow components: one thin, typed wrapper per module around a ``p3`` function.

preparer, model_stager, bootstrapper, scorer, embedder, selector, trainer, evaluator,
reporter, shard_split / shard_merge for scale-out, and the per-epoch pipeline's
epoch_state_load / _commit / _finished; p3.kfp.steps names the step kind of each. Each is a
lightweight ``@dsl.component`` (its body imports ``p3`` inside the project image), so
the same component runs on a cluster and under ``kfp.local``'s SubprocessRunner.
"""
