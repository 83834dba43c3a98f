"""Search strategies over per-group keep ratios; all share one :class:`~autoprune.problem.Problem`.

``run_search(strategy, problem, evaluator, episodes=..., seed=...)`` is the one entry point: it builds the
reward, runs the strategy through a :class:`~autoprune.search.base.SearchContext` (so every strategy spends the
same kind of evaluation and is recorded the same way) and returns a :class:`~autoprune.search.base.SearchResult`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from autoprune.errors import UserError
from autoprune.problem import Problem
from autoprune.reward import DEFAULT_REWARD, REWARDS, Evaluator, Reward
from autoprune.search.base import Journal, SearchContext, SearchEvent, SearchResult, Strategy
from autoprune.search.baselines import (
    MagnitudeStrategy,
    RandomStrategy,
    SensitivityStrategy,
    UniformStrategy,
    uniform_kept,
)
from autoprune.search.ddpg import DDPGStrategy
from autoprune.search.netadapt import NetAdaptStrategy
from autoprune.search.optuna_search import SAMPLERS, OptunaStrategy
from autoprune.spec import RunSpec

# The registry: the one list of strategies. The CLI's help, which strategies need data, and each strategy's options
# (``Strategy.defaults``, with their types) come from here.
_CLASSES: dict[str, type[Strategy]] = {
    c.name: c
    for c in (
        DDPGStrategy,
        OptunaStrategy,
        NetAdaptStrategy,
        UniformStrategy,
        MagnitudeStrategy,
        RandomStrategy,
        SensitivityStrategy,
    )
}
STRATEGIES: tuple[str, ...] = tuple(_CLASSES)
REWARD_OPTIONS = ("reward", "finetune_steps")  # options of the reward path, which every strategy shares
JOURNAL = "evaluations.jsonl"  # in the run directory: every evaluation, for resuming


def strategy_class(name: str) -> type[Strategy]:
    if name not in _CLASSES:
        raise UserError(f"unknown strategy {name!r}: use one of {', '.join(STRATEGIES)}")
    return _CLASSES[name]


def needs_data(name: str) -> bool:
    """Whether a strategy scores policies on data (all but ``uniform``, which only prices them)."""
    return strategy_class(name).needs_reward


def seed_everything(seed: int) -> None:
    """Seed every generator a strategy may draw from (Python, NumPy, torch); samplers get ``seed`` directly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a search, carrying the evaluations it had seen (for the best-so-far policy): with shared
    Optuna workers these are the study's complete trials, which no journal of this process holds."""

    def __init__(self, rows: list[dict]) -> None:
        super().__init__()
        self.rows = rows


def run_search(
    strategy: str,
    problem: Problem,
    evaluator: Evaluator | None,
    *,
    episodes: int,
    seed: int,
    options: dict | None = None,
    callback: Callable[[SearchEvent], None] | None = None,
    workdir: Path | None = None,
    resume: bool = False,
    spec: RunSpec | None = None,
    role: str = "search",
    trust_pickle: bool = False,
) -> SearchResult:
    """Run ``strategy`` on ``problem`` for at most ``episodes`` evaluations; the same seed gives the same policy.

    ``options``: the strategy's own options (``Strategy.defaults``), plus ``reward`` (one of ``REWARDS``, default
    ``acc``) and ``finetune_steps`` (the ``acc-ft`` reward's fine-tune length, default 200).
    ``callback(SearchEvent)`` is called after every evaluation. ``workdir`` holds what a strategy persists (the
    Optuna study) and the evaluation journal; ``resume`` continues it: the journal seeds the reward cache and the
    strategy replays with the same seed, so earlier evaluations are reused, not repeated. ``spec``, ``role`` and
    ``trust_pickle`` are how this process takes part in a search others may share (:class:`Strategy`).
    """
    cls = strategy_class(strategy)
    if episodes < 1:
        raise UserError(f"--episodes {episodes} must be at least 1")
    options = dict(options or {})
    reward_name = options.pop("reward", DEFAULT_REWARD)
    finetune_steps = int(options.pop("finetune_steps", 200))
    if reward_name not in REWARDS:
        raise UserError(f"unknown reward {reward_name!r}: use one of {', '.join(REWARDS)}")
    if evaluator is None and cls.needs_reward:
        raise UserError(f"strategy {strategy} needs an evaluator (model weights and --data); uniform does not")
    seed_everything(seed)
    reward = None if evaluator is None else Reward(reward_name, evaluator, problem.cost, finetune_steps=finetune_steps)
    runner = cls(
        problem,
        seed=seed,
        options=options,
        workdir=Path(workdir) if workdir else None,
        resume=resume,
        spec=spec,
        role=role,
        trust_pickle=trust_pickle,
    )
    journal = Journal(Path(workdir) / JOURNAL) if workdir else None
    if resume and journal is not None and reward is not None:
        for row in journal.read():  # replayed evaluations cost nothing
            if row.get("accuracy") is not None:
                evaluator.remember(
                    row["kept"], reward.finetune_steps, row["accuracy"], distill_loss=row.get("distill_loss")
                )
    ctx = SearchContext(problem, reward, strategy, episodes, callback, journal)
    try:
        extra = runner.run(ctx)
    except KeyboardInterrupt as e:
        raise SearchInterrupted(list(ctx.rows)) from e
    extra["reward"] = reward_name if reward is not None else None
    return ctx.result(seed, **extra)


__all__ = [
    "STRATEGIES",
    "SAMPLERS",
    "REWARDS",
    "SearchContext",
    "SearchEvent",
    "SearchResult",
    "Strategy",
    "SearchInterrupted",
    "Journal",
    "JOURNAL",
    "run_search",
    "uniform_kept",
    "seed_everything",
    "strategy_class",
    "needs_data",
    "REWARD_OPTIONS",
]
