"""Multi-fidelity selection: the search's best few policies promoted to a short distilled fine-tune.

A search ranks policies by their held-out accuracy after BatchNorm recalibration only (the ``acc`` reward: cheap,
so hundreds of policies can be scored). That ranking predicts the accuracy after the final fine-tune poorly when a
cut is deep: a policy that loses more before fine-tuning may recover more. Successive halving with two rungs
(Jamieson & Talwalkar, 2016; the schedule of Optuna's ``SuccessiveHalvingPruner``) spends the expensive fidelity
only where it can change the choice: the ``k`` best distinct feasible policies of the search, and the policies the
search must beat (the uniform prune of the same budget, and the caller's others: the pipeline adds global magnitude
pruning's allocation, :func:`~autoprune.search.baselines.magnitude_kept`, and both grown into the budget their whole
channel blocks leave unspent, :meth:`~autoprune.problem.Problem.fill`), each get ``steps`` SGD steps of distilled
fine-tuning (the ``acc-ft`` evaluation) and the best of them after it is the winner. So a promoted search ends at
least where those baselines do, as far as the short fine-tune can tell.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from autoprune.problem import Problem
from autoprune.reward import Evaluator
from autoprune.search.baselines import uniform_kept


@dataclass(frozen=True)
class Promoted:
    """One candidate of the promotion rung: where it came from, and its accuracy before and after the short
    fine-tune."""

    kept: tuple[int, ...]
    source: str  # "search #rank", "uniform", or the name of another baseline
    accuracy: float  # the search's reward fidelity: held-out accuracy after BN recalibration
    accuracy_ft: float  # after ``steps`` steps of (distilled) fine-tuning


def candidates(
    history: pd.DataFrame, problem: Problem, k: int, others: dict[str, Sequence[int]] | None = None
) -> list[tuple[tuple[int, ...], str]]:
    """The ``k`` best distinct feasible policies of ``history`` by reward, then the uniform policy and ``others``
    (name -> kept), each once."""
    rows = history[history["feasible"].astype(bool)] if "feasible" in history else history
    rows = rows[np.isfinite(rows["reward"].astype(float))].sort_values("reward", ascending=False, kind="stable")
    picked: list[tuple[tuple[int, ...], str]] = []
    for kept in rows["kept"]:
        key = tuple(int(c) for c in kept)
        if key not in (p for p, _ in picked):
            picked.append((key, f"search #{len(picked) + 1}"))
        if len(picked) == k:
            break
    for source, kept in {"uniform": uniform_kept(problem)[0], **(others or {})}.items():
        key = tuple(int(c) for c in kept)
        if key not in (p for p, _ in picked):
            picked.append((key, source))
    return picked


def promote(
    history: pd.DataFrame,
    problem: Problem,
    evaluator: Evaluator,
    k: int,
    steps: int,
    others: dict[str, Sequence[int]] | None = None,
) -> list[Promoted]:
    """Fine-tune each candidate ``steps`` steps and score it; returns them best first (:func:`best_first`)."""
    out = []
    for kept, source in candidates(history, problem, k, others):
        before = evaluator.evaluate(kept).accuracy
        after = evaluator.evaluate(kept, finetune_steps=steps).accuracy
        out.append(Promoted(kept, source, before, after))
    return best_first(out)


def best_first(promoted: Sequence[Promoted]) -> list[Promoted]:
    """By accuracy after the short fine-tune (NaN last). A searched policy has to beat the baselines to win: on a
    tie the baselines come first (uniform, then the others in their order), then the search's ranks."""

    def rank(i: int) -> tuple[float, bool, int]:
        p = promoted[i]
        return (-np.nan_to_num(p.accuracy_ft, nan=-1.0), p.source.startswith("search #"), i)

    return [promoted[i] for i in sorted(range(len(promoted)), key=rank)]
