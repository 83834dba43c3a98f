"""Rewards: what one evaluation of a policy costs and returns.

Every strategy scores a policy (kept channels per group) through the same path, so their results compare:

    apply (real channel removal, ms) -> [short fine-tune] -> recalibrate BatchNorm -> fold BN into conv
    -> accuracy on the held-out split (carved from the training data; the test split is never looked at)

Rewards (``REWARDS``):

* ``acc``: held-out accuracy after BN recalibration (AMC's and EagleEye's evaluation of a candidate);
* ``acc-ft``: held-out accuracy after a short fine-tune (a few hundred SGD steps, optionally distilled from the
  unpruned model) — closer to what the final fine-tune reaches, at a hundredfold cost per evaluation;
* ``r-flops``: AMC's ``R_FLOPs = -error * log(FLOPs)``, which rewards saving FLOPs beyond the budget;
* ``kd``: minus the distillation loss on the held-out split after BN recalibration — the objective the distilled
  fine-tune starts from (``training.distillation_loss`` with the fine-tune's weight and temperature, the unpruned
  model's logits as the targets). At a deep cut the recalibrated top-1 is near chance for every candidate and ranks
  them by little; the loss still separates them by how far each is from the unpruned model's outputs.

Every evaluation records both the accuracy and the distillation loss (``distill_loss`` in the history), whichever
reward ranks the policies, so a search's history shows how the two orderings differ.

Speed matters: a 300-episode search evaluates 300 policies. The :class:`Evaluator` therefore keeps the held-out
images and the recalibration batches as ready, normalised, ``channels_last`` tensors, folds every BatchNorm into
its conv *after* recalibration (``torch.fx.experimental.optimization.fuse``), and runs the held-out pass under
``torch.inference_mode``. It caches results by kept tuple and records seconds per phase.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from autoprune.compute import CPU, Compute, placed
from autoprune.data import DataBundle, Split
from autoprune.errors import UserError
from autoprune.evaluate import recalibrate_bn
from autoprune.prune import ChannelPruner
from autoprune.training import TrainConfig, distillation_loss, train

REWARDS = ("acc", "acc-ft", "r-flops", "kd")
DEFAULT_REWARD = "acc"


@dataclass
class Evaluation:
    """One evaluated policy: held-out accuracy, distillation loss and where the seconds went."""

    accuracy: float
    phases: dict[str, float] = field(default_factory=dict)  # apply, finetune, recalibrate, evaluate (seconds)
    cached: bool = False
    distill_loss: float | None = None  # None: replayed from a journal written before it was recorded
    correct: np.ndarray | None = None  # per held-out image, right or not (None: replayed, or outputs not finite)

    @property
    def seconds(self) -> float:
        return float(sum(self.phases.values()))


def _materialise(
    split: Split, batch_size: int, limit: int | None = None, *, shuffle: bool = False, seed: int = 0, compute: Compute
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batches once, on ``compute``'s device, ``channels_last``: every evaluation reuses them."""
    out = []
    for i, (x, y) in enumerate(split.batches(batch_size, shuffle=shuffle, seed=seed)):
        if limit is not None and i >= limit:
            break
        out.append((compute.batch(x).contiguous(memory_format=torch.channels_last), y.to(compute.device)))
    return out


class Evaluator:
    """Scores policies of one model: apply kept -> recalibrate BN -> accuracy on the held-out split.

    ``held_out`` images (default 5,000, or the split's size) are scored; fewer makes an evaluation cheaper and the
    reward noisier (a binomial standard error of ~0.45 points at 90% accuracy on 5,000 images, ~0.7 on 2,000).
    ``calib_batches`` x ``calib_batch_size`` training images re-estimate BN statistics — always the same images,
    so two evaluations of one policy agree exactly. ``fast`` folds BN into the convs and uses ``channels_last``;
    it changes no prediction beyond float rounding. The distilled short fine-tunes (``finetune_steps``, the
    promotion rung) replay the unpruned model's logits up to ``teacher_replay_bytes`` (0: computed afresh each time).
    """

    def __init__(
        self,
        pruner: ChannelPruner,
        data: DataBundle,
        *,
        held_out: int | None = 5000,
        calib_batches: int = 10,
        calib_batch_size: int = 128,
        eval_batch_size: int = 1000,
        fast: bool = True,
        seed: int = 0,
        finetune_steps: int = 0,
        finetune_lr: float = 0.01,
        kd: bool = False,
        finetune_augment: bool = False,
        compute: Compute = CPU,
        teacher_replay_bytes: int = 256 * 2**20,
    ) -> None:
        if held_out is not None and held_out < 1:
            raise UserError(f"held-out size {held_out} must be at least 1")
        self.pruner, self.data, self.fast, self.seed = pruner, data, fast, seed
        self.finetune_steps, self.finetune_lr, self.kd, self.compute = finetune_steps, finetune_lr, kd, compute
        self.finetune_augment = finetune_augment
        split = data.held_out if held_out is None else data.held_out.subset(min(held_out, len(data.held_out)))
        self.held_out_size = len(split)
        self._eval_batches = _materialise(split, eval_batch_size, compute=compute)
        calib = _materialise(data.train, calib_batch_size, calib_batches, shuffle=True, seed=seed, compute=compute)
        self._calib = [x for x, _ in calib]
        self._cache: dict[tuple[tuple[int, ...], int], Evaluation] = {}
        self._teacher_logits: list[torch.Tensor] | None = None
        self._finetune_teacher = _ReplayedTeacher(pruner.model, teacher_replay_bytes) if kd else None
        self.calls = 0

    # -- the three phases -------------------------------------------------------------------------------------
    @torch.no_grad()
    def recalibrate(self, model: nn.Module) -> nn.Module:
        """Re-estimate BN running statistics as a cumulative average over the fixed calibration batches."""
        return recalibrate_bn(model, batches=self._calib, compute=self.compute)

    def teacher_logits(self) -> list[torch.Tensor]:
        """The unpruned model's held-out logits, once: the distillation loss's targets."""
        if self._teacher_logits is None:
            was_training = self.pruner.model.training
            # the unpruned model lives on the CPU (the pruner's graph and surgery); the held-out batches on the device
            with placed(self.pruner.model, self.compute) as teacher:
                teacher.eval()
                with torch.inference_mode(), self.compute.autocast():
                    self._teacher_logits = [teacher(x).float() for x, _ in self._eval_batches]
                teacher.train(was_training)
        return self._teacher_logits

    def score(self, model: nn.Module) -> tuple[float, float]:
        """Held-out accuracy and distillation loss (mean per image, as the fine-tune weighs it) of an already
        recalibrated model (BN folded first when ``fast``); both NaN when its outputs are not finite."""
        acc, loss, _ = self._score(model)
        return acc, loss

    def _score(self, model: nn.Module) -> tuple[float, float, np.ndarray | None]:
        """:meth:`score` and which held-out images the model gets right (None when its outputs are not finite)."""
        model.eval()
        if self.fast:
            model = _fold_bn(model)
        cfg = TrainConfig()
        right: list[torch.Tensor] = []
        loss = 0.0
        with torch.inference_mode(), self.compute.autocast():
            for (x, y), t in zip(self._eval_batches, self.teacher_logits(), strict=True):
                logits = model(x).float()
                if not torch.isfinite(logits).all():  # argmax would call it class 0: the accuracy is undefined
                    return float("nan"), float("nan"), None
                right.append((logits.argmax(1) == y).cpu())
                loss += float(distillation_loss(logits, t, y, cfg.kd_alpha, cfg.kd_temperature)) * len(y)
        correct = torch.cat(right).numpy() if right else np.zeros(0, dtype=bool)
        total = max(len(correct), 1)
        return int(correct.sum()) / total, loss / total, correct

    def finetune(self, model: nn.Module, steps: int) -> nn.Module:
        """A short SGD fine-tune (cosine-decayed small lr; augmented if ``finetune_augment``, with crops and flips
        drawn from the evaluator's seed, so every policy sees the same batches), distilled if ``kd``."""
        teacher = self._finetune_teacher.rewound() if self._finetune_teacher is not None else None
        cfg = TrainConfig(
            epochs=1.0,
            lr=self.finetune_lr,
            max_steps=steps,
            schedule="cosine",
            augment=self.finetune_augment,
            seed=self.seed,
        )
        model = model.to(memory_format=torch.contiguous_format)
        with torch.enable_grad():
            train(model, self.data.train, cfg, teacher=teacher, compute=self.compute)
        return model

    # -- the whole evaluation ---------------------------------------------------------------------------------
    def evaluate(
        self, kept: Sequence[int] | np.ndarray, finetune_steps: int | None = None, *, need_loss: bool = False
    ) -> Evaluation:
        """Accuracy and distillation loss of the policy ``kept`` (cached by kept tuple and fine-tune length; a
        replayed entry without the loss is evaluated again when ``need_loss``)."""
        steps = self.finetune_steps if finetune_steps is None else int(finetune_steps)
        key = (tuple(int(k) for k in kept), steps)
        hit = self._cache.get(key)
        if hit is not None and not (need_loss and hit.distill_loss is None):
            return Evaluation(
                hit.accuracy, dict(hit.phases), cached=True, distill_loss=hit.distill_loss, correct=hit.correct
            )
        self.calls += 1
        phases: dict[str, float] = {}
        t = time.perf_counter()
        model = self.pruner.apply(list(key[0]))
        phases["apply"] = time.perf_counter() - t
        if steps > 0:
            t = time.perf_counter()
            model = self.finetune(model, steps)
            phases["finetune"] = time.perf_counter() - t
        t = time.perf_counter()
        model = self.compute.place(model)
        if self.fast:
            model = model.to(memory_format=torch.channels_last)
        if steps == 0:  # after a fine-tune, the BN statistics it accumulated are already the pruned model's
            self.recalibrate(model)
        phases["recalibrate"] = time.perf_counter() - t
        t = time.perf_counter()
        acc, loss, correct = self._score(model)
        phases["evaluate"] = time.perf_counter() - t
        ev = Evaluation(acc, phases, distill_loss=loss, correct=correct)
        self._cache[key] = ev
        return ev

    def remember(
        self,
        kept: Sequence[int],
        finetune_steps: int,
        accuracy: float,
        phases: dict | None = None,
        distill_loss: float | None = None,
    ) -> None:
        """Seed the cache with an evaluation made earlier (a resumed search replays it for free)."""
        key = (tuple(int(k) for k in kept), int(finetune_steps))
        self._cache[key] = Evaluation(accuracy, dict(phases or {}), distill_loss=distill_loss)


class _ReplayedTeacher(nn.Module):
    """The unpruned model as the short fine-tunes' teacher, its logits kept for the next fine-tune.

    Every short fine-tune of one :class:`Evaluator` draws the same batches in the same order (one seed; the same
    crops and flips when augmented), so step *i*'s teacher logits are the same for every policy; on a deep cut the
    teacher's forward pass costs as much as the student's forward and backward together (the compact model at
    flops=20%: 0.23 s of 0.6 s a step), and the promotion rung and the ``acc-ft`` reward pay it once instead of once
    per policy. A step whose batch differs from the remembered one (checked by shape and checksum) is computed
    afresh; logits are kept up to ``max_bytes``.
    """

    def __init__(self, teacher: nn.Module, max_bytes: int = 256 * 2**20) -> None:
        super().__init__()
        self.teacher, self.max_bytes = teacher, max_bytes
        self._steps: list[tuple[tuple[int, ...], float, torch.Tensor]] = []
        self._bytes = 0
        self._position = 0
        self.computed = 0  # forward passes of the teacher itself, for the tests

    def rewound(self) -> _ReplayedTeacher:
        """Ready for a fine-tune that starts at step 0."""
        self._position = 0
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i, self._position = self._position, self._position + 1
        key = (tuple(x.shape), float(x.detach().double().sum()))
        if i < len(self._steps) and self._steps[i][:2] == key:
            return self._steps[i][2]
        out = self.teacher(x)
        self.computed += 1
        size = out.numel() * out.element_size()
        if i == len(self._steps) and self._bytes + size <= self.max_bytes:
            self._steps.append((*key, out.detach()))
            self._bytes += size
        return out


def _fold_bn(model: nn.Module) -> nn.Module:
    """Conv+BN folding through torch.fx; a model fx cannot trace is scored unfused."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(model, inplace=True)
    except Exception:  # noqa: BLE001 - an untraceable user model: correct, only slower
        return model


@dataclass
class RewardResult:
    reward: float
    accuracy: float
    phases: dict[str, float]
    cached: bool
    distill_loss: float | None = None


class Reward:
    """``reward(kept) -> RewardResult``: one named reward over an :class:`Evaluator` (cached there)."""

    def __init__(self, name: str, evaluator: Evaluator, cost=None, *, finetune_steps: int = 200) -> None:
        if name not in REWARDS:
            raise UserError(f"unknown reward {name!r}: use one of {', '.join(REWARDS)}")
        if name == "r-flops" and cost is None:
            raise ValueError("the r-flops reward needs the cost model")
        self.name, self.evaluator, self.cost = name, evaluator, cost
        self.finetune_steps = finetune_steps if name == "acc-ft" else 0

    def __call__(self, kept: Sequence[int] | np.ndarray, finetune_steps: int | None = None) -> RewardResult:
        steps = self.finetune_steps if finetune_steps is None else finetune_steps
        ev = self.evaluator.evaluate(kept, steps, need_loss=self.name == "kd")
        if self.name == "r-flops":  # AMC, eq. for R_FLOPs: -error * log(FLOPs)
            reward = -(1.0 - ev.accuracy) * math.log(max(self.cost(kept)["flops"], 1.0))
        elif self.name == "kd":
            reward = -float(ev.distill_loss)  # NaN stays NaN: never the best
        else:
            reward = ev.accuracy
        return RewardResult(reward, ev.accuracy, ev.phases, ev.cached, ev.distill_loss)
