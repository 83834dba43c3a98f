"""One object that prices a policy in every metric a budget can name."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from autoprune.cost.flops import costs as flops_and_params
from autoprune.layers import LayerGraph

LatencyFn = Callable[[np.ndarray], float]  # kept channels per group -> microseconds


class CostModel:
    """``cost(kept) -> {"flops", "params"[, "latency"]}``; latency needs a predictor (a bound latency table)."""

    def __init__(self, graph: LayerGraph, latency: LatencyFn | None = None) -> None:
        self.graph, self.latency = graph, latency
        self.baseline = self(graph.channels)

    @property
    def metrics(self) -> tuple[str, ...]:
        return ("flops", "params", "latency") if self.latency is not None else ("flops", "params")

    def __call__(self, kept: Sequence[int] | np.ndarray) -> dict[str, float]:
        k = np.asarray(kept, dtype=np.float64)
        c = flops_and_params(self.graph, k)
        if self.latency is not None:
            c["latency"] = float(self.latency(k))
        return c
