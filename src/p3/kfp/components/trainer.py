"""Component: fine-tune the policy on this epoch's selection (``p3 train``)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from p3.kfp.components.images import TRAIN


@dsl.component(base_image=TRAIN, install_kfp_package=False)
def trainer(
    problems: Input[Dataset],
    selection: Input[Dataset],
    model: Output[Model],
    lora: str = "64,16,0.1",
    full: bool = False,
    qlora: str = "auto",
    lr: float = 4e-4,
    max_steps: int = -1,
    batch_size: int = 8,
    max_len: int = 2048,
    seed: int = 0,
    base_model: str = "",
    policy: Input[Model] = None,
    epoch: int = -1,
):
    """Supervised fine-tuning on the selected problems; one pass per epoch.

    When the pod has several GPUs the same step runs under torchrun, one process per GPU.

    Args:
        problems: Problems table (the pool).
        selection: This epoch's selection.
        model: Output: the trained model dir (merged weights, adapter in adapter/).
        lora: LoRA r,alpha,dropout.
        full: Full fine-tuning instead of LoRA.
        qlora: 4-bit base for LoRA: auto = on a GPU with bitsandbytes; on = wherever bitsandbytes quantizes (CPU too) (one of: auto, on, off)
        lr: Peak learning rate.
        max_steps: Stop after this many optimizer steps (-1 = full passes).
        batch_size: Per-device batch size.
        max_len: Cutoff length in tokens (prefix + target).
        seed: Seed for init, dropout and data order.
        base_model: Model to start from when no ``policy`` artifact is connected (epoch 0).
        policy: The current policy (the previous epoch's trained model).
        epoch: Epoch named in the log lines (the per-epoch pipeline knows it only at run time; -1 = as P3_EPOCH says).
    """
    from p3.logs import configure

    configure(epoch=epoch)  # an entry point: the step's log lines (torchrun's too) go to its pod log
    import subprocess

    from p3.kfp.components._glue import checkpoint_settings, model_ref, torchrun_command
    from p3.train import TrainConfig, train

    cfg = TrainConfig(problems=problems.path, selection=selection.path, model=model_ref(policy, base_model),
                      out=model.path, lora=lora, full=full, qlora=qlora, lr=lr, max_steps=max_steps,
                      batch_size=batch_size, max_len=max_len, seed=seed, **checkpoint_settings(model.uri))
    import torch

    gpus = torch.cuda.device_count()
    if gpus > 1:
        subprocess.run(torchrun_command(["train"], cfg, gpus), check=True)
    else:
        train(cfg)
