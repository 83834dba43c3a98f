"""AMC's agent: DDPG over the channel-pruning environment, with AMC's schedule (He et al., 2018, section 3.3).

stable-baselines3 provides the networks and the update step (:meth:`DDPG.train`: critic TD update, deterministic
policy gradient, Polyak-averaged targets). What differs from SB3's ``learn()`` loop is AMC's episode structure,
so the loop is written here:

* ``warmup`` episodes of uniformly random actions in ``[min_keep, 1]`` (AMC: 100 of 400 episodes, i.e. a quarter);
* then the actor's action plus truncated-normal exploration noise whose sigma starts at 0.5 and decays by 0.99
  per episode after the warm-up;
* the reward is known only at the end of an episode, and AMC assigns that final reward to *every* transition of
  the episode before storing it (discount 1), so transitions enter the replay buffer once the episode is over;
* rewards are centred by a moving average of the sampled batches' mean reward (AMC's baseline, alpha 0.5),
  done in the replay buffer's ``sample`` so that SB3's unchanged ``train()`` learns from ``reward - baseline``;
* after the warm-up, one gradient step per transition of the finished episode (AMC updates once per stored step);
* actor and critic have 300-300 hidden units and their own learning rates (actor 1e-4, critic 1e-3), tau 0.01,
  batch 64, discount 1.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import ClassVar

import numpy as np
import torch as th
from stable_baselines3 import DDPG
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.logger import configure
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


def truncated_normal(rng: np.random.Generator, mu: float, sigma: float, lo: float, hi: float) -> float:
    """A sample of N(mu, sigma) truncated to [lo, hi] (inverse-CDF-free rejection; falls back to clipping)."""
    if sigma <= 0:
        return float(np.clip(mu, lo, hi))
    for _ in range(100):
        x = rng.normal(mu, sigma)
        if lo <= x <= hi:
            return float(x)
    return float(np.clip(rng.normal(mu, sigma), lo, hi))


class DDPGStrategy(Strategy):
    name = "ddpg"
    defaults: ClassVar[dict] = {
        "warmup": None,  # random episodes; None: a quarter of the episodes, as AMC's 100 of 400
        "noise_sigma": 0.5,  # initial sigma of the truncated-normal exploration noise (AMC: init_delta)
        "noise_decay": 0.99,  # per episode after warm-up (AMC: delta_decay)
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
        hidden = list(o["hidden"])
        agent = AMCDDPG(
            "MlpPolicy", env, actor_lr=o["actor_lr"], critic_lr=o["critic_lr"], buffer_size=o["buffer_size"],
            learning_starts=0, batch_size=o["batch_size"], tau=o["tau"], gamma=o["discount"],
            replay_buffer_class=MovingAverageReplayBuffer, replay_buffer_kwargs={"moving_alpha": o["moving_alpha"]},
            policy_kwargs={"net_arch": {"pi": hidden, "qf": hidden}}, seed=self.seed, device="cpu",
        )
        agent.set_logger(configure(None, []))
        rng = np.random.default_rng(self.seed)
        lo, hi = self.problem.min_keep, 1.0
        update_s, rewards, sigmas = [], [], []
        for episode in range(episodes):
            obs, _ = env.reset(seed=self.seed + episode)
            sigma = o["noise_sigma"] * o["noise_decay"] ** max(0, episode - warmup)
            steps, done, reward = [], False, 0.0
            while not done:
                if episode < warmup:
                    a = float(rng.uniform(lo, hi))
                else:
                    with single_thread():
                        mu = float(agent.predict(obs, deterministic=True)[0][0])
                    a = truncated_normal(rng, mu, sigma, lo, hi)
                next_obs, reward, done, _, info = env.step(np.array([a], dtype=np.float32))
                # store the action that took effect (after rounding and the budget clip): it made the reward
                steps.append((obs, next_obs, info["ratio"], done))
                obs = next_obs
            t = time.perf_counter()
            for s, s1, ratio, d in steps:  # AMC: the episode's final reward for every transition
                scaled = agent.policy.scale_action(np.array([[ratio]], dtype=np.float32))
                agent.replay_buffer.add(s[None], s1[None], scaled, np.array([reward]), np.array([d]), [{}])
            if episode >= warmup:
                with single_thread():
                    agent.train(gradient_steps=len(steps), batch_size=o["batch_size"])
            update_s.append(time.perf_counter() - t)
            ctx.rows[-1]["update_s"] = update_s[-1]
            ctx.rows[-1]["phase"] = "warmup" if episode < warmup else "explore"
            ctx.rows[-1]["sigma"] = sigma if episode >= warmup else None
            rewards.append(reward)
            sigmas.append(sigma)
        return {"warmup": warmup, "mean_update_s": float(np.mean(update_s)) if update_s else 0.0,
                "warmup_mean_reward": float(np.mean(rewards[:warmup])) if rewards else None,
                "last50_mean_reward": float(np.mean(rewards[-50:])) if rewards else None}
