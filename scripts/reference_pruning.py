"""The benchmark's reference row: Torch-Pruning's own global magnitude pruning at the same FLOPs.

Torch-Pruning ranks every channel group of the network together by its L2 magnitude
(``GroupMagnitudeImportance(p=2)``, ``global_pruning=True``) and removes the lowest ``pruning_ratio`` share of all
channels. The ratio that meets a FLOPs limit is found by bisection; the classifier is left whole, as autoprune does.
:func:`evaluate_model` scores such a model (pruned by another tool) through an :class:`~autoprune.reward.Evaluator`'s
recalibration and held-out pass, so the reference row compares with the search strategies' rows.

Benchmark code only (``scripts/bench_search.py`` imports it); it is no part of the ``autoprune`` package.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch_pruning as tp

from autoprune.reward import Evaluator


def prune_global_magnitude(
    model: nn.Module,
    input_shape: tuple[int, ...],
    ratio: float,
    ignored: list[nn.Module] | None = None,
    round_to: int | None = None,
) -> nn.Module:
    """A copy of ``model`` with Torch-Pruning's global L2 magnitude pruning at channel ratio ``ratio``; ``round_to``
    keeps channel counts multiples of the device's block, as autoprune's policies are."""
    m = copy.deepcopy(model).eval()
    example = torch.randn(*input_shape)
    names = {id(mod): n for n, mod in model.named_modules()}
    copies = dict(m.named_modules())
    ignored_copy = [copies[names[id(x)]] for x in (ignored or [])]
    pruner = tp.pruner.BasePruner(
        m,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        global_pruning=True,
        ignored_layers=ignored_copy,
        round_to=round_to if round_to and round_to > 1 else None,
    )
    pruner.step()
    return m.eval()


def global_magnitude_at_flops(
    model: nn.Module,
    input_shape: tuple[int, ...],
    flops_limit: float,
    ignored: list[nn.Module] | None = None,
    iterations: int = 14,
    round_to: int | None = None,
) -> tuple[nn.Module, float, float]:
    """The largest-FLOPs global-magnitude pruning whose FLOPs meet ``flops_limit``: (model, ratio, flops)."""
    example = torch.randn(*input_shape)
    lo, hi = 0.0, 0.95  # ratio hi meets the limit (checked), lo does not
    best = prune_global_magnitude(model, input_shape, hi, ignored, round_to)
    best_flops = tp.utils.count_ops_and_params(best, example)[0]
    if best_flops > flops_limit:
        raise ValueError("global magnitude pruning cannot reach the FLOPs limit")
    for _ in range(iterations):
        mid = (lo + hi) / 2
        m = prune_global_magnitude(model, input_shape, mid, ignored, round_to)
        flops = tp.utils.count_ops_and_params(m, example)[0]
        if flops <= flops_limit:
            hi, best, best_flops = mid, m, flops
        else:
            lo = mid
    return best, hi, float(best_flops)


def evaluate_model(evaluator: Evaluator, model: nn.Module, recalibrate: bool = True) -> float:
    """Held-out accuracy of any model (e.g. pruned by another tool), through ``evaluator``'s recalibration."""
    model = copy.deepcopy(model)
    if evaluator.fast:
        model = model.to(memory_format=torch.channels_last)
    if recalibrate:
        evaluator.recalibrate(model)
    return evaluator.score(model)
