"""What every strategy shares: the one reward path (:class:`SearchContext`), the :class:`Strategy` interface, what a
search returns, and the journal that makes it resumable.

Every strategy proposes kept-channel vectors for one :class:`autoprune.problem.Problem` and spends evaluations
through the same reward path, so results at an equal number of evaluations compare.
"""

from __future__ import annotations

import json
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from autoprune.budget import format_cost
from autoprune.errors import UserError
from autoprune.pareto import pareto_front
from autoprune.problem import Problem
from autoprune.spec import RunSpec

ROLES = ("search", "worker", "read")
_ACCEPTS = {float: (float, int), tuple: (tuple, list), int: (int,), str: (str,), bool: (bool,)}
_KIND_NAMES = {float: "a number", int: "a whole number", tuple: "a list", str: "a string", bool: "true or false"}


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
            row.update(reward=r.reward, accuracy=r.accuracy, distill_loss=r.distill_loss, cached=r.cached)
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
    options a user passes are checked against ``defaults``. How this process takes part in a search that others
    may share: ``spec`` (the whole search, to describe it to them; None for a model or data given as objects),
    ``role`` (``search``: the whole search; ``worker``: trials only, for a parent or another machine; ``read``: no
    trial, the stored evaluations only) and ``trust_pickle`` (passed on to the workers it starts).
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
        spec: RunSpec | None = None,
        role: str = "search",
        trust_pickle: bool = False,
    ) -> None:
        if role not in ROLES:
            raise UserError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        self.options = {**self.defaults, **self.checked_options(options or {})}
        self.problem, self.seed, self.workdir, self.resume = problem, seed, workdir, resume
        self.spec, self.role, self.trust_pickle = spec, role, trust_pickle

    @classmethod
    def checked_options(cls, options: dict) -> dict:
        """``options`` checked against ``defaults``: every name known, every value of its default's type (an int
        where a float is expected, a list for a tuple; an option whose default is None takes any value)."""
        unknown = sorted(set(options) - set(cls.defaults))
        if unknown:
            raise UserError(
                f"strategy {cls.name} has no option {', '.join(unknown)}: use "
                f"{', '.join(sorted(cls.defaults)) or 'none'}"
            )
        for key, value in options.items():
            want = cls.defaults[key]
            if want is None:
                continue
            kinds = _ACCEPTS.get(type(want), (type(want),))
            if not isinstance(value, kinds) or (isinstance(value, bool) and not isinstance(want, bool)):
                kind = _KIND_NAMES.get(kinds[0], kinds[0].__name__)
                raise UserError(
                    f"option {key}={value!r} of strategy {cls.name} must be {kind}, like its default {want!r}"
                )
        return {k: tuple(v) if isinstance(cls.defaults[k], tuple) else v for k, v in options.items()}

    @abstractmethod
    def run(self, ctx: SearchContext) -> dict:
        """Search; returns strategy-specific extras for :attr:`SearchResult.extra`."""
