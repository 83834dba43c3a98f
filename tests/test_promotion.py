"""The multi-fidelity rung: the search's best few policies and uniform, each after a short distilled fine-tune."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from autoprune import api
from autoprune.search.baselines import uniform_kept
from autoprune.search.promotion import candidates, promote
from tests._search_tiny import tiny_evaluator, tiny_problem


def test_candidates_are_the_best_distinct_feasible_policies_then_uniform():
    problem = tiny_problem("flops=50%")
    full = problem.channels
    a, b, c = (problem.ratios_to_kept(np.full(len(full), r)) for r in (0.3, 0.4, 0.45))
    history = pd.DataFrame(
        {
            "kept": [list(a), list(b), list(b), list(c), list(full)],
            "reward": [0.5, 0.7, 0.7, float("nan"), 0.9],
            "feasible": [True, True, True, True, False],  # the unpruned model is over the budget
        }
    )
    picked = candidates(history, problem, k=2)
    assert [source for _, source in picked] == ["search #1", "search #2", "uniform"]
    assert picked[0][0] == tuple(b) and picked[1][0] == tuple(a)  # by reward, repeats once, NaN and infeasible out
    assert picked[2][0] == tuple(int(x) for x in uniform_kept(problem)[0])


def test_promotion_ranks_by_accuracy_after_the_short_fine_tune():
    problem, evaluator = tiny_problem("flops=50%"), tiny_evaluator(kd=True)
    kept = problem.ratios_to_kept(np.full(len(problem.channels), 0.3))
    history = pd.DataFrame({"kept": [list(kept)], "reward": [0.4], "feasible": [True]})
    ranked = promote(history, problem, evaluator, k=1, steps=3)
    assert {p.source for p in ranked} == {"search #1", "uniform"}
    assert [p.accuracy_ft for p in ranked] == sorted((p.accuracy_ft for p in ranked), reverse=True)
    # each candidate's fine-tuned score is the evaluator's acc-ft evaluation of it (cached: the same number)
    assert ranked[0].accuracy_ft == evaluator.evaluate(ranked[0].kept, finetune_steps=3).accuracy


def test_a_promoted_search_writes_the_winner_and_the_rung(tmp_path):
    out = api.search(
        "resnet20", "synthetic:256", "flops=50%", strategy="random", episodes=3, promote=2, promote_steps=2,
        input_shape=(4, 3, 16, 16), held_out=32, finetune_epochs=0, measure=False, out=tmp_path / "run",
    )  # fmt: skip
    policy = json.loads((tmp_path / "run" / "policy.json").read_text())
    rung = policy["search"]["promotion"]
    assert rung[0]["accuracy_ft"] == max(r["accuracy_ft"] for r in rung)
    assert "uniform" in [r["source"] for r in rung]
    assert list(out.policy.kept) == rung[0]["kept"]
