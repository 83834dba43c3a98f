"""AMC's channel-pruning environment (He et al., 2018), generalised to any budget autoprune can price.

One episode builds one policy: step ``i`` decides the keep ratio of prunable group ``i``, in forward order. The
observation is AMC's layer embedding, the action a keep ratio in ``[min_keep, 1]``. Before a step takes effect the
action is clipped so that, even if every later group were pruned to its floor, every cost the budget names (FLOPs,
params, latency through a predictor) could still meet its limit — AMC's rule, computed with the real (non-separable)
cost model by :meth:`autoprune.problem.Problem.max_feasible`. Every episode therefore ends feasible and no reward is
spent on a policy that breaks the budget. The reward arrives at the last step; intermediate rewards are 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from autoprune.problem import Problem

KIND_CODE = {"conv": 0.0, "depthwise": 0.5, "heads": 0.75, "linear": 1.0}
FEATURES = (
    "index",
    "kind",
    "c_in",
    "c_out",
    "kernel",
    "stride",
    "in_hw",
    "flops",
    "params",
    "reduced",
    "rest",
    "previous_action",
)

RewardFn = Callable[..., Any]  # (kept, **extra) -> float, or an object with a float ``reward`` attribute


class ChannelPruningEnv(gym.Env):
    """``reset()`` starts a policy at full width; ``step([ratio])`` fixes the next group's kept channels.

    ``reward_fn(kept)`` scores a finished policy (an :class:`autoprune.reward.Reward`, which caches evaluated
    policies by kept tuple, or any callable returning a float). ``info`` at the last step holds ``kept``, its
    ``costs`` and the reward function's full result. ``reset(options={"extra": {...}})`` passes those fields to the
    episode's evaluation, ``reward_fn(kept, **extra)``: a search's ``SearchContext.evaluate`` records them in the
    episode's history row (e.g. the exploration phase and noise).
    """

    metadata = {"render_modes": []}

    def __init__(self, problem: Problem, reward_fn: RewardFn) -> None:
        super().__init__()
        self.problem, self.reward_fn = problem, reward_fn
        self.n = len(problem.channels)
        if self.n == 0:
            raise ValueError("the model has no prunable group")
        self.observation_space = spaces.Box(0.0, 1.0, (len(FEATURES),), dtype=np.float32)
        self.action_space = spaces.Box(np.float32(problem.min_keep), np.float32(1.0), (1,), dtype=np.float32)
        # "reduced so far" and "rest" are measured in the budget's first metric (AMC uses FLOPs)
        self.metric = problem.budget.metrics[0]
        self._static = self._static_features()
        self.i = 0
        self.kept = problem.channels.copy()
        self.prev_action = 1.0
        self.extra: dict[str, Any] = {}  # passed with this episode's evaluation
        self.worst_reward: float | None = None  # what a policy with a NaN reward (non-finite outputs) is worth

    def _static_features(self) -> np.ndarray:
        """Per-group features that do not change during an episode, min-max normalised per column (as AMC)."""
        rows = []
        for g in self.problem.graph.groups:
            rows.append(
                [
                    g.index,
                    KIND_CODE.get(g.kind, 0.0),
                    g.c_in,
                    g.channels,
                    float(np.prod(g.kernel)),
                    float(np.prod(g.stride)),
                    float(np.prod(g.in_hw)) if g.in_hw else 1.0,
                    g.flops,
                    g.params,
                ]
            )
        a = np.asarray(rows, dtype=np.float64)
        lo, hi = a.min(0), a.max(0)
        span = np.where(hi > lo, hi - lo, 1.0)
        out = (a - lo) / span
        out[:, 1] = a[:, 1]  # the kind code is already in [0, 1]
        out[:, 0] = a[:, 0] / max(self.n - 1, 1)
        return out

    def _obs(self, terminal: bool = False) -> np.ndarray:
        """The embedding of group ``i`` (the last group's, with the finished policy, when ``terminal``)."""
        p, m = self.problem, self.metric
        base = p.cost.baseline[m]
        now = self.kept.copy()
        if not terminal:
            now[self.i :] = p.channels[self.i :]
        at_floor = now.copy()
        at_floor[self.i + 1 :] = p.floor[self.i + 1 :]
        full_cost = p.cost(now)[m]
        reduced = (base - full_cost) / base  # saved by the decisions so far
        rest = (full_cost - p.cost(at_floor)[m]) / base  # still removable by later groups
        dyn = np.array([reduced, rest, self.prev_action])
        return np.clip(np.concatenate([self._static[self.i], dyn]), 0.0, 1.0).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.i = 0
        self.kept = self.problem.channels.copy()
        self.prev_action = 1.0
        self.extra = dict((options or {}).get("extra", {}))
        return self._obs(), {}

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self.i >= self.n:
            raise RuntimeError("the episode is over: call reset()")
        wanted = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], self.problem.min_keep, 1.0))
        k = self.problem.clip_step(self.i, self.kept, wanted)
        self.kept[self.i] = k
        ratio = k / int(self.problem.channels[self.i])
        info: dict[str, Any] = {"group": self.i, "wanted": wanted, "ratio": ratio, "kept_channels": k}
        self.prev_action = ratio
        self.i += 1
        if self.i < self.n:
            return self._obs(), 0.0, False, False, info
        kept = self.kept.copy()
        result = self.reward_fn(kept, **self.extra)
        reward = float(getattr(result, "reward", result))
        if np.isfinite(reward):
            self.worst_reward = reward if self.worst_reward is None else min(self.worst_reward, reward)
        else:  # the agent learns from a number: the worst reward seen so far (the history keeps the NaN)
            reward = self.worst_reward if self.worst_reward is not None else 0.0
        info.update(kept=kept, costs=self.problem.cost(kept), result=result)
        # the terminal observation is never acted on; the last group's embedding with the final policy stands in
        self.i = self.n - 1
        obs = self._obs(terminal=True)
        self.i = self.n
        return obs, reward, True, False, info
