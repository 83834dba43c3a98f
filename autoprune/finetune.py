"""Fine-tuning a pruned model, optionally distilled from the unpruned one.

Pruning removes capacity the remaining weights were not trained to do without; a short fine-tune recovers most of
it. The default learning rate is a tenth of the training rate (0.01 for the SGD recipe ``autoprune train`` uses),
and ``teacher=`` distils from the unpruned model's logits (Hinton et al., 2015), which typically recovers more in
the same number of steps than labels alone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch.nn as nn

from autoprune.compute import CPU, Compute
from autoprune.data import DataBundle
from autoprune.distributed import SINGLE, World
from autoprune.training import TrainConfig, TrainLog, total_steps, train

DEFAULT_FINETUNE_LR = 0.01
FINETUNE_BATCH_SIZE = 128


def finetune_steps(data: DataBundle, epochs: float, batch_size: int = FINETUNE_BATCH_SIZE) -> int:
    """The SGD steps :func:`finetune` makes in ``epochs`` over ``data.train``."""
    return total_steps(len(data.train), TrainConfig(epochs=epochs, batch_size=batch_size))


def finetune(
    model: nn.Module,
    data: DataBundle,
    *,
    epochs: float = 1.0,
    lr: float = DEFAULT_FINETUNE_LR,
    teacher: nn.Module | None = None,
    batch_size: int = FINETUNE_BATCH_SIZE,
    seed: int = 0,
    kd_alpha: float = 0.9,
    kd_temperature: float = 4.0,
    on_step: Callable[[int, int, float], None] | None = None,
    compute: Compute = CPU,
    world: World = SINGLE,
    checkpoint: Path | None = None,
    resume: bool = False,
) -> TrainLog:
    """Fine-tune ``model`` in place on ``data.train`` (cosine-decayed SGD, standard augmentation) on ``compute``, as
    one of ``world``'s processes, saving ``checkpoint`` after every epoch (and continuing from it with ``resume``)."""
    config = TrainConfig(
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        schedule="cosine",
        seed=seed,
        kd_alpha=kd_alpha,
        kd_temperature=kd_temperature,
        checkpoint=checkpoint,
        resume=resume,
    )
    return train(model, data.train, config, teacher=teacher, on_step=on_step, compute=compute, world=world)
