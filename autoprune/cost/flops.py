"""Analytic FLOPs (multiply-accumulates, counted as Torch-Pruning counts them) and parameters of a policy.

The search prices thousands of policies, so nothing is built: the cost is a few small matrix-vector products over
the coefficients :func:`autoprune.layers.analyze` collected (see the cost model in that module's docstring).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from autoprune.layers import LayerGraph


def costs(graph: LayerGraph, kept: Sequence[int] | np.ndarray) -> dict[str, float]:
    """``{"flops": ..., "params": ...}`` of ``graph``'s model with ``kept[i]`` channels in group ``i``."""
    return graph.terms.totals(np.asarray(kept, dtype=np.float64))
