"""AMC's agent: DDPG over the channel-pruning environment, with AMC's schedule (He et al., 2018, section 3.3).

stable-baselines3 provides the networks and the update step (:meth:`DDPG.train`: critic TD update, deterministic
policy gradient, Polyak-averaged targets). What differs from SB3's ``learn()`` loop is AMC's episode structure,
so the loop is written here:

* ``warmup`` episodes of uniformly random actions in ``[min_keep, 1]`` (AMC: 100 of 400 episodes, i.e. a quarter);
* then the actor's action plus truncated-normal exploration noise whose sigma starts at 0.5 and decays by 0.99
  per episode after the warm-up (:class:`AMCTruncatedNormalNoise`);
* the reward is known only at the end of an episode, and AMC assigns that final reward to *every* transition of
  the episode before storing it (discount 1), so transitions enter the replay buffer once the episode is over;
* rewards are centred by a moving average of the sampled batches' mean reward (AMC's baseline, alpha 0.5),
  done in the replay buffer's ``sample`` so that SB3's unchanged ``train()`` learns from ``reward - baseline``;
* after the warm-up, one gradient step per transition of the finished episode (AMC updates once per stored step);
* actor and critic have 300-300 hidden units and their own learning rates (actor 1e-4, critic 1e-3), tau 0.01,
  batch 64, discount 1.

Each episode's history row also records ``phase`` (warmup or explore), ``sigma`` (the exploration noise's, None in
the warm-up) and ``update_s``: the seconds of the agent update that ran *before* the episode (None for the first), so
that a row's seconds are spent before its ``wall_s``; the fields travel with the env's evaluation call.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch as th
from stable_baselines3 import DDPG
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.logger import configure
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from autoprune.envs.pruning_env import ChannelPruningEnv
from autoprune.search.base import SearchContext, Strategy

# AMC's released defaults (amc_search.py), for a 400-episode search.
AMC_EPISODES, AMC_WARMUP = 400, 100


class MovingAverageReplayBuffer(ReplayBuffer):
    """A replay buffer whose samples carry ``reward - moving average of sampled batch means`` (AMC's baseline)."""

    def __init__(self, *args, moving_alpha: float = 0.5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.moving_alpha = moving_alpha
        self.moving_average: float | None = None

    def sample(self, batch_size: int, env=None) -> ReplayBufferSamples:
        s = super().sample(batch_size, env)
        mean = float(s.rewards.mean())
        a = self.moving_alpha
        self.moving_average = mean if self.moving_average is None else (1 - a) * self.moving_average + a * mean
        return s._replace(rewards=s.rewards - self.moving_average)


class AMCDDPG(DDPG):
    """SB3's DDPG with separate actor and critic learning rates (AMC: 1e-4 and 1e-3); the update is SB3's."""

    def __init__(self, *args, actor_lr: float = 1e-4, critic_lr: float = 1e-3, **kwargs) -> None:
        self.actor_lr, self.critic_lr = actor_lr, critic_lr
        super().__init__(*args, learning_rate=critic_lr, **kwargs)
        self._update_learning_rate([])

    def _update_learning_rate(self, optimizers) -> None:
        for opt, lr in ((self.actor.optimizer, self.actor_lr), (self.critic.optimizer, self.critic_lr)):
            for group in opt.param_groups:
                group["lr"] = lr


@contextmanager
def single_thread():
    """Run the agent's small MLP updates on one intra-op thread: a 300-300 network gains nothing from more, and on a
    busy machine OpenMP's spinning threads make each update many times slower (measured: 40 ms vs 3.6 s for 24
    forward/backward passes while other jobs held both cores)."""
    n = th.get_num_threads()
    th.set_num_threads(1)
    try:
        yield
    finally:
        th.set_num_threads(n)


class AMCTruncatedNormalNoise(ActionNoise):
    """AMC's exploration noise: the explored action is a draw of N(mu, sigma) truncated to ``[lo, hi]``, ``mu`` the
    actor's action, so exploration never proposes a keep ratio outside the action space and never piles actions up
    on its bounds as clipping would; sigma starts at ``sigma`` and decays by ``decay`` per episode after ``warmup``.

    ``__call__(mu)`` returns the additive noise (``mu + noise`` is the explored action); :meth:`reset`, called at the
    end of each episode as SB3 does, advances the decay. Draws come from ``rng`` (the strategy's seeded Generator,
    shared with the warm-up's uniform actions), rejection-sampled: the same seed gives the same actions.
    """

    def __init__(
        self, rng: np.random.Generator, sigma: float, decay: float, warmup: int, lo: float, hi: float = 1.0
    ) -> None:
        super().__init__()
        self.rng, self.initial_sigma, self.decay, self.warmup, self.lo, self.hi = rng, sigma, decay, warmup, lo, hi
        self.episode = 0  # episodes finished

    @property
    def sigma(self) -> float:
        """This episode's sigma (a power, not a running product, so every episode's value is exact)."""
        return self.initial_sigma * self.decay ** max(0, self.episode - self.warmup)

    def reset(self) -> None:
        self.episode += 1

    def __call__(self, mu: float = 0.0) -> np.ndarray:
        sigma, lo, hi = self.sigma, self.lo, self.hi
        if sigma <= 0:
            return np.array([float(np.clip(mu, lo, hi)) - mu])
        for _ in range(100):
            n = self.rng.normal(0.0, sigma)  # mu + n is bit-for-bit rng.normal(mu, sigma)
            if lo <= mu + n <= hi:
                return np.array([n])
        return np.array([float(np.clip(mu + self.rng.normal(0.0, sigma), lo, hi)) - mu])  # mu far outside [lo, hi]

    def __repr__(self) -> str:
        return f"AMCTruncatedNormalNoise(sigma={self.sigma}, bounds=[{self.lo}, {self.hi}])"


@dataclass
class _Episode:
    """One finished episode: its transitions (observation, next observation, the ratio that took effect, done) and
    the final reward."""

    steps: list[tuple[np.ndarray, np.ndarray, float, bool]]
    reward: float


class DDPGStrategy(Strategy):
    name = "ddpg"
    defaults: ClassVar[dict] = {
        "warmup": None,  # random episodes; None: a quarter of the episodes, as AMC's 100 of 400
        "noise_sigma": 0.5,  # initial sigma of the truncated-normal exploration noise (AMC: init_delta)
        "noise_decay": 0.99,  # per episode after warm-up (AMC: delta_decay; its released amc_search.py has 0.95)
        "hidden": (300, 300),  # actor and critic hidden layers (AMC: hidden1, hidden2)
        "actor_lr": 1e-4,
        "critic_lr": 1e-3,
        "tau": 0.01,
        "batch_size": 64,
        "discount": 1.0,
        "moving_alpha": 0.5,  # weight of the newest batch mean in the reward baseline
        "buffer_size": 100_000,
    }

    def run(self, ctx: SearchContext) -> dict:
        o, episodes = self.options, ctx.remaining
        warmup = o["warmup"] if o["warmup"] is not None else max(1, round(episodes * AMC_WARMUP / AMC_EPISODES))
        env = ChannelPruningEnv(self.problem, ctx.evaluate)
        agent = self._agent(env)
        rng = np.random.default_rng(self.seed)
        noise = AMCTruncatedNormalNoise(rng, o["noise_sigma"], o["noise_decay"], warmup, self.problem.min_keep)
        update_s: list[float] = []
        rewards = []
        for episode in range(episodes):
            explore = episode >= warmup
            # the history row gets the episode's phase and sigma, and the agent update that ran before it
            row = {
                "phase": "explore" if explore else "warmup",
                "sigma": noise.sigma if explore else None,
                "update_s": update_s[-1] if update_s else None,
            }
            obs, _ = env.reset(seed=self.seed + episode, options={"extra": row})
            ep = self._episode(env, agent, obs, noise if explore else None, rng)
            noise.reset()
            update_s.append(self._update(agent, ep, explore))
            rewards.append(ep.reward)
        return {
            "warmup": warmup,
            "mean_update_s": float(np.mean(update_s)) if update_s else 0.0,
            "warmup_mean_reward": float(np.mean(rewards[:warmup])) if rewards else None,
            "last50_mean_reward": float(np.mean(rewards[-50:])) if rewards else None,
        }

    def _agent(self, env: ChannelPruningEnv) -> AMCDDPG:
        o, hidden = self.options, list(self.options["hidden"])
        agent = AMCDDPG(
            "MlpPolicy",
            env,
            actor_lr=o["actor_lr"],
            critic_lr=o["critic_lr"],
            buffer_size=o["buffer_size"],
            learning_starts=0,
            batch_size=o["batch_size"],
            tau=o["tau"],
            gamma=o["discount"],
            replay_buffer_class=MovingAverageReplayBuffer,
            replay_buffer_kwargs={"moving_alpha": o["moving_alpha"]},
            policy_kwargs={"net_arch": {"pi": hidden, "qf": hidden}},
            seed=self.seed,
            device="cpu",
        )
        agent.set_logger(configure(None, []))
        return agent

    def _episode(
        self,
        env: ChannelPruningEnv,
        agent: AMCDDPG,
        obs: np.ndarray,
        noise: AMCTruncatedNormalNoise | None,
        rng: np.random.Generator,
    ) -> _Episode:
        """Play one episode: uniform actions in ``[min_keep, 1]`` during the warm-up (``noise`` None), else the
        actor's action plus ``noise``. The env evaluates the policy at the last step."""
        lo, hi = self.problem.min_keep, 1.0
        steps, done, reward = [], False, 0.0
        while not done:
            if noise is None:
                a = float(rng.uniform(lo, hi))
            else:
                with single_thread():
                    mu = float(agent.predict(obs, deterministic=True)[0][0])
                a = mu + float(noise(mu)[0])
            next_obs, reward, done, _, info = env.step(np.array([a], dtype=np.float32))
            # store the action that took effect (after rounding and the budget clip): it made the reward
            steps.append((obs, next_obs, info["ratio"], done))
            obs = next_obs
        return _Episode(steps, reward)

    def _update(self, agent: AMCDDPG, ep: _Episode, train: bool) -> float:
        """Store the episode's transitions and, after the warm-up, train; returns the seconds it took."""
        t = time.perf_counter()
        for s, s1, ratio, d in ep.steps:  # AMC: the episode's final reward for every transition
            scaled = agent.policy.scale_action(np.array([[ratio]], dtype=np.float32))
            agent.replay_buffer.add(s[None], s1[None], scaled, np.array([ep.reward]), np.array([d]), [{}])
        if train:
            with single_thread():
                agent.train(gradient_steps=len(ep.steps), batch_size=self.options["batch_size"])
        return time.perf_counter() - t
