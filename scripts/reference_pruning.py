"""The benchmark's reference row: Torch-Pruning's own global magnitude pruning at the same FLOPs.

Torch-Pruning ranks every channel group of the network together by its L2 magnitude
(``GroupMagnitudeImportance(p=2)``, ``global_pruning=True``) and removes the lowest ``pruning_ratio`` share of all
channels. The ratio that meets a FLOPs limit is found by a scan (below); the classifier is left whole, as autoprune
does.
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
    step: float = 0.01,
    round_to: int | None = None,
) -> tuple[nn.Module, float, float]:
    """The largest-FLOPs global-magnitude pruning whose FLOPs meet ``flops_limit``: (model, ratio, flops).

    A scan of the ratio in ``step``s rather than a bisection: with ``round_to`` Torch-Pruning's FLOPs are not
    monotone in the ratio (fmnist-resnet20, round_to 8: ratio 0.5 -> 27.9 % of the FLOPs, 0.7 -> 40.2 %, 0.88 ->
    100 %, as groups whose rounded count would vanish are left whole), so a bisection can miss every ratio that
    meets the limit. Raises ValueError naming the fewest FLOPs reached when none does.
    """
    example = torch.randn(*input_shape)
    best, best_ratio, best_flops, fewest = None, 0.0, -1.0, float("inf")
    for ratio in torch.arange(step, 0.96, step).tolist():
        m = prune_global_magnitude(model, input_shape, ratio, ignored, round_to)
        flops = float(tp.utils.count_ops_and_params(m, example)[0])
        fewest = min(fewest, flops)
        if best_flops < flops <= flops_limit:
            best, best_ratio, best_flops = m, ratio, flops
    if best is None:
        raise ValueError(
            f"global magnitude pruning (round_to {round_to}) cannot reach {flops_limit:.4g} FLOPs: "
            f"its fewest are {fewest:.4g}"
        )
    return best, best_ratio, best_flops


def evaluate_model(evaluator: Evaluator, model: nn.Module, recalibrate: bool = True) -> float:
    """Held-out accuracy of any model (e.g. pruned by another tool), through ``evaluator``'s recalibration."""
    model = copy.deepcopy(model)
    if evaluator.fast:
        model = model.to(memory_format=torch.channels_last)
    if recalibrate:
        evaluator.recalibrate(model)
    return evaluator.score(model)[0]
