"""Component: the tiny offline policy of the local preset, built and warmed up (``p3 model bootstrap``)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from p3.kfp.components.images import BASE


@dsl.component(base_image=BASE, install_kfp_package=False)
def bootstrapper(
    problems: Input[Dataset],
    model: Output[Model],
    steps: int = 300,
    seed: int = 0,
):
    """Build the tiny causal LM (tokenizer from the data) and warm it up on ``problems``.

    Args:
        problems: Problems table: the tokenizer's vocabulary and the warm-up data.
        model: Output model dir (transformers format), the policy of epoch 0.
        steps: Warm-up optimizer steps on the train_on table (0 = none).
        seed: Seed for the weights and the warm-up order.
    """
    from p3.logs import configure

    configure()  # an entry point: the step's log lines go to its pod log
    from p3.tiny import TinyConfig, build_tiny_model

    build_tiny_model(TinyConfig(out=model.path, train_on=problems.path, steps=steps, seed=seed))
