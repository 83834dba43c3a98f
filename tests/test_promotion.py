"""The multi-fidelity rung: the search's best few policies, uniform and global magnitude pruning's allocation, each
after a short distilled fine-tune."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from autoprune import api
from autoprune.pipeline import promotion_size
from autoprune.search.baselines import magnitude_kept, uniform_kept
from autoprune.search.promotion import MARGIN_SE, Promoted, best_first, candidates, paired_standard_error, promote
from autoprune.spec import DEFAULT_PROMOTE, RunSpec
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


def test_other_baselines_join_the_candidates_once():
    problem = tiny_problem("flops=50%")
    kept = problem.ratios_to_kept(np.full(len(problem.channels), 0.3))
    history = pd.DataFrame({"kept": [list(kept)], "reward": [0.4], "feasible": [True]})
    other = problem.ratios_to_kept(np.full(len(problem.channels), 0.2))
    picked = candidates(history, problem, k=1, others={"magnitude": other, "again": kept, "twice": other})
    assert [source for _, source in picked] == ["again", "uniform", "magnitude"]  # the search found "again"
    assert picked[0][0] == tuple(kept) and picked[2][0] == tuple(other)


def test_a_searched_policy_that_is_uniform_is_named_uniform():
    """The rung compares every candidate with the uniform policy: found by the search too, it is one candidate,
    named uniform, so the report's lead column has its reference."""
    problem = tiny_problem("flops=50%")
    uniform = tuple(int(x) for x in uniform_kept(problem)[0])
    other = problem.ratios_to_kept(np.full(len(problem.channels), 0.3))
    history = pd.DataFrame({"kept": [list(uniform), list(other)], "reward": [0.6, 0.5], "feasible": [True, True]})
    picked = candidates(history, problem, k=2)
    assert picked == [(uniform, "uniform"), (tuple(other), "search #2")]


def _scores(problem, important: int) -> list[np.ndarray]:
    """Spread importances in every group, except group ``important``: two units carry all its magnitude."""
    scores = [np.random.default_rng(i).uniform(0.5, 1.5, int(c)) for i, c in enumerate(problem.channels)]
    scores[important] = np.r_[np.full(2, 100.0), np.full(int(problem.channels[important]) - 2, 0.01)]
    return scores


def test_global_magnitude_keeps_what_is_important_across_groups_within_the_budget():
    problem = tiny_problem("flops=50%", round_to=1, min_keep=0.01)
    for g in range(len(problem.channels)):
        kept = magnitude_kept(problem, _scores(problem, g))
        assert problem.feasible(kept)
        assert np.all(kept >= problem.floor) and np.all(kept <= problem.channels)
        assert kept[g] == 2  # the two units that carry the group's magnitude, and none of its near-zero ones
        assert np.delete(kept, g).sum() > np.delete(problem.floor, g).sum()  # the others share the budget


def test_global_magnitude_rounds_down_to_the_step_and_keeps_an_unpruned_model_whole():
    problem = tiny_problem("flops=50%", round_to=4)
    scores = [np.random.default_rng(i).uniform(0.1, 1.0, int(c)) for i, c in enumerate(problem.channels)]
    kept = magnitude_kept(problem, scores)
    assert problem.feasible(kept)
    assert all(
        k in (c, f) or k % s == 0
        for k, c, f, s in zip(kept, problem.channels, problem.floor, problem.steps, strict=True)
    )
    whole = tiny_problem("flops=100%")
    assert list(magnitude_kept(whole, scores)) == list(whole.channels)


def test_global_magnitude_is_the_lowest_threshold_that_meets_the_budget():
    problem = tiny_problem("flops=50%", round_to=1, min_keep=0.01)  # floors of one channel: the threshold decides
    scores = [np.random.default_rng(i).uniform(0.1, 1.0, int(c)) for i, c in enumerate(problem.channels)]
    kept = magnitude_kept(problem, scores)
    # one more unit back (the most important unit the threshold cut) breaks the budget
    normed = [s / s.mean() for s in scores]
    cut = [(np.sort(n)[::-1][k] if k < len(n) else -np.inf) for n, k in zip(normed, kept, strict=True)]
    g = int(np.argmax(cut))
    more = kept.copy()
    more[g] += 1
    assert not problem.feasible(more)


def _no_step_fits(problem, kept) -> bool:
    """No group's next candidate count fits the budget any more."""
    for g, k in enumerate(kept):
        step = problem.next_candidate(g, int(k))
        if step is not None:
            more = kept.copy()
            more[g] = step
            if problem.feasible(more):
                return False
    return True


def test_fill_grows_a_policy_into_the_budget_by_priority_until_no_step_fits():
    problem = tiny_problem("flops=50%", round_to=4)
    floor = problem.floor.copy()
    first = problem.fill(floor, lambda g, _now, _after: -g)  # the earliest group first, as far as it goes
    assert first[0] == problem.max_feasible(0, floor)  # alone above its floor, it takes all it can
    last = problem.fill(floor, lambda g, _now, _after: g)
    assert last[-1] == problem.max_feasible(len(floor) - 1, floor)
    for kept in (first, last):
        assert problem.feasible(kept) and np.all(kept >= floor) and _no_step_fits(problem, kept)
        assert all(int(k) in problem.candidates[g] for g, k in enumerate(kept))
    assert list(first) != list(last)


def test_filled_uniform_and_magnitude_spend_what_whole_steps_leave():
    problem = tiny_problem("flops=30%", round_to=4)
    scores = [np.random.default_rng(i).uniform(0.1, 1.0, int(c)) for i, c in enumerate(problem.channels)]
    for plain, filled in (
        (uniform_kept(problem)[0], uniform_kept(problem, fill=True)[0]),
        (magnitude_kept(problem, scores), magnitude_kept(problem, scores, fill=True)),
    ):
        assert problem.feasible(filled) and np.all(filled >= plain) and _no_step_fits(problem, filled)
        assert problem.cost(filled)["flops"] >= problem.cost(plain)["flops"]
    assert not np.array_equal(uniform_kept(problem, fill=True)[0], uniform_kept(problem)[0])  # room was left here


def test_promotion_ranks_by_accuracy_after_the_short_fine_tune():
    problem, evaluator = tiny_problem("flops=50%"), tiny_evaluator(kd=True)
    kept = problem.ratios_to_kept(np.full(len(problem.channels), 0.3))
    history = pd.DataFrame({"kept": [list(kept)], "reward": [0.4], "feasible": [True]})
    ranked = promote(history, problem, evaluator, k=1, steps=3)
    assert {p.source for p in ranked} == {"search #1", "uniform"}
    top = max(ranked, key=lambda p: p.accuracy_ft)
    # the best wins, or uniform does when the best's lead is within the held-out images' noise
    assert ranked[0] is top or (
        ranked[0].source == "uniform" and top.accuracy_ft - ranked[0].accuracy_ft <= MARGIN_SE * top.se_vs_uniform
    )
    assert next(p for p in ranked if p.source == "uniform").se_vs_uniform == 0.0
    # each candidate's fine-tuned score is the evaluator's acc-ft evaluation of it (cached: the same number)
    assert ranked[0].accuracy_ft == evaluator.evaluate(ranked[0].kept, finetune_steps=3).accuracy


def test_a_searched_policy_must_beat_the_baselines_to_win_the_rung():
    def rung(*entries: tuple[str, float]) -> list[str]:
        return [p.source for p in best_first([Promoted((i,), s, 0.1, acc) for i, (s, acc) in enumerate(entries)])]

    tied = rung(("search #1", 0.9), ("search #2", 0.8), ("uniform", 0.9), ("magnitude", 0.9))
    assert tied == ["uniform", "magnitude", "search #1", "search #2"]  # a tie keeps the baseline
    assert rung(("search #1", 0.91), ("uniform", 0.9))[0] == "search #1"  # a lead wins
    assert rung(("search #1", float("nan")), ("uniform", 0.2)) == ["uniform", "search #1"]


def test_a_lead_over_uniform_within_the_held_out_noise_keeps_uniform():
    def rung(lead: float, se: float, incumbent=(0,)) -> list[str]:
        entries = [Promoted((0,), "uniform", 0.1, 0.85, 0.0), Promoted((1,), "magnitude", 0.1, 0.85 + lead, se)]
        entries.append(Promoted((2,), "search #1", 0.1, 0.84, se))
        return [p.source for p in best_first(entries, incumbent=incumbent)]

    # the compact model at flops=10%, seed 1: magnitude +0.44 after 200 steps (s.e. 0.39), -0.58 after the epoch
    assert rung(0.0044, 0.0039) == ["uniform", "magnitude", "search #1"]
    assert rung(0.0100, 0.0039) == ["magnitude", "uniform", "search #1"]  # 2.6 standard errors: a clear lead
    assert rung(0.0044, float("nan"))[0] == "magnitude"  # no per-image record: any lead
    assert rung(0.0044, 0.0039, incumbent=(7,))[0] == "magnitude"  # no incumbent among them: the best
    ahead = [Promoted((0,), "uniform", 0.1, 0.80, 0.0), Promoted((1,), "search #1", 0.1, 0.70, 0.001)]
    assert [p.source for p in best_first(ahead, incumbent=(0,))] == ["uniform", "search #1"]


def test_the_paired_standard_error_counts_only_the_images_two_models_disagree_on():
    a = np.array([1, 1, 0, 0, 1, 1], dtype=bool)
    b = np.array([1, 0, 0, 1, 1, 1], dtype=bool)  # one image each way, four agreed
    d = np.array([0, 1, 0, -1, 0, 0])
    assert paired_standard_error(a, b) == np.std(d, ddof=1) / np.sqrt(6)
    assert paired_standard_error(a, a) == 0.0
    assert np.isnan(paired_standard_error(a, None)) and np.isnan(paired_standard_error(a, b[:3]))


def test_an_evaluation_records_which_held_out_images_the_policy_gets_right():
    problem, evaluator = tiny_problem("flops=50%"), tiny_evaluator()
    ev = evaluator.evaluate(uniform_kept(problem)[0])
    assert ev.correct is not None and len(ev.correct) == evaluator.held_out_size
    assert ev.correct.mean() == ev.accuracy
    assert evaluator.evaluate(uniform_kept(problem)[0]).correct is ev.correct  # the cache keeps it


def test_a_promoted_search_writes_the_winner_and_the_rung(tmp_path):
    out = api.search(
        "resnet20", "synthetic:256", "flops=50%", strategy="random", episodes=3, promote=2, promote_steps=2,
        input_shape=(4, 3, 16, 16), held_out=32, finetune_epochs=0, measure=False, out=tmp_path / "run",
    )  # fmt: skip
    policy = json.loads((tmp_path / "run" / "policy.json").read_text())
    rung = policy["search"]["promotion"]
    assert policy["search"]["promotion_margin_se"] == MARGIN_SE
    uniform = next(r for r in rung if r["source"] == "uniform")
    lead = rung[0]["accuracy_ft"] - uniform["accuracy_ft"]
    if rung[0] is uniform:  # no other candidate led it clearly
        assert all(r["accuracy_ft"] - uniform["accuracy_ft"] <= MARGIN_SE * r["se_vs_uniform"] for r in rung[1:])
    else:  # the best that led it clearly
        assert lead > MARGIN_SE * rung[0]["se_vs_uniform"]
        assert all(r["accuracy_ft"] <= rung[0]["accuracy_ft"] for r in rung)
    assert {"uniform", "magnitude"} <= {r["source"] for r in rung}
    assert list(out.policy.kept) == rung[0]["kept"]
    report = (tmp_path / "run" / "report.md").read_text()
    winner = rung[0]["source"].replace("+fill", ", filled")
    assert f"| **{winner}** (winner) | {rung[0]['accuracy']:.2%} | {rung[0]['accuracy_ft']:.2%} |" in report
    assert f"more than {MARGIN_SE:g} standard errors" in report


def test_the_rung_fine_tunes_no_longer_than_the_final_fine_tune(tmp_path):
    """The rung predicts the final fine-tune: 0.01 epochs of a few hundred images is one step, so the rung's
    fine-tunes are one step too, not ``--promote-steps``' 200."""
    api.search(
        "resnet20", "synthetic:256", "flops=50%", strategy="random", episodes=2, promote=1, promote_steps=200,
        input_shape=(4, 3, 16, 16), held_out=32, finetune_epochs=0.01, measure=False, out=tmp_path / "run",
    )  # fmt: skip
    policy = json.loads((tmp_path / "run" / "policy.json").read_text())
    assert policy["search"]["promotion_steps"] == 1
    assert "got a short distilled fine-tune (1 step)." in (tmp_path / "run" / "report.md").read_text()


def test_by_default_a_search_that_fine_tunes_its_winner_promotes_and_others_do_not():
    def size(strategy: str, finetune_epochs: float, **settings) -> int:
        spec = RunSpec.create("flops=50%", "resnet20", strategy=strategy, finetune_epochs=finetune_epochs, **settings)
        return promotion_size(spec)

    assert size("optuna", 1.0) == size("ddpg", 0.5) == DEFAULT_PROMOTE > 0
    assert size("optuna", 0.0) == 0  # no fine-tune: the search's reward is the final criterion
    assert size("uniform", 1.0) == size("magnitude", 1.0) == 0  # one policy each: nothing to choose between
    assert size("optuna", 0.0, promote=3) == 3 and size("optuna", 1.0, promote=0) == 0  # asked for: as asked
