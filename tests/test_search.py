"""Search strategies on a tiny model: feasibility, Pareto fronts, Optuna resume, determinism, rewards."""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pandas as pd
import pytest
import torch

from autoprune.errors import UserError
from autoprune.pareto import pareto_front
from autoprune.reward import Evaluator, Reward
from autoprune.search import STRATEGIES, SearchEvent, run_search, uniform_kept
from autoprune.search.baselines import magnitude_kept
from autoprune.training import TrainConfig, distillation_loss
from tests._search_tiny import tiny_evaluator, tiny_model, tiny_problem

FAST = {"ddpg": {"warmup": 2, "hidden": (32, 32), "batch_size": 8}, "netadapt": {"short_finetune": 1}}


@pytest.fixture(scope="module")
def evaluator() -> Evaluator:
    return tiny_evaluator()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_returns_a_feasible_policy(strategy, evaluator):
    problem = tiny_problem("flops=50%,latency=70%", latency=True)
    events: list[SearchEvent] = []
    result = run_search(
        strategy, problem, evaluator, episodes=8, seed=0, options=FAST.get(strategy), callback=events.append
    )
    assert problem.feasible(result.best_kept)
    assert 1 <= result.evaluations <= 8 and len(result.history) == result.evaluations
    assert len(events) == result.evaluations and events[-1].best_reward == result.best_reward
    assert {"kept", "flops", "params", "latency", "reward", "wall_s"} <= set(result.history.columns)
    feasible = result.history[result.history["feasible"]]
    assert result.best_reward == feasible["reward"].max()


def test_uniform_needs_no_evaluator():
    problem = tiny_problem("params=50%")
    result = run_search("uniform", problem, None, episodes=1, seed=0)
    assert result.best_reward is None
    assert np.array_equal(result.best_kept, uniform_kept(problem)[0])


def test_magnitude_is_global_magnitude_pruning_from_the_problems_importance():
    _, _, pruner, _ = tiny_model()
    problem = tiny_problem("flops=50%")  # with the tiny pruner's importance
    result = run_search("magnitude", problem, None, episodes=1, seed=0)
    assert result.evaluations == 1 and problem.feasible(result.best_kept)
    assert np.array_equal(result.best_kept, magnitude_kept(problem, pruner.scores))
    with pytest.raises(UserError, match="magnitude needs the channels' importance"):
        run_search("magnitude", tiny_problem("flops=50%", importance=None), None, episodes=1, seed=0)


def test_strategies_that_score_need_an_evaluator():
    with pytest.raises(UserError, match="evaluator"):
        run_search("random", tiny_problem(), None, episodes=3, seed=0)


@pytest.mark.parametrize(
    "bad",
    [
        {"strategy": "anneal"},
        {"options": {"sampler": "bogus"}},
        {"options": {"noise": 1}},
        {"options": {"reward": "loss"}},
        {"episodes": 0},
    ],
)
def test_bad_input_is_a_user_error(bad, evaluator):
    kwargs = {"strategy": "optuna", "episodes": 3, "options": None, **bad}
    if bad.get("options") == {"noise": 1}:
        kwargs["strategy"] = "ddpg"
    with pytest.raises(UserError):
        run_search(kwargs.pop("strategy"), tiny_problem(), evaluator, seed=0, **kwargs)


@pytest.mark.parametrize("strategy,options", [("ddpg", FAST["ddpg"]), ("optuna", {"sampler": "tpe"}), ("random", None)])
def test_same_seed_same_policy(strategy, options):
    runs = [
        run_search(strategy, tiny_problem(), tiny_evaluator(), episodes=6, seed=3, options=options) for _ in range(2)
    ]
    assert np.array_equal(runs[0].best_kept, runs[1].best_kept)
    assert list(runs[0].history["kept"]) == list(runs[1].history["kept"])


def test_pareto_front_is_non_dominated(evaluator):
    result = run_search("random", tiny_problem("flops=70%"), evaluator, episodes=12, seed=1)
    front = result.pareto_front("flops", "reward")
    assert len(front) >= 1
    h = result.history
    for _, a in front.iterrows():
        dominated = h[
            (h["flops"] <= a["flops"])
            & (h["reward"] >= a["reward"])
            & ((h["flops"] < a["flops"]) | (h["reward"] > a["reward"]))
        ]
        assert dominated.empty
    # every row off the front is dominated by (or equal to) a front row
    for _, b in result.history.iterrows():
        assert ((front["flops"] <= b["flops"]) & (front["reward"] >= b["reward"])).any()


def test_pareto_front_of_a_hand_made_history():
    h = pd.DataFrame({"flops": [1, 2, 3, 2, 4], "reward": [0.5, 0.7, 0.6, 0.4, 0.9]})
    assert sorted(pareto_front(h)["flops"]) == [1, 2, 4]


def test_optuna_resume_continues_the_trial_count(tmp_path, evaluator):
    problem = tiny_problem()
    first = run_search("optuna", problem, evaluator, episodes=4, seed=0, workdir=tmp_path)
    assert (tmp_path / "optuna.db").is_file() and first.extra["trials"] == 4
    with pytest.raises(UserError, match="resume"):
        run_search("optuna", problem, evaluator, episodes=4, seed=0, workdir=tmp_path)
    resumed = run_search("optuna", problem, evaluator, episodes=7, seed=0, workdir=tmp_path, resume=True)
    assert resumed.extra["complete"] == 7 and resumed.evaluations == 7
    assert list(resumed.history["evaluation"]) == list(range(7))
    assert list(resumed.history["trial"])[:4] == list(range(4))
    assert list(resumed.history["kept"])[:4] == list(first.history["kept"])
    # the resumed sampler starts from the same seed and proposes the first trials' policies again: those trials
    # are PRUNED as repeats, so the 3 new evaluations are 3 new policies
    assert resumed.history["kept"].map(tuple).nunique() == 7
    assert resumed.extra["repeats"] > 0 and resumed.extra["trials"] == 7 + resumed.extra["repeats"]
    assert resumed.best_reward >= first.best_reward


@pytest.mark.parametrize("round_to", [1, 8])
def test_optuna_warm_start_evaluates_uniform_and_magnitude_first(tmp_path, evaluator, round_to):
    problem = tiny_problem("flops=30%", round_to=round_to)
    baselines = [list(uniform_kept(problem)[0]), list(magnitude_kept(problem, problem.importance))]
    options = {"warm_start": True}
    result = run_search("optuna", problem, evaluator, episodes=4, seed=0, options=options, workdir=tmp_path)
    assert [list(k) for k in result.history["kept"][:2]] == baselines
    assert result.extra["complete"] == 4
    # resumed, the study has trials: nothing is enqueued again
    resumed = run_search(
        "optuna", problem, evaluator, episodes=6, seed=0, options=options, workdir=tmp_path, resume=True
    )
    assert [list(k) for k in resumed.history["kept"]].count(baselines[0]) == 1
    cold = run_search("optuna", problem, evaluator, episodes=4, seed=0)
    assert baselines[0] not in [list(k) for k in cold.history["kept"]]


@pytest.mark.parametrize("sampler", ["cmaes", "gp", "nsga2"])
def test_other_samplers(sampler, evaluator):
    dep = {"cmaes": "cmaes", "gp": "scipy"}.get(sampler)
    if dep and importlib.util.find_spec(dep) is None:
        with pytest.raises(UserError, match=f"pip install {dep}"):
            run_search("optuna", tiny_problem(), evaluator, episodes=3, seed=0, options={"sampler": sampler})
        return
    problem = tiny_problem("flops=60%,latency=80%", latency=True)
    result = run_search(
        "optuna",
        problem,
        evaluator,
        episodes=6,
        seed=0,
        options={"sampler": sampler, "n_startup_trials": 3} if sampler != "nsga2" else {"sampler": sampler},
    )
    assert problem.feasible(result.best_kept) and result.evaluations == 6
    if sampler == "nsga2":
        front = result.extra["pareto_front"]
        assert front and all(problem.feasible(r["kept"]) for r in front)
        lat = [r["latency"] for r in front]
        rew = [r["reward"] for r in front]
        assert lat == sorted(lat) and rew == sorted(rew)  # cheaper is worse along a front


def test_rewards(evaluator):
    problem = tiny_problem()
    kept = problem.project(np.full(len(problem.channels), 0.6))
    acc = Reward("acc", evaluator)(kept)
    rflops = Reward("r-flops", evaluator, problem.cost)(kept)
    assert rflops.accuracy == acc.accuracy
    assert rflops.reward == pytest.approx(-(1 - acc.accuracy) * np.log(problem.cost(kept)["flops"]))
    ft = Reward("acc-ft", evaluator, finetune_steps=2)(kept)
    assert "finetune" in ft.phases and 0 <= ft.accuracy <= 1


def _result(ev) -> tuple[float, float]:
    return ev.accuracy, ev.distill_loss


def test_short_finetunes_replay_the_teachers_logits_and_change_no_result():
    """The distilled short fine-tunes of one evaluator see the same batches, so the unpruned model runs once per
    step for all the policies; each policy's result is what a fresh evaluator (a teacher run afresh) gives."""
    problem = tiny_problem()
    policies = [problem.project(np.full(len(problem.channels), r)) for r in (0.5, 0.7)]
    shared = tiny_evaluator(kd=True)
    replayed = [_result(shared.evaluate(kept, finetune_steps=2)) for kept in policies]
    assert shared._finetune_teacher.computed == 2  # the second policy's two steps were replayed
    fresh = [_result(tiny_evaluator(kd=True).evaluate(kept, finetune_steps=2)) for kept in policies]
    assert replayed == fresh and replayed[0] != replayed[1]
    # a fine-tune on other batches (another split) is not fed the remembered logits
    other = tiny_evaluator(kd=True)
    other._finetune_teacher = shared._finetune_teacher
    other.data = dataclasses.replace(other.data, train=other.data.test)
    other.evaluate(policies[0], finetune_steps=2)
    assert shared._finetune_teacher.computed == 4


def test_kd_reward_is_minus_the_distillation_loss_against_the_unpruned_models_logits():
    """The ``kd`` reward is the distilled fine-tune's objective at its start: the held-out distillation loss of the
    recalibrated pruned model, the unpruned model's logits as targets, mean per image."""
    _, _, pruner, data = tiny_model()
    evaluator = tiny_evaluator(fast=False)
    problem = tiny_problem()
    kept = problem.project(np.full(len(problem.channels), 0.5))
    r = Reward("kd", evaluator)(kept)
    assert r.reward == -r.distill_loss and r.accuracy == Reward("acc", evaluator)(kept).reward

    model = evaluator.recalibrate(pruner.apply(list(kept))).eval()
    cfg = TrainConfig()
    pruner.model.eval()
    with torch.no_grad():
        x = torch.cat([x for x, _ in data.held_out.batches(1000)])[:48]
        y = torch.cat([y for _, y in data.held_out.batches(1000)])[:48]
        expected = float(distillation_loss(model(x), pruner.model(x), y, cfg.kd_alpha, cfg.kd_temperature))
    assert r.distill_loss == pytest.approx(expected, rel=1e-4)
    # the lighter prune is nearer the unpruned model's outputs
    lighter = Reward("kd", evaluator)(problem.project(np.full(len(problem.channels), 0.9)))
    assert lighter.distill_loss < r.distill_loss


def test_a_replayed_evaluation_without_the_loss_is_scored_again_only_for_the_kd_reward():
    """A journal written before the loss was recorded replays accuracies only: ``acc`` reuses them, ``kd``
    evaluates the policy again rather than rank it by a missing number."""
    evaluator = tiny_evaluator()
    problem = tiny_problem()
    kept = problem.project(np.full(len(problem.channels), 0.7))
    evaluator.remember(kept, 0, 0.123)
    assert Reward("acc", evaluator)(kept).reward == 0.123
    kd = Reward("kd", evaluator)(kept)
    assert not kd.cached and kd.distill_loss > 0 and kd.reward == -kd.distill_loss
    assert Reward("kd", evaluator)(kept).cached  # now with its loss


def test_a_search_with_the_kd_reward_keeps_the_policy_of_the_lowest_loss(evaluator):
    problem = tiny_problem()
    result = run_search("random", problem, evaluator, episodes=5, seed=0, options={"reward": "kd"})
    h = result.history
    assert h["distill_loss"].notna().all() and (h["reward"] == -h["distill_loss"]).all()
    assert result.best_reward == -h.loc[h["feasible"], "distill_loss"].min()


def test_bn_folding_changes_no_prediction():
    _, _, pruner, data = tiny_model()
    problem = tiny_problem()
    kept = problem.project(np.full(len(problem.channels), 0.5))
    fast = tiny_evaluator(fast=True).evaluate(kept)
    slow = tiny_evaluator(fast=False).evaluate(kept)
    assert fast.accuracy == pytest.approx(slow.accuracy, abs=1 / 48 + 1e-9)
    assert set(fast.phases) == {"apply", "recalibrate", "evaluate"}


def test_optuna_repeats_cost_no_evaluation_and_a_converged_study_stops(evaluator):
    """On a coarse space (16-channel blocks) the budget clip maps many proposals onto one policy. A proposal of a
    policy the study has evaluated is PRUNED (no evaluation, not counted in --episodes), and a study whose last
    ``max_repeats`` proposals were all repeats stops, saying so, instead of spending its budget on the cache."""
    problem = tiny_problem("flops=60%", round_to=16)
    result = run_search("optuna", problem, evaluator, episodes=200, seed=0, options={"max_repeats": 10})
    kept = result.history["kept"].map(tuple)
    assert kept.nunique() == len(kept) == result.evaluations < 200
    assert result.extra["repeats"] >= 10 and result.extra["trials"] == result.evaluations + result.extra["repeats"]
    assert result.extra["converged"].startswith("the last 10 proposals were all policies already evaluated")
    assert all(problem.feasible(np.array(k)) for k in kept)


def test_strategy_options_are_typed_by_their_defaults():
    """An option is checked against its registered default: unknown names and values of the wrong kind are one
    line naming the option; an int stands for a float and a list for a tuple."""
    from autoprune.search import strategy_class

    ddpg = strategy_class("ddpg")
    assert ddpg.checked_options({"noise_sigma": 1, "hidden": [16, 16]}) == {"noise_sigma": 1, "hidden": (16, 16)}
    with pytest.raises(UserError, match="option batch_size='64' of strategy ddpg must be a whole number"):
        ddpg.checked_options({"batch_size": "64"})
    with pytest.raises(UserError, match="strategy ddpg has no option sigma"):
        ddpg.checked_options({"sigma": 0.3})
    assert ddpg.checked_options({"warmup": 5}) == {"warmup": 5}  # a None default takes any value
