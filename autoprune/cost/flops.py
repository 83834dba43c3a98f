"""Analytic FLOPs (multiply-accumulates, counted as Torch-Pruning counts them) and parameters of a policy.

The search prices thousands of policies, so nothing is built: the cost is a few small matrix-vector products over
the coefficients :func:`autoprune.layers.analyze` collected (see the cost model in that module's docstring).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from autoprune.layers import CostTerms, LayerGraph


def layer_costs(terms: CostTerms, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer (FLOPs, params) when each group keeps ``kept`` channels."""
    c_in = terms.in_w @ kept + terms.in_c
    c_out = terms.out_w @ kept + terms.out_c
    flops = terms.flops_a * c_in * c_out + terms.flops_b * c_out
    params = terms.params_a * c_in * c_out + terms.params_b * c_out
    return flops, params


def costs(graph: LayerGraph, kept: Sequence[int] | np.ndarray) -> dict[str, float]:
    """``{"flops": ..., "params": ...}`` of ``graph``'s model with ``kept[i]`` channels in group ``i``."""
    k = np.asarray(kept, dtype=np.float64)
    flops, params = layer_costs(graph.terms, k)
    return {
        "flops": float(flops.sum() + graph.terms.flops_const),
        "params": float(params.sum() + graph.terms.params_const),
    }

