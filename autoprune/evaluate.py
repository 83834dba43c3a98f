"""Accuracy on a split, and BatchNorm recalibration.

Pruning changes the statistics every BatchNorm layer sees, so a pruned model is scored after re-estimating its
running mean and variance on a few training batches (the "BN recalibration" of AMC's and EagleEye's evaluations).
It costs forward passes only, and without it a good policy can look worse than a bad one.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice

import torch
import torch.nn as nn

from autoprune.compute import CPU, Compute, placed
from autoprune.data import Split


@torch.no_grad()
def accuracy(model: nn.Module, split: Split, batch_size: int = 500, *, compute: Compute = CPU) -> float:
    """Top-1 accuracy of ``model`` on ``split``, in [0, 1], computed on ``compute`` (the model ends on the CPU)."""
    correct = total = 0
    with placed(model, compute) as net, compute.autocast():
        net.eval()
        for x, y in split.batches(batch_size):
            correct += (net(compute.batch(x)).argmax(1) == y.to(compute.device)).sum().item()
            total += len(y)
    return correct / max(total, 1)


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    split: Split | None = None,
    num_batches: int = 10,
    batch_size: int = 128,
    seed: int = 0,
    *,
    batches: Iterable[torch.Tensor] | None = None,
    compute: Compute = CPU,
) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics as a cumulative average over training batches: the given
    ``batches`` of images, or ``num_batches`` shuffled batches of ``split`` (on ``compute``; the statistics stay in
    float32 under autocast)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    if batches is None:
        if split is None:
            raise ValueError("recalibrate_bn needs a split or batches")
        batches = (x for x, _ in islice(split.batches(batch_size, shuffle=True, seed=seed), num_batches))
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    with placed(model, compute) as net, compute.autocast():
        net.train()
        for x in batches:
            net(compute.batch(x))
    for m, momentum in saved:
        m.momentum = momentum
    return model.eval()
