"""The accuracy-vs-cost Pareto front of a search's evaluations."""

from __future__ import annotations

import numpy as np
import pandas as pd


def pareto_front(history: pd.DataFrame, cost: str = "flops", score: str = "reward") -> pd.DataFrame:
    """Rows not dominated by any other (lower cost and higher score is better)."""
    if history.empty or score not in history or history[score].isna().all():
        return history.iloc[0:0]
    h = history.dropna(subset=[score]).sort_values([cost, score], ascending=[True, False])
    best, keep = -np.inf, []
    for idx, s in zip(h.index, h[score], strict=True):
        if s > best:
            keep.append(idx)
            best = s
    return h.loc[keep]
