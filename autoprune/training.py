"""The training loop behind ``autoprune train`` and fine-tuning: SGD with a cosine or one-cycle schedule, and
optional knowledge distillation from a teacher's logits (Hinton et al., 2015)."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from autoprune import atomic
from autoprune.compute import CPU, Compute, placed
from autoprune.data import Split
from autoprune.distributed import SINGLE, World
from autoprune.errors import UserError

SCHEDULES = ("cosine", "onecycle", "constant")
# what a checkpoint must agree on with the run that resumes it: the same steps, schedule and data order
RESUME_KEYS = ("epochs", "lr", "momentum", "weight_decay", "batch_size", "schedule", "augment", "seed", "max_steps")


@dataclass
class TrainConfig:
    epochs: float = 1.0  # fractional epochs allowed: fine-tuning inside a reward uses a few hundred steps
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128  # the global batch: with N processes each takes batch_size / N
    schedule: str = "cosine"
    augment: bool = True
    kd_alpha: float = 0.9  # weight of the distillation term when a teacher is given
    kd_temperature: float = 4.0
    seed: int = 0
    max_steps: int | None = None
    checkpoint: Path | None = None  # written (atomically, by rank 0) at the end of every epoch and of the run
    resume: bool = False  # continue from ``checkpoint`` when it exists


def total_steps(images: int, config: TrainConfig) -> int:
    """The SGD steps ``config`` makes over ``images`` training images: its (fractional) epochs of whole batches,
    rounded, at least one, at most ``max_steps``."""
    steps = max(1, int(round(config.epochs * -(-images // config.batch_size))))
    return steps if config.max_steps is None else min(steps, config.max_steps)


@dataclass
class TrainLog:
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    images: int = 0  # seen by all processes, in this run (not before a resume)
    resumed_at_step: int | None = None

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


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
    *,
    compute: Compute = CPU,
    world: World = SINGLE,
) -> TrainLog:
    """Train ``model`` in place on ``compute`` (and, with ``world``, as one of its DDP processes); it is back on the
    CPU when this returns. ``on_step(step, total_steps, loss)`` drives a progress display."""
    if config.schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {config.schedule!r}: use one of {', '.join(SCHEDULES)}")
    if config.epochs <= 0 or config.lr <= 0:
        raise UserError("epochs and learning rate must be positive")
    if world.distributed and config.batch_size < world.size:
        raise UserError(f"--batch-size {config.batch_size} is smaller than the {world.size} processes sharing it")
    total = total_steps(len(split), config)
    with placed(model, compute) as net, placed(teacher, compute) if teacher is not None else nullcontext() as tnet:
        opt, sched = _optimizer(net, config, total)
        scaler = compute.grad_scaler()
        state = _Loop(step=0, epoch=0)
        torch.manual_seed(config.seed)
        if config.resume and config.checkpoint is not None and config.checkpoint.is_file():
            state = _load_checkpoint(config, net, opt, sched, scaler, world)
        log = TrainLog(resumed_at_step=state.step or None)
        runner = _wrap(net, compute, world)
        t0 = time.perf_counter()
        while state.step < total:
            _epoch(runner, tnet, split, config, opt, sched, scaler, compute, world, state, total, log, on_step)
            if config.checkpoint is not None and world.main:
                _save_checkpoint(config, net, opt, sched, scaler, world, compute, state)
            world.barrier()
        net.eval()
        log.seconds, log.steps = time.perf_counter() - t0, state.step
    return log


@dataclass
class _Loop:
    step: int
    epoch: int


def _optimizer(model: nn.Module, config: TrainConfig, total: int):
    """SGD with Nesterov momentum, no weight decay on biases and BN (as the CIFAR ResNet recipes), and the schedule
    over ``total`` steps."""
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
    return opt, sched


def _wrap(model: nn.Module, compute: Compute, world: World) -> nn.Module:
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[compute.device] if compute.cuda else None)


def _epoch(model, teacher, split, config, opt, sched, scaler, compute, world, state, total, log, on_step) -> None:
    """One pass over this rank's shard of ``split`` (stopping at ``total`` steps)."""
    model.train()
    seed = config.seed + state.epoch
    for x, y in split.batches(config.batch_size, shuffle=True, augment=config.augment, seed=seed, world=world):
        x, y = compute.batch(x), y.to(compute.device, non_blocking=compute.pin_memory)
        with compute.autocast():
            out = model(x)
            if teacher is not None:
                with torch.no_grad():
                    t_out = teacher(x)
                loss = distillation_loss(out.float(), t_out.float(), y, config.kd_alpha, config.kd_temperature)
            else:
                loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        sched.step()
        state.step += 1
        log.images += len(y) * world.size
        log.losses.append(loss.item())
        if on_step is not None:
            on_step(state.step, total, log.losses[-1])
        if state.step >= total:
            break
    state.epoch += 1


def _fingerprint(config: TrainConfig) -> dict:
    d = asdict(config)
    return {k: d[k] for k in RESUME_KEYS}


def _save_checkpoint(config, model, opt, sched, scaler, world, compute, state: _Loop) -> None:
    """The whole training state after an epoch, written atomically: a kill leaves the previous epoch's."""
    atomic.torch_save(
        {
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "step": state.step,
            "epoch": state.epoch,
            "rng": torch.get_rng_state(),
            "config": _fingerprint(config),
            "world_size": world.size,
            "compute": compute.describe(),
        },
        config.checkpoint,
    )


def _load_checkpoint(config, model, opt, sched, scaler, world) -> _Loop:
    """Restore a checkpoint (tensors and plain values only: loading it runs no code)."""
    path = config.checkpoint
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        mine = _fingerprint(config)
        differ = [
            f"{k} {ckpt['config'].get(k)!r} there, {v!r} now" for k, v in mine.items() if ckpt["config"].get(k) != v
        ]
        if differ:
            raise UserError(
                f"checkpoint {path} was written by another training run ({'; '.join(differ[:3])}): "
                "resume with its settings, or delete it to start afresh"
            )
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"])
    except (RuntimeError, KeyError, TypeError, EOFError) as e:
        raise UserError(
            f"checkpoint {path} cannot be resumed ({str(e).splitlines()[0][:120]}): delete it to start afresh"
        ) from e
    return _Loop(step=int(ckpt["step"]), epoch=int(ckpt["epoch"]))
