"""Which pruned networks a latency table is calibrated on, and random policies to validate it with.

A table's per-layer probes are summed and mapped to end-to-end latency by an affine fit on whole pruned networks
timed on the device. Fitted on uniform prunes alone, the map is right for uniform prunes and biased for the
irregular policies a search actually proposes (their narrow layers cost less in the served graph than their isolated
probes say). So the calibration set is both: the
uniform prunes (:data:`CALIBRATION_RATIOS`) and :data:`CALIBRATION_RANDOM` random non-uniform policies drawn with
their own seed, which :func:`random_policies` spreads over the FLOPs range the way ``validate`` draws its own
(different) policies.

Networks are named (``keep-0.80``, ``random-03``): the name is how a build, an imported measurement and a later
``validate`` refer to the same network.
"""

from __future__ import annotations

import numpy as np

from autoprune.cost.flops import costs
from autoprune.layers import LayerGraph, round_channels

CALIBRATION_RATIOS = (1.0, 0.8, 0.6, 0.45, 0.3)
CALIBRATION_RANDOM = 8
CALIBRATION_SEED = 7919  # not validate's default seed 0: a table is never validated on what it was fitted to


def uniform_kept(graph: LayerGraph, ratio: float, step: int) -> np.ndarray:
    """Keep ``ratio`` of every group, rounded to whole blocks of ``step`` channels (the serving-friendly widths)."""
    return np.array([round_channels(g.channels, ratio, g.step(step)) for g in graph.groups], dtype=np.int64)


def random_policies(
    graph: LayerGraph,
    samples: int,
    seed: int = 0,
    lo: float = 0.2,
    hi: float = 1.0,
    round_to: int = 1,
    min_keep: float = 0.1,
) -> list[np.ndarray]:
    """``samples`` kept-channel vectors whose FLOPs are spread evenly over [lo, hi] of the unpruned model.

    Each policy draws a random "pruning appetite" per group and scales it until the FLOPs target is met, so the
    shapes are irregular (some groups untouched, others cut to the floor) but the FLOPs range is covered.
    """
    rng = np.random.default_rng(seed)
    channels = graph.channels
    full = costs(graph, channels)["flops"]
    steps = [g.step(round_to) for g in graph.groups]  # round_to counts channels; a group may count heads
    floor = np.array([round_channels(int(c), min_keep, s) for c, s in zip(channels, steps, strict=True)])

    def kept_at(alpha: float, appetite: np.ndarray) -> np.ndarray:
        ratios = np.clip(1.0 - alpha * appetite, min_keep, 1.0)
        return np.maximum(
            floor, [round_channels(int(c), float(r), s) for c, r, s in zip(channels, ratios, steps, strict=True)]
        )

    targets = np.linspace(lo, hi, samples) if samples > 1 else np.array([hi])
    rng.shuffle(targets)
    out = []
    for target in targets:
        appetite = rng.uniform(0.0, 1.0, len(channels)) ** rng.uniform(0.3, 3.0)
        a, b = 0.0, 1.0
        while costs(graph, kept_at(b, appetite))["flops"] / full > target and b < 1e4:
            b *= 2
        for _ in range(30):
            mid = (a + b) / 2
            if costs(graph, kept_at(mid, appetite))["flops"] / full > target:
                a = mid
            else:
                b = mid
        out.append(kept_at(b, appetite).astype(np.int64))
    return out


def calibration_networks(graph: LayerGraph, block: int, random: int = CALIBRATION_RANDOM) -> dict[str, np.ndarray]:
    """The calibration set of a table with channel block ``block``: name -> kept channels per group, the unpruned
    network first (``keep-1.00``)."""
    nets = {f"keep-{r:.2f}": uniform_kept(graph, r, block) for r in CALIBRATION_RATIOS}
    for i, kept in enumerate(random_policies(graph, random, CALIBRATION_SEED, round_to=max(block, 1))):
        nets[f"random-{i:02d}"] = kept
    return nets


def uniform_ratio(name: str) -> float | None:
    """The keep ratio of a uniform calibration network (``keep-0.80`` -> 0.8); None for a random one."""
    return float(name[len("keep-") :]) if name.startswith("keep-") else None


def entry_name(entry: dict) -> str:
    """A sidecar calibration entry's network name (tables built before the names existed carry only the ratio)."""
    return entry.get("name") or f"keep-{float(entry['keep_ratio']):.2f}"
