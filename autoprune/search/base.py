"""The search problem every strategy solves, and what a search returns.

A :class:`Problem` bundles the analysed model, the cost model, the budget's absolute limits and the per-group floor
(``min_keep``, ``round_to``). Every strategy proposes kept-channel vectors and spends evaluations through the same
reward path, so results at an equal number of evaluations compare.
"""

from __future__ import annotations

import json
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from autoprune.budget import Budget, format_cost
from autoprune.cost.model import CostModel
from autoprune.errors import UserError
from autoprune.layers import LayerGraph, round_channels


@dataclass
class Problem:
    graph: LayerGraph
    cost: CostModel
    budget: Budget
    min_keep: float = 0.1
    round_to: int = 1
    limits: dict[str, float] = field(init=False)
    floor: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        missing = [m for m in self.budget.metrics if m not in self.cost.metrics]
        if missing:
            raise UserError(
                f"budget names {', '.join(missing)} but no latency table was given: pass --table "
                "(build one with `autoprune latency-table build`)"
            )
        if not 0 < self.min_keep <= 1:
            raise UserError(f"--min-keep {self.min_keep} must be in (0, 1]")
        if self.round_to < 1:
            raise UserError(f"--round-to {self.round_to} must be at least 1")
        self.limits = self.budget.limits(self.cost.baseline)
        self.floor = np.array(
            [round_channels(g.channels, self.min_keep, self.round_to, 1) for g in self.graph.groups], dtype=np.int64
        )
        self.floor = np.minimum(self.floor, self.graph.channels)
        cheapest = self.cost(self.floor)
        for metric, limit in self.limits.items():
            if cheapest[metric] > limit:
                share = cheapest[metric] / self.cost.baseline[metric]
                raise UserError(
                    f"budget {metric}={format_cost(metric, limit)} is unreachable: the smallest reachable with "
                    f"--min-keep {self.min_keep} is {format_cost(metric, cheapest[metric])} ({share:.1%} of the "
                    f"unpruned model); raise the budget or lower --min-keep"
                )

    @property
    def channels(self) -> np.ndarray:
        return self.graph.channels

    def feasible(self, kept: Sequence[int] | np.ndarray) -> bool:
        c = self.cost(kept)
        return all(c[m] <= lim * (1 + 1e-9) for m, lim in self.limits.items())

    def ratios_to_kept(self, ratios: Sequence[float] | np.ndarray) -> np.ndarray:
        return np.array(
            [
                max(int(f), round_channels(int(c), float(r), self.round_to, int(f)))
                for c, r, f in zip(self.channels, ratios, self.floor, strict=True)
            ],
            dtype=np.int64,
        )

    def cost_shares(self, kept: Sequence[int] | np.ndarray) -> dict[str, float]:
        c = self.cost(kept)
        return {m: c[m] / self.cost.baseline[m] for m in c}

    # -- AMC's feasibility clip, generalised to every cost the budget names --------------------------------------
    @property
    def candidates(self) -> list[np.ndarray]:
        """Per group, every kept count a policy may choose (multiples of ``round_to`` from the floor, and all)."""
        if not hasattr(self, "_candidates"):
            cands = []
            for c, f in zip(self.channels, self.floor, strict=True):
                vals = {int(f), int(c)} | {k for k in range(int(f), int(c) + 1) if k % self.round_to == 0}
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
        want = max(f, round_channels(c, r, self.round_to, f))
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


@dataclass
class SearchResult:
    """Best policy found, every evaluation made, and the accuracy-vs-cost Pareto front."""

    strategy: str
    best_kept: np.ndarray
    best_reward: float | None
    history: pd.DataFrame  # one row per evaluation: kept, costs, reward, seconds
    evaluations: int
    seconds: float
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def pareto_front(self, cost: str = "flops", score: str = "reward") -> pd.DataFrame:
        return pareto_front(self.history, cost, score)


def pareto_front(history: pd.DataFrame, cost: str = "flops", score: str = "reward") -> pd.DataFrame:
    """Rows not dominated by any other (lower cost and higher score is better)."""
    if history.empty or score not in history or history[score].isna().all():
        return history.iloc[0:0]
    h = history.dropna(subset=[score]).sort_values([cost, score], ascending=[True, False])
    best, keep = -np.inf, []
    for idx, s in zip(h.index, h[score], strict=True):
        if s > best:
            keep.append(idx)
            best = s
    return h.loc[keep]


@dataclass
class SearchEvent:
    """What a progress display needs after each evaluation."""

    strategy: str
    evaluation: int  # 1-based count of evaluations so far
    episodes: int  # the evaluation budget
    reward: float | None
    best_reward: float | None
    best_costs: dict[str, float]  # the best policy's costs as shares of the unpruned model
    budget: dict[str, float]  # the budget's limits as shares of the unpruned model
    seconds: float  # wall time since the search started
    baseline: dict[str, float] = field(default_factory=dict)  # the unpruned model's costs (FLOPs, params, µs)
    relative: tuple[str, ...] = ()  # the metrics whose limit the user gave as a share ("flops=50%")

    def budget_text(self) -> str:
        """The best policy's costs against the limits, in the units the budget was given in:
        ``latency 9.80/10.00 ms`` for ``latency=10ms``, ``flops 49.8%/50.0%`` for ``flops=50%``."""
        parts = []
        for m, share in self.budget.items():
            best = self.best_costs.get(m, float("nan"))
            if m in self.relative or m not in self.baseline:
                parts.append(f"{m} {best:.1%}/{share:.1%}")
            elif m == "latency":
                parts.append(f"latency {best * self.baseline[m] / 1e3:.2f}/{share * self.baseline[m] / 1e3:.2f} ms")
            else:
                base = self.baseline[m]
                parts.append(f"{m} {format_cost(m, best * base)}/{format_cost(m, share * base)}")
        return " ".join(parts)


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


class Journal:
    """Every evaluation, appended to a JSON-lines file as it is made and synced to disk.

    It is what makes an interrupted search resumable whatever the strategy: a resumed run seeds the reward cache
    from it and replays the strategy with the same seed, so every earlier evaluation is reused and at most the one
    in flight when the process died is lost. A torn last line (a kill mid-write) is skipped on reading.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, row: dict) -> None:
        line = json.dumps({k: _plain(v) for k, v in row.items()}) + "\n"
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (tuple, np.ndarray)):
        return [_plain(x) for x in v]
    return v


def can_be_best(reward: float | None, feasible: bool) -> bool:
    """Whether an evaluated policy competes for the best: feasible, and its reward (if any) finite — a NaN reward
    (a pruned model with non-finite outputs) is never the best."""
    return feasible and (reward is None or math.isfinite(reward))


class SearchContext:
    """The one reward path every strategy spends its evaluations through.

    ``evaluate(kept)`` prices the policy, asks the reward function (which caches by kept tuple), records one
    history row (policy, costs, reward, accuracy, per-phase seconds, wall time), tracks the best *feasible* policy
    and calls the progress callback. ``reward=None`` (no evaluator) records costs only.
    """

    def __init__(
        self, problem: Problem, reward, strategy: str, episodes: int, callback=None, journal: Journal | None = None
    ) -> None:
        self.problem, self.reward, self.strategy, self.episodes, self.callback = (
            problem,
            reward,
            strategy,
            episodes,
            callback,
        )
        self.journal = journal
        self.rows: list[dict] = []
        self.best_kept: np.ndarray | None = None
        self.best_reward: float | None = None
        self.t0 = time.perf_counter()

    @property
    def evaluations(self) -> int:
        return len(self.rows)

    @property
    def remaining(self) -> int:
        return max(0, self.episodes - self.evaluations)

    def evaluate(self, kept: Sequence[int] | np.ndarray, *, finetune_steps: int | None = None, **extra) -> float | None:
        kept = np.asarray(kept, dtype=np.int64)
        costs = self.problem.cost(kept)
        feasible = self.problem.feasible(kept)
        row: dict = {"evaluation": self.evaluations, "kept": tuple(int(k) for k in kept)}
        row.update(costs)
        row.update({f"{m}_share": v / self.problem.cost.baseline[m] for m, v in costs.items()})
        row["feasible"] = feasible
        t = time.perf_counter()
        if self.reward is None:
            row.update(reward=None, accuracy=None, cached=False)
        else:
            r = self.reward(kept, finetune_steps) if finetune_steps is not None else self.reward(kept)
            row.update(reward=r.reward, accuracy=r.accuracy, cached=r.cached)
            row.update({f"{k}_s": v for k, v in r.phases.items()})
        row["eval_s"] = time.perf_counter() - t
        row.update(extra)
        row["wall_s"] = time.perf_counter() - self.t0
        self.rows.append(row)
        if self.journal is not None and not row.get("cached"):
            self.journal.append(row)
        self._consider(kept, row["reward"], feasible)
        if self.callback is not None:
            self.callback(self.event(row["reward"]))
        return row["reward"]

    def add_row(self, row: dict) -> None:
        """A row evaluated in an earlier run (a resumed study): recorded, not re-evaluated."""
        row = dict(row)
        row["evaluation"] = self.evaluations
        self.rows.append(row)
        self._consider(np.asarray(row["kept"], dtype=np.int64), row.get("reward"), bool(row.get("feasible", True)))

    def _consider(self, kept: np.ndarray, reward: float | None, feasible: bool) -> None:
        if not can_be_best(reward, feasible):
            return
        if self.best_kept is None or (reward is not None and (self.best_reward is None or reward > self.best_reward)):
            self.best_kept, self.best_reward = kept.copy(), reward

    def event(self, reward: float | None) -> SearchEvent:
        base = self.problem.cost.baseline
        best = self.problem.cost_shares(self.best_kept) if self.best_kept is not None else {}
        return SearchEvent(
            self.strategy,
            self.evaluations,
            self.episodes,
            reward,
            self.best_reward,
            best,
            {m: v / base[m] for m, v in self.problem.limits.items()},
            time.perf_counter() - self.t0,
            dict(base),
            tuple(c.metric for c in self.problem.budget.constraints if c.relative),
        )

    def history(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def result(self, seed: int, **extra) -> SearchResult:
        if self.best_kept is None:
            raise RuntimeError(f"{self.strategy} made no feasible evaluation")
        return SearchResult(
            self.strategy,
            self.best_kept,
            self.best_reward,
            self.history(),
            self.evaluations,
            time.perf_counter() - self.t0,
            seed,
            extra,
        )


class Strategy(ABC):
    """A search strategy: proposes policies and spends at most ``ctx.episodes`` evaluations through ``ctx``.

    Subclasses declare ``name``, ``needs_reward`` and ``defaults`` (every option with its paper default); the
    options a user passes are checked against ``defaults``.
    """

    name: ClassVar[str]
    needs_reward: ClassVar[bool] = True
    defaults: ClassVar[dict] = {}

    def __init__(
        self,
        problem: Problem,
        *,
        seed: int = 0,
        options: dict | None = None,
        workdir: Path | None = None,
        resume: bool = False,
    ) -> None:
        unknown = sorted(set(options or {}) - set(self.defaults))
        if unknown:
            raise UserError(
                f"strategy {self.name} has no option {', '.join(unknown)}: use "
                f"{', '.join(sorted(self.defaults)) or 'none'}"
            )
        self.problem, self.seed, self.workdir, self.resume = problem, seed, workdir, resume
        self.options = {**self.defaults, **(options or {})}

    @abstractmethod
    def run(self, ctx: SearchContext) -> dict:
        """Search; returns strategy-specific extras for :attr:`SearchResult.extra`."""
