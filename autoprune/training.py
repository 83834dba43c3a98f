"""The training loop behind ``autoprune train`` and fine-tuning: SGD with a cosine or one-cycle schedule, and
optional knowledge distillation from a teacher's logits (Hinton et al., 2015)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from autoprune.data import Split
from autoprune.errors import UserError

SCHEDULES = ("cosine", "onecycle", "constant")


@dataclass
class TrainConfig:
    epochs: float = 1.0  # fractional epochs allowed: fine-tuning inside a reward uses a few hundred steps
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    schedule: str = "cosine"
    augment: bool = True
    kd_alpha: float = 0.9  # weight of the distillation term when a teacher is given
    kd_temperature: float = 4.0
    seed: int = 0
    max_steps: int | None = None


@dataclass
class TrainLog:
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, alpha: float, t: float
) -> torch.Tensor:
    kd = F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="batchmean") * t * t
    return alpha * kd + (1 - alpha) * F.cross_entropy(student, labels)


def train(
    model: nn.Module,
    split: Split,
    config: TrainConfig,
    teacher: nn.Module | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> TrainLog:
    """Train ``model`` in place. ``on_step(step, total_steps, loss)`` drives a progress display."""
    if config.schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {config.schedule!r}: use one of {', '.join(SCHEDULES)}")
    if config.epochs <= 0 or config.lr <= 0:
        raise UserError("epochs and learning rate must be positive")
    steps_per_epoch = -(-len(split) // config.batch_size)
    total = max(1, int(round(config.epochs * steps_per_epoch)))
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.momentum > 0,
    )
    if config.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total)
    elif config.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    if teacher is not None:
        teacher.eval()
    log, step, epoch, t0 = TrainLog(), 0, 0, time.perf_counter()
    torch.manual_seed(config.seed)
    while step < total:
        model.train()
        for x, y in split.batches(config.batch_size, shuffle=True, augment=config.augment, seed=config.seed + epoch):
            out = model(x)
            if teacher is not None:
                with torch.no_grad():
                    t_out = teacher(x)
                loss = distillation_loss(out, t_out, y, config.kd_alpha, config.kd_temperature)
            else:
                loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            log.losses.append(loss.item())
            if on_step is not None:
                on_step(step, total, log.losses[-1])
            if step >= total:
                break
        epoch += 1
    model.eval()
    log.seconds, log.steps = time.perf_counter() - t0, step
    return log
