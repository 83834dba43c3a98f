"""AMC's DDPG search: the truncated-normal exploration noise, and the extra history fields passed through the env's
evaluation call."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autoprune.envs import ChannelPruningEnv
from autoprune.search import run_search
from autoprune.search.ddpg import AMCTruncatedNormalNoise
from tests._search_tiny import tiny_evaluator, tiny_problem

LO = 0.2


def rejection_reference(rng: np.random.Generator, mu: float, sigma: float, lo: float, hi: float) -> float:
    """The hand-written draw the noise replaced: N(mu, sigma) redrawn until it falls in [lo, hi]."""
    while True:
        x = rng.normal(mu, sigma)
        if lo <= x <= hi:
            return float(x)


@pytest.mark.parametrize("sigma", [0.01, 0.5, 5.0])
def test_noise_keeps_actions_within_the_bounds(sigma):
    noise = AMCTruncatedNormalNoise(np.random.default_rng(0), sigma, 0.99, 0, LO)
    for mu in np.linspace(LO, 1.0, 41):
        for _ in range(20):
            n = noise(float(mu))
            assert n.shape == (1,)
            assert LO <= mu + n[0] <= 1.0


def test_noise_without_sigma_returns_the_clipped_actor_action():
    noise = AMCTruncatedNormalNoise(np.random.default_rng(0), 0.0, 0.99, 0, LO)
    assert noise(0.5)[0] == 0.0
    assert 0.5 + noise(0.5)[0] == 0.5


def test_sigma_is_constant_in_the_warmup_and_decays_once_per_episode_after():
    noise = AMCTruncatedNormalNoise(np.random.default_rng(0), 0.5, 0.9, 3, LO)
    sigmas = []
    for _ in range(6):
        sigmas.append(noise.sigma)
        noise.reset()  # the end of an episode
    assert sigmas[:4] == [0.5] * 4  # episodes 0-2 warm up; episode 3, the first explored, starts at sigma
    assert sigmas[4:] == pytest.approx([0.5 * 0.9, 0.5 * 0.9**2])


def test_same_seed_same_draws_as_the_rejection_sampler():
    mus = np.random.default_rng(1).uniform(LO, 1.0, 50)
    noise = AMCTruncatedNormalNoise(np.random.default_rng(7), 0.5, 0.99, 0, LO)
    reference = np.random.default_rng(7)
    for mu in mus:
        assert float(mu) + noise(float(mu))[0] == rejection_reference(reference, float(mu), 0.5, LO, 1.0)


def test_env_passes_the_reset_extras_to_the_evaluation():
    problem = tiny_problem()
    calls = []
    env = ChannelPruningEnv(problem, lambda kept, **extra: calls.append(extra) or 0.0)
    for options in ({"extra": {"phase": "explore", "sigma": 0.4}}, None):
        env.reset(seed=0, options=options)
        done = False
        while not done:
            _, _, done, _, _ = env.step(np.full(1, 0.6, dtype=np.float32))
    assert calls == [{"phase": "explore", "sigma": 0.4}, {}]


def test_history_rows_carry_phase_sigma_and_the_preceding_update():
    options = {"warmup": 2, "hidden": (16, 16), "batch_size": 8, "noise_sigma": 0.5, "noise_decay": 0.9}
    result = run_search("ddpg", tiny_problem(), tiny_evaluator(), episodes=4, seed=0, options=options)
    h = result.history
    assert list(h["phase"]) == ["warmup", "warmup", "explore", "explore"]
    assert h["sigma"][:2].isna().all()
    assert list(h["sigma"][2:]) == pytest.approx([0.5, 0.45])
    assert math.isnan(h["update_s"][0])  # no update precedes the first episode
    assert (h["update_s"][1:] >= 0).all()
