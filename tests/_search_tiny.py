"""A tiny pruning problem for the environment and search tests: ResNet-20 on 1x12x12 synthetic images."""

from __future__ import annotations

import functools

import numpy as np
import torch

from autoprune.budget import parse_budget
from autoprune.cost.model import CostModel
from autoprune.data import load_data
from autoprune.layers import analyze
from autoprune.models import build_model
from autoprune.problem import Problem
from autoprune.prune import ChannelPruner
from autoprune.reward import Evaluator
from autoprune.training import TrainConfig, train

SHAPE = (1, 1, 12, 12)


@functools.lru_cache(maxsize=1)
def tiny_model():
    """A briefly trained tiny ResNet-20 (so accuracies differ between policies), its graph, pruner and data."""
    torch.manual_seed(0)
    model, _ = build_model("resnet20", in_channels=1, num_classes=10)
    data = load_data("synthetic:192", SHAPE[1:], held_out=48)
    train(model, data.train, TrainConfig(max_steps=8, lr=0.05, batch_size=32, augment=False))
    graph = analyze(model, SHAPE, "resnet20")
    return model, graph, ChannelPruner(model, SHAPE, graph=graph), data


def linear_latency(graph):
    """A monotone latency predictor (microseconds, linear in kept channels): a test double of a latency table."""
    weights = np.array([g.flops for g in graph.groups]) / max(g.flops for g in graph.groups)
    return lambda kept: 50.0 + float(np.dot(weights, kept))


def tiny_problem(budget: str = "flops=50%", latency: bool = False, **kwargs) -> Problem:
    _, graph, pruner, _ = tiny_model()
    cost = CostModel(graph, latency=linear_latency(graph) if latency else None)
    return Problem(graph, cost, parse_budget(budget), **{"importance": list(pruner.scores), **kwargs})


def tiny_evaluator(**kwargs) -> Evaluator:
    _, _, pruner, data = tiny_model()
    kwargs = {"held_out": 48, "calib_batches": 1, "calib_batch_size": 32, **kwargs}
    return Evaluator(pruner, data, **kwargs)
