"""Multi-fidelity selection: the search's best few policies promoted to a short distilled fine-tune.

A search ranks policies by their held-out accuracy after BatchNorm recalibration only (the ``acc`` reward: cheap,
so hundreds of policies can be scored). That ranking predicts the accuracy after the final fine-tune poorly when a
cut is deep: a policy that loses more before fine-tuning may recover more. Successive halving with two rungs
(Jamieson & Talwalkar, 2016; the schedule of Optuna's ``SuccessiveHalvingPruner``) spends the expensive fidelity
only where it can change the choice: the ``k`` best distinct feasible policies of the search, and the policies the
search must beat (the uniform prune of the same budget, and the caller's others: the pipeline adds global magnitude
pruning's allocation, :func:`~autoprune.search.baselines.magnitude_kept`, and both grown into the budget their whole
channel blocks leave unspent, :meth:`~autoprune.problem.Problem.fill`), each get ``steps`` SGD steps of distilled
fine-tuning (the ``acc-ft`` evaluation).

The winner is the best of them after it **that leads the uniform policy by more than** :data:`MARGIN_SE` **standard
errors** of the difference on the held-out images (paired: :func:`paired_standard_error`), else the uniform policy.
Uniform is what a user gets without a search; replacing it on a lead the held-out images cannot tell from noise
trades a sure policy for a coin flip. Measured on the compact model at ``flops=10%``: global magnitude's allocation
led uniform by 0.44 points after 200 steps (paired s.e. 0.39) and ended 0.58 under it after the final fine-tune
(benchmarks/README.md, "A lead the held-out images can tell").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from autoprune.problem import Problem
from autoprune.reward import Evaluator
from autoprune.search.baselines import uniform_kept

MARGIN_SE = 2.0  # a one-sided test at about 2.3 % false replacements for one challenger


@dataclass(frozen=True)
class Promoted:
    """One candidate of the promotion rung: where it came from, its accuracy before and after the short fine-tune,
    and the standard error of its difference from the uniform policy's after it (NaN: not known)."""

    kept: tuple[int, ...]
    source: str  # "search #rank", "uniform", or the name of another baseline
    accuracy: float  # the search's reward fidelity: held-out accuracy after BN recalibration
    accuracy_ft: float  # after ``steps`` steps of (distilled) fine-tuning
    se_vs_uniform: float = float("nan")  # paired, over the held-out images, after the fine-tune


def candidates(
    history: pd.DataFrame, problem: Problem, k: int, others: dict[str, Sequence[int]] | None = None
) -> list[tuple[tuple[int, ...], str]]:
    """The ``k`` best distinct feasible policies of ``history`` by reward, then the uniform policy and ``others``
    (name -> kept), each once. A searched policy that is one of those baselines is named after it (the first name
    that has its widths), so the rung and its report compare the uniform policy with itself under one name."""
    named: dict[tuple[int, ...], str] = {}
    for source, kept in {"uniform": uniform_kept(problem)[0], **(others or {})}.items():
        named.setdefault(tuple(int(c) for c in kept), source)
    rows = history[history["feasible"].astype(bool)] if "feasible" in history else history
    rows = rows[np.isfinite(rows["reward"].astype(float))].sort_values("reward", ascending=False, kind="stable")
    searched = list(dict.fromkeys(tuple(int(c) for c in kept) for kept in rows["kept"]))[:k]
    picked = [(key, named.get(key, f"search #{rank}")) for rank, key in enumerate(searched, 1)]
    picked += [(key, source) for key, source in named.items() if key not in searched]
    return picked


def promote(
    history: pd.DataFrame,
    problem: Problem,
    evaluator: Evaluator,
    k: int,
    steps: int,
    others: dict[str, Sequence[int]] | None = None,
    margin: float = MARGIN_SE,
) -> list[Promoted]:
    """Fine-tune each candidate ``steps`` steps and score it; returns them winner first (:func:`best_first`)."""
    picked = candidates(history, problem, k, others)
    uniform = next(kept for kept, source in picked if source == "uniform")
    baseline = evaluator.evaluate(uniform, finetune_steps=steps).correct
    out = []
    for kept, source in picked:
        before = evaluator.evaluate(kept).accuracy
        after = evaluator.evaluate(kept, finetune_steps=steps)
        out.append(Promoted(kept, source, before, after.accuracy, paired_standard_error(after.correct, baseline)))
    return best_first(out, incumbent=uniform, margin=margin)


def best_first(
    promoted: Sequence[Promoted], incumbent: tuple[int, ...] | None = None, margin: float = MARGIN_SE
) -> list[Promoted]:
    """The winner, then the others by accuracy after the short fine-tune (NaN last).

    Ranked by that accuracy, a searched policy behind the baselines on a tie (uniform, then the others in their
    order, then the search's ranks). The winner is the first of that order that is the ``incumbent`` policy or leads
    it by more than ``margin`` times its ``se_vs_uniform`` (by any lead where that is NaN); without an incumbent
    among them, the first."""

    def rank(i: int) -> tuple[float, bool, int]:
        p = promoted[i]
        return (-np.nan_to_num(p.accuracy_ft, nan=-1.0), p.source.startswith("search #"), i)

    order = [promoted[i] for i in sorted(range(len(promoted)), key=rank)]
    held = next((p for p in order if p.kept == incumbent), None)
    if held is None:
        return order

    def clear_lead(p: Promoted) -> bool:
        lead = p.accuracy_ft - held.accuracy_ft
        return lead > (margin * p.se_vs_uniform if np.isfinite(p.se_vs_uniform) else 0.0)

    winner = next(p for p in order if p is held or clear_lead(p))
    return [winner, *(p for p in order if p is not winner)]


def paired_standard_error(correct_a: np.ndarray | None, correct_b: np.ndarray | None) -> float:
    """The standard error of accuracy(a) - accuracy(b) measured on the same images (``correct_*``: per image, right
    or not): the standard deviation of the per-image differences over the square root of their number. Images both
    get right or both get wrong add nothing to the difference, so this is far smaller than either accuracy's own
    binomial error when the two models mostly agree. NaN when either is unknown."""
    if correct_a is None or correct_b is None or len(correct_a) != len(correct_b) or len(correct_a) < 2:
        return float("nan")
    d = np.asarray(correct_a, dtype=float) - np.asarray(correct_b, dtype=float)
    return float(d.std(ddof=1) / np.sqrt(len(d)))
