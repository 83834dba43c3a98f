"""ChannelPruningEnv: the gymnasium contract, AMC's observation, and the budget clip (every episode feasible)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from autoprune.budget import parse_budget
from autoprune.envs import ENV_ID, ChannelPruningEnv
from autoprune.errors import UserError
from autoprune.problem import Problem, coarsest_round_to, floor_counts
from autoprune.reward import Reward
from tests._search_tiny import tiny_evaluator, tiny_problem


def cost_reward(problem):
    """A cheap stand-in reward for feasibility tests (the reward plays no part in the clip)."""
    return lambda kept: -problem.cost_shares(kept)["flops"]


def test_check_env_passes():
    problem = tiny_problem(latency=True)
    env = ChannelPruningEnv(problem, cost_reward(problem))
    with pytest.warns(UserWarning, match="symmetric"):  # SB3 rescales the [min_keep, 1] box itself
        check_env(env, skip_render_check=True)


def test_final_reward_is_the_held_out_accuracy_and_intermediate_rewards_are_zero():
    problem = tiny_problem()
    reward = Reward("acc", tiny_evaluator())
    env = ChannelPruningEnv(problem, reward)
    env.reset(seed=0)
    rewards, done = [], False
    while not done:
        _, r, done, _, info = env.step(np.full(1, 0.6, dtype=np.float32))
        rewards.append(r)
    assert rewards[:-1] == [0.0] * (len(rewards) - 1)
    assert rewards[-1] == info["result"].accuracy == reward(info["kept"]).accuracy
    assert reward(info["kept"]).cached  # the second evaluation of a policy is a cache hit


def test_registered_id_makes_the_env():
    problem = tiny_problem()
    env = gym.make(ENV_ID, problem=problem, reward_fn=cost_reward(problem))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (12,) and env.observation_space.contains(obs)


@pytest.mark.parametrize(
    "budget,latency",
    [("flops=50%", False), ("params=40%", False), ("latency=60%", True), ("flops=35%,params=60%,latency=70%", True)],
)
def test_every_episode_ends_within_budget(budget, latency):
    problem = tiny_problem(budget, latency=latency, min_keep=0.2)
    env = ChannelPruningEnv(problem, cost_reward(problem))
    rng = np.random.default_rng(0)
    policies = [lambda: rng.uniform(0.0, 1.0, 1), lambda: np.ones(1), lambda: rng.choice([0.2, 1.0], 1)]
    for episode in range(24):
        act = policies[episode % len(policies)]
        obs, _ = env.reset()
        done, steps = False, 0
        while not done:
            assert env.observation_space.contains(obs)
            obs, reward, done, truncated, info = env.step(act())
            steps += 1
            assert not truncated and (done or reward == 0.0)
        assert steps == len(problem.channels)
        kept = info["kept"]
        assert problem.feasible(kept), (budget, problem.cost_shares(kept))
        assert np.all(kept >= problem.floor) and np.all(kept <= problem.channels)


def test_clip_keeps_the_largest_count_that_leaves_the_budget_reachable():
    problem = tiny_problem("flops=40%", latency=True)
    rng = np.random.default_rng(1)
    for _ in range(5):
        kept = problem.project(rng.uniform(0.1, 1.0, len(problem.channels)))
        i = int(rng.integers(len(kept)))
        k = problem.max_feasible(i, kept)
        # brute force over every candidate count of group i, later groups at their floor
        best = None
        for c in problem.candidates[i]:
            trial = kept.copy()
            trial[i], trial[i + 1 :] = c, problem.floor[i + 1 :]
            if problem.feasible(trial):
                best = int(c)
        assert k == best


def test_full_width_actions_spend_the_budget_early():
    """Wanting everything, the clip lets early groups keep all they can and later groups take the floor."""
    problem = tiny_problem("flops=50%")
    env = ChannelPruningEnv(problem, cost_reward(problem))
    env.reset()
    done = False
    while not done:
        _, _, done, _, info = env.step(np.ones(1, dtype=np.float32))
    kept = info["kept"]
    assert kept[0] == problem.channels[0]
    assert kept[-1] == problem.floor[-1]
    assert problem.feasible(kept)
    assert problem.cost_shares(kept)["flops"] > 0.45  # close to the budget: the clip is tight


def test_round_to_gives_multiples():
    problem = tiny_problem("flops=50%", round_to=4)
    env = ChannelPruningEnv(problem, cost_reward(problem))
    rng = np.random.default_rng(2)
    env.reset()
    done = False
    while not done:
        _, _, done, _, info = env.step(rng.uniform(0.1, 1.0, 1))
    assert all(k % 4 == 0 or k == c for k, c in zip(info["kept"], problem.channels, strict=True))


def test_a_budget_below_the_blocks_floor_is_met_with_the_coarsest_finer_widths():
    whole = tiny_problem("flops=100%", round_to=8, min_keep=0.1)
    graph, cost = whole.graph, whole.cost
    block_floor = cost(floor_counts(graph, 0.1, 8))["flops"] / cost.baseline["flops"]
    finest_floor = cost(floor_counts(graph, 0.1, 1))["flops"] / cost.baseline["flops"]
    assert finest_floor < block_floor  # the tiny model has groups that one block of 8 keeps at half or more

    above = parse_budget(f"flops={100 * block_floor + 1:.2f}%")
    assert coarsest_round_to(graph, cost, above, 0.1, 8) == 8  # whole blocks wherever they can meet the budget

    below = parse_budget(f"flops={100 * (block_floor + finest_floor) / 2:.2f}%")
    r = coarsest_round_to(graph, cost, below, 0.1, 8)
    assert r < 8 and 8 % r == 0
    problem = Problem(graph, cost, below, min_keep=0.1, round_to=r)
    assert problem.feasible(problem.project(np.full(len(problem.channels), 0.5)))
    with pytest.raises(UserError, match="--round-to"):  # the next coarser block cannot: its error says what to lower
        Problem(graph, cost, below, min_keep=0.1, round_to=2 * r)
