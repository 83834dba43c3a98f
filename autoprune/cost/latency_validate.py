"""Does a latency table predict what the device measures? Random policies, really pruned, timed end to end.

Policies span 20–100 % of the unpruned FLOPs and are deliberately non-uniform (each group gets its own keep ratio),
drawn with another seed than the table's own random calibration networks. Each pruned network is exported and
timed with the table's backend and settings in interleaved rounds (a fresh session each,
:func:`~autoprune.cost.measure.measure_interleaved`); the median of the odd rounds is the measurement, the median of
the even rounds an independent retest whose disagreement with it is the measurement's own noise, reported next to
the prediction error so a reader can tell how much of the error is the table's.

The table's own calibration networks are measured in the same rounds. Their timings today against those at build
time give the machine's drift since the build (a shared VM's speed can wander over minutes), and
re-fitting the calibration on today's timings of those same networks gives the error that is the table's per-layer
model's, with the drift removed.

Before those rounds the calibration networks are timed once more on their own (``anchor_rounds``) and the table is
re-anchored on them, as ``autoprune latency-table anchor`` does before a search: its error on the policies timed
afterwards is what a table re-anchored at the start of a search sees. Three errors are reported: the table as built,
re-anchored before the measurement, and re-fitted in the measurement's own rounds.

Here: the measurement and its figures; :func:`autoprune.latency_workflows.validate_table` builds the model, prunes
the policies and runs the protocol.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from autoprune.cost.latency_table import LatencyTable
from autoprune.cost.measure import Timing, measure_interleaved


def measure_and_retest(
    nets: list, table: LatencyTable, warmup: int, repeats: int, rounds: int
) -> list[tuple[Timing, float]]:
    """Per network: its measurement (median of the odd rounds' medians; p10/p90 of those rounds' runs) and the
    retest (median of the even rounds' medians), with the table's backend, threads and device."""
    with table.measuring():
        timings = measure_interleaved(
            nets, table.input_shape, table.backend, table.threads, warmup, repeats, max(2, rounds), table.device
        )
    out = []
    for t in timings:
        first, second = t.round_medians[0::2], t.round_medians[1::2]
        out.append(
            (Timing(float(np.median(first)), t.p10_us, t.p90_us, t.repeats // 2, first), float(np.median(second)))
        )
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if np.std(ra) == 0 or np.std(rb) == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def summarize(df: pd.DataFrame) -> dict:
    err = (df["predicted_us"] - df["measured_us"]) / df["measured_us"]
    noise = (df["retest_us"] - df["measured_us"]).abs() / df["measured_us"]
    worst = int(err.abs().idxmax())
    return {
        "policies": len(df),
        "mape": float(err.abs().mean()),
        "median_ape": float(err.abs().median()),
        "bias": float(err.mean()),
        "worst_error": float(err.iloc[worst]),
        "worst_policy": int(df["policy"].iloc[worst]),
        "spearman": _spearman(df["predicted_us"].to_numpy(), df["measured_us"].to_numpy()),
        # as latency-predictor work reports it (nn-Meter: within ±10 %; LitePred: within ±5 % and ±10 %)
        "within_5pct": float((err.abs() <= 0.05).mean()),
        "within_10pct": float((err.abs() <= 0.10).mean()),
        "retest_mape": float(noise.mean()),
        "retest_worst": float(noise.max()),
        "retest_within_5pct": float((noise <= 0.05).mean()),
        "retest_within_10pct": float((noise <= 0.10).mean()),
        "retest_spearman": _spearman(df["retest_us"].to_numpy(), df["measured_us"].to_numpy()),
        "spread_p90_p10": float(((df["p90_us"] - df["p10_us"]) / df["measured_us"]).median()),
        "measured_range_us": [float(df["measured_us"].min()), float(df["measured_us"].max())],
    }


def scatter_plot(df: pd.DataFrame, summary: dict, path: str | Path, title: str) -> Path:
    """Predicted vs measured (µs → ms), p10–p90 of the measurement as error bars, the ±5 % band shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meas, pred = df["measured_us"] / 1000, df["predicted_us"] / 1000
    lo, hi = 0.9 * min(meas.min(), pred.min()), 1.05 * max(meas.max(), pred.max())
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=120)
    xs = np.linspace(lo, hi, 50)
    ax.fill_between(xs, xs * 0.95, xs * 1.05, color="tab:green", alpha=0.15, label="±5 %")
    ax.plot(xs, xs, color="tab:green", lw=1)
    ax.errorbar(
        meas,
        pred,
        xerr=[(df["measured_us"] - df["p10_us"]) / 1000, (df["p90_us"] - df["measured_us"]) / 1000],
        fmt="o",
        ms=4,
        color="tab:blue",
        ecolor="tab:gray",
        elinewidth=0.8,
        alpha=0.85,
        label="policy (bars: measured p10–p90)",
    )
    ax.scatter(meas, df["retest_us"] / 1000, s=8, marker="x", color="tab:orange", label="re-measurement vs first")
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="measured latency (ms)", ylabel="predicted latency (ms)", title=title)
    ax.text(
        0.03,
        0.97,
        f"MAPE {summary['mape']:.1%}  worst {summary['worst_error']:+.1%}\n"
        f"Spearman {summary['spearman']:.3f}\nretest noise {summary['retest_mape']:.1%}",
        transform=ax.transAxes,
        va="top",
        fontsize=9,
        family="monospace",
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
