"""Baseline strategies: uniform (one keep ratio for every group), global magnitude pruning (one importance threshold
for the network), random feasible policies, and classic per-layer sensitivity analysis."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np

from autoprune.errors import UserError
from autoprune.problem import Problem
from autoprune.search.base import SearchContext, Strategy


def uniform_kept(
    problem: Problem,
    iterations: int = 40,
    fill: bool = False,
    fits: Callable[[np.ndarray], bool] | None = None,
) -> tuple[np.ndarray, float]:
    """The largest uniform keep ratio whose policy meets the budget (or ``fits``, a stricter test), by bisection
    (rounding makes the cost a non-decreasing step function of the ratio, so bisection finds the last feasible
    step; the floor when none is). With ``fill``, the budget its rounding leaves is spent on the groups then kept at
    the lowest ratios (:meth:`Problem.fill`, which knows the budget only): as near to one ratio as whole steps allow."""
    if fill and fits is not None:
        raise ValueError("fill grows a policy into the problem's budget, not into a stricter test")
    fits = fits or problem.feasible
    full = problem.ratios_to_kept(np.ones(len(problem.channels)))
    if fits(full):
        return full, 1.0
    lo, hi = 0.0, 1.0  # ratio lo is feasible (every group at its floor), hi is not
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if fits(problem.ratios_to_kept(np.full(len(problem.channels), mid))):
            lo = mid
        else:
            hi = mid
    kept = problem.ratios_to_kept(np.full(len(problem.channels), lo))
    if fill:
        channels = problem.channels
        kept = problem.fill(kept, lambda g, _now, after: -after / int(channels[g]))
    return kept, lo


def magnitude_kept(problem: Problem, scores: Sequence[np.ndarray], fill: bool = False) -> np.ndarray:
    """The allocation of global magnitude pruning (Torch-Pruning's ``global_pruning`` with its default ``mean``
    normaliser): each group's unit importances divided by their mean, one threshold for the whole network, and each
    group keeps its units at or above it (rounded down to the group's step, never below its floor). The threshold is
    the lowest whose policy meets the budget, found by bisection over the normalised scores: a higher threshold
    never keeps more, so feasibility only switches on once. With ``fill``, the budget that rounding down leaves is
    spent a step at a time on the group whose next units score highest (:meth:`Problem.fill`): the threshold's
    order, in whole steps."""
    normed = [np.asarray(s, dtype=np.float64) / max(float(np.mean(s)), 1e-12) for s in scores]
    channels, floor, steps = problem.channels, problem.floor, problem.steps

    def kept_at(threshold: float) -> np.ndarray:
        kept = []
        for s, c, f, step in zip(normed, channels, floor, steps, strict=True):
            n = int((s >= threshold).sum())
            kept.append(int(c) if n >= c else max(int(f), n // int(step) * int(step)))
        return np.array(kept, dtype=np.int64)

    thresholds = np.unique(np.concatenate(normed))
    if problem.feasible(kept_at(float(thresholds[0]))):
        return kept_at(float(thresholds[0]))
    lo, hi = 0, len(thresholds)  # thresholds[lo] is infeasible; past the last (every group at its floor) is not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if problem.feasible(kept_at(float(thresholds[mid]))):
            hi = mid
        else:
            lo = mid
    kept = kept_at(float(thresholds[hi]) if hi < len(thresholds) else np.inf)
    if fill:
        ranked = [np.sort(s)[::-1] for s in normed]
        kept = problem.fill(kept, lambda g, now, after: float(ranked[g][now:after].mean()))
    return kept


class UniformStrategy(Strategy):
    """One evaluation: the same keep ratio everywhere (the usual hand-designed baseline)."""

    name = "uniform"
    needs_reward = False
    defaults: ClassVar[dict] = {"fill": False}  # spend the budget whole steps leave (uniform_kept's fill)

    def run(self, ctx: SearchContext) -> dict:
        kept, ratio = uniform_kept(self.problem, fill=self.options["fill"])
        ctx.evaluate(kept, ratio=ratio)
        return {"ratio": ratio}


class MagnitudeStrategy(Strategy):
    """One evaluation: global magnitude pruning's allocation (:func:`magnitude_kept`), the usual automatic baseline
    (Torch-Pruning's ``global_pruning``) that a layer-wise search is compared with."""

    name = "magnitude"
    needs_reward = False
    defaults: ClassVar[dict] = {"fill": False}  # spend the budget whole steps leave (magnitude_kept's fill)

    def run(self, ctx: SearchContext) -> dict:
        if self.problem.importance is None:
            raise UserError("strategy magnitude needs the channels' importance scores: build the problem with them")
        ctx.evaluate(magnitude_kept(self.problem, self.problem.importance, fill=self.options["fill"]))
        return {}


class RandomStrategy(Strategy):
    """Uniformly random keep ratios, made feasible by the environment's sequential clip; the best is kept."""

    name = "random"

    def run(self, ctx: SearchContext) -> dict:
        rng = np.random.default_rng(self.seed)
        n = len(self.problem.channels)
        while ctx.remaining:
            ctx.evaluate(self.problem.project(rng.uniform(self.problem.min_keep, 1.0, n)))
        return {}


class SensitivityStrategy(Strategy):
    """Prune each group alone at falling keep ratios, measure the accuracy drop, then allot ratios to meet the
    budget: every group gets the smallest ratio whose drop stays within one global tolerance, and the tolerance
    is bisected to the smallest one that meets the budget (Li et al., 2017, "Pruning filters for efficient
    ConvNets", section 3.2; the classic per-layer sensitivity analysis)."""

    name = "sensitivity"
    defaults: ClassVar[dict] = {"ratios": None}  # keep ratios probed per group; None: as many as the budget allows

    def probe_ratios(self, episodes: int) -> np.ndarray:
        if self.options["ratios"] is not None:
            return np.sort(np.asarray(self.options["ratios"], dtype=np.float64))[::-1]
        n = len(self.problem.channels)
        points = int(np.clip((episodes - 2) // n, 1, 8))
        return np.linspace(1.0, self.problem.min_keep, points + 1)[1:]

    def run(self, ctx: SearchContext) -> dict:
        p = self.problem
        full = p.channels.copy()
        base = ctx.evaluate(full, probe="unpruned")
        ratios = self.probe_ratios(ctx.remaining)
        drop = np.zeros((len(full), len(ratios)))
        for i in range(len(full)):
            for j, r in enumerate(ratios):
                kept = full.copy()
                kept[i] = p.ratios_to_kept(np.where(np.arange(len(full)) == i, r, 1.0))[i]
                if ctx.remaining <= 1:
                    drop[i, j:] = np.inf
                    break
                drop[i, j] = base - ctx.evaluate(kept, probe=f"{p.graph.groups[i].name}@{r:.2f}")
        # a drop curve that is monotone in the ratio (pruning more never looks better than pruning less)
        envelope = np.maximum.accumulate(drop, axis=1)

        def policy(tol: float) -> np.ndarray:
            rs = np.ones(len(full))
            for i in range(len(full)):
                ok = np.nonzero(envelope[i] <= tol)[0]
                if len(ok):
                    rs[i] = ratios[ok[-1]]
            return p.ratios_to_kept(rs)

        tolerances = np.unique(np.concatenate([[0.0], envelope[np.isfinite(envelope)].ravel()]))
        chosen = None
        for tol in tolerances:  # the smallest tolerance whose policy meets the budget
            kept = policy(tol)
            if p.feasible(kept):
                chosen = (tol, kept)
                break
        if chosen is None:  # even the largest measured tolerance is over budget: the clip makes it feasible
            tol, kept = float(tolerances[-1]), p.project(policy(float(tolerances[-1])) / p.channels)
        else:
            tol, kept = chosen
        ctx.evaluate(kept, probe="allotted")
        return {"probe_ratios": ratios.tolist(), "tolerance": float(tol), "base_reward": base}
