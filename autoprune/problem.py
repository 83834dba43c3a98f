"""The search problem every strategy solves.

A :class:`Problem` bundles the analysed model, the cost model, the budget's absolute limits and the per-group floor
(``min_keep``, ``round_to``), and keeps a policy within the budget: AMC's feasibility clip, generalised to every cost
the budget names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from autoprune.budget import Budget, excess, format_cost
from autoprune.cost.model import CostModel
from autoprune.errors import UserError
from autoprune.layers import LayerGraph, round_channels


def group_steps(graph: LayerGraph, round_to: int) -> np.ndarray:
    """Per group, ``round_to`` channels in the group's units (a head is already whole blocks)."""
    return np.array([g.step(round_to) for g in graph.groups], dtype=np.int64)


def floor_counts(graph: LayerGraph, min_keep: float, round_to: int) -> np.ndarray:
    """Per group, the fewest units a policy may keep: ``min_keep`` of its units, rounded to its step, at least one
    step (and never more than it has)."""
    steps = group_steps(graph, round_to)
    floor = [round_channels(g.channels, min_keep, int(s), 1) for g, s in zip(graph.groups, steps, strict=True)]
    return np.minimum(np.array(floor, dtype=np.int64), graph.channels)


def coarsest_round_to(graph: LayerGraph, cost: CostModel, budget: Budget, min_keep: float, block: int) -> int:
    """The largest divisor of the channel ``block`` whose cheapest policy meets ``budget`` (1 when none does).

    Whole blocks are the fast widths, but one block is the narrowest a layer can then be: ResNet-20's 16-channel
    stage cannot go below half its width at block 8, which puts its floor at 12 % of the FLOPs. A budget under that
    floor is still met, by finer widths, rather than refused or silently raised.
    """
    limits = budget.limits(cost.baseline)
    for r in (d for d in range(max(block, 1), 0, -1) if block % d == 0):
        if not excess(cost(floor_counts(graph, min_keep, r)), limits):
            return r
    return 1


@dataclass
class Problem:
    graph: LayerGraph
    cost: CostModel
    budget: Budget
    min_keep: float = 0.1
    round_to: int = 1
    importance: list[np.ndarray] | None = None  # per group, its units' importance scores (the pruner's), if known
    limits: dict[str, float] = field(init=False)
    floor: np.ndarray = field(init=False)
    steps: np.ndarray = field(init=False)  # round_to in each group's units (a head is already whole blocks)

    def __post_init__(self) -> None:
        missing = [m for m in self.budget.metrics if m not in self.cost.metrics]
        if missing:
            raise UserError(
                f"budget names {', '.join(missing)} but no latency table was given: pass --table "
                "(build one with `autoprune latency-table build`)"
            )
        inexact = [m for m in self.budget.metrics if m in self.graph.inexact]
        if inexact:
            raise UserError(
                f"a {inexact[0]} budget cannot be priced exactly for this model (a custom layer's {inexact[0]} are not "
                "what Torch-Pruning's counter counts once pruned): budget flops or latency instead"
            )
        if not 0 < self.min_keep <= 1:
            raise UserError(f"--min-keep {self.min_keep} must be in (0, 1]")
        if self.round_to < 1:
            raise UserError(f"--round-to {self.round_to} must be at least 1")
        self.limits = self.budget.limits(self.cost.baseline)
        self.steps = group_steps(self.graph, self.round_to)
        self.floor = floor_counts(self.graph, self.min_keep, self.round_to)
        cheapest = self.cost(self.floor)
        for metric, limit in self.limits.items():
            if cheapest[metric] > limit:
                share = cheapest[metric] / self.cost.baseline[metric]
                lower = "--min-keep or --round-to" if self.round_to > 1 else "--min-keep"
                raise UserError(
                    f"budget {metric}={format_cost(metric, limit)} is unreachable: the smallest reachable with "
                    f"--min-keep {self.min_keep} and --round-to {self.round_to} is "
                    f"{format_cost(metric, cheapest[metric])} ({share:.1%} of the unpruned model); raise the budget "
                    f"or lower {lower}"
                )

    @property
    def channels(self) -> np.ndarray:
        return self.graph.channels

    def excess(self, kept: Sequence[int] | np.ndarray) -> dict[str, float]:
        """``{metric: cost / limit}`` for each limit ``kept`` breaks (:func:`autoprune.budget.excess`)."""
        return excess(self.cost(kept), self.limits)

    def feasible(self, kept: Sequence[int] | np.ndarray) -> bool:
        return not self.excess(kept)

    def ratios_to_kept(self, ratios: Sequence[float] | np.ndarray) -> np.ndarray:
        return np.array(
            [
                max(int(f), round_channels(int(c), float(r), int(s), int(f)))
                for c, r, f, s in zip(self.channels, ratios, self.floor, self.steps, strict=True)
            ],
            dtype=np.int64,
        )

    def cost_shares(self, kept: Sequence[int] | np.ndarray) -> dict[str, float]:
        c = self.cost(kept)
        return {m: c[m] / self.cost.baseline[m] for m in c}

    # -- AMC's feasibility clip, generalised to every cost the budget names --------------------------------------
    @property
    def candidates(self) -> list[np.ndarray]:
        """Per group, every kept count a policy may choose (multiples of its step from the floor, and all)."""
        if not hasattr(self, "_candidates"):
            cands = []
            for c, f, s in zip(self.channels, self.floor, self.steps, strict=True):
                vals = {int(f), int(c)} | {k for k in range(int(f), int(c) + 1) if k % s == 0}
                cands.append(np.array(sorted(vals), dtype=np.int64))
            self._candidates = cands
        return self._candidates

    def max_feasible(self, i: int, kept: Sequence[int] | np.ndarray) -> int:
        """The most channels group ``i`` may keep so that the budget stays reachable.

        Earlier groups keep ``kept[:i]``, every later group is put at its floor (the most any later decision can
        save). Costs are not separable per group (a conv's FLOPs are bilinear in its input group's and its output
        group's kept counts) but they are non-decreasing in every group's count, so the largest feasible count is
        found by bisection over the group's candidates with the real cost model.
        """
        trial = np.array(kept, dtype=np.int64).copy()
        trial[i + 1 :] = self.floor[i + 1 :]
        cands = self.candidates[i]

        def ok(k: int) -> bool:
            trial[i] = k
            return self.feasible(trial)

        if ok(int(cands[-1])):
            return int(cands[-1])
        if not ok(int(cands[0])):
            return int(cands[0])  # only reachable when earlier groups already broke the budget: keep the floor
        return int(cands[last_true(len(cands), lambda j: ok(int(cands[j])))])

    def clip_step(self, i: int, kept: Sequence[int] | np.ndarray, ratio: float) -> int:
        """Group ``i``'s kept count for keep ratio ``ratio``, rounded and clipped to keep the budget reachable."""
        c, f = int(self.channels[i]), int(self.floor[i])
        r = float(np.clip(ratio, self.min_keep, 1.0))
        want = max(f, round_channels(c, r, int(self.steps[i]), f))
        return min(want, self.max_feasible(i, kept))

    def project(self, ratios: Sequence[float] | np.ndarray) -> np.ndarray:
        """Keep ratios -> a feasible policy, by the environment's sequential clip in forward order."""
        ratios = np.asarray(ratios, dtype=np.float64)
        if len(ratios) != len(self.channels):
            raise ValueError(f"{len(ratios)} ratios for {len(self.channels)} groups")
        kept = self.channels.copy()
        for i, r in enumerate(ratios):
            kept[i] = self.clip_step(i, kept, r)
        return kept

    def next_candidate(self, i: int, k: int) -> int | None:
        """Group ``i``'s next candidate count above ``k``; None when ``k`` is its last."""
        above = self.candidates[i][self.candidates[i] > k]
        return int(above[0]) if len(above) else None

    def fill(self, kept: Sequence[int] | np.ndarray, priority: Callable[[int, int, int], float]) -> np.ndarray:
        """``kept`` grown into the budget it leaves unspent, one candidate step at a time.

        A policy in whole blocks stops short of its budget: one ratio (or one importance threshold) for every group
        rounds each group down to its step, and at a deep cut the steps are coarse (ResNet-20's uniform prune in
        blocks of 4 spends 7.6 % of a 10 % FLOPs budget). Greedily, the group with the highest
        ``priority(group, kept now, kept after the step)`` among those whose next candidate still meets the budget
        takes that step, until no group's does. Costs only grow with kept channels, so a group whose next step
        breaks the budget once never fits later, and is dropped. ``kept`` must be feasible."""
        kept = np.array(kept, dtype=np.int64)
        nexts = {i: n for i, k in enumerate(kept) if (n := self.next_candidate(i, int(k))) is not None}
        while nexts:
            for i in sorted(nexts, key=lambda g: -priority(g, int(kept[g]), nexts[g])):
                trial = kept.copy()
                trial[i] = nexts[i]
                if self.feasible(trial):
                    kept = trial
                    step = self.next_candidate(i, int(kept[i]))
                    if step is None:
                        del nexts[i]
                    else:
                        nexts[i] = step
                    break
                del nexts[i]
        return kept


def last_true(n: int, ok: Callable[[int], bool]) -> int:
    """The largest ``j`` in ``[0, n)`` with ``ok(j)``, for a predicate true up to some index then false (costs only
    grow with kept channels), given ``ok(0)``: bisection, ``O(log n)`` cost evaluations."""
    lo, hi = 0, n  # ok(lo) holds; hi is past the last candidate that could
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo
