"""Gymnasium environments; importing this package registers ``autoprune/ChannelPruning-v0``."""

from gymnasium.envs.registration import register, registry

from autoprune.envs.pruning_env import ChannelPruningEnv

ENV_ID = "autoprune/ChannelPruning-v0"

if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="autoprune.envs.pruning_env:ChannelPruningEnv")

__all__ = ["ENV_ID", "ChannelPruningEnv"]
