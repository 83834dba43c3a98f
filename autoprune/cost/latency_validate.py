"""Does a latency table predict what the device measures? Random policies, really pruned, timed end to end.

Policies span 20–100 % of the unpruned FLOPs and are deliberately non-uniform (each group gets its own keep ratio),
drawn with another seed than the table's own random calibration networks. Each pruned network is exported and
timed with the table's backend and settings in interleaved rounds (a fresh session each,
:func:`~autoprune.cost.measure.measure_interleaved`); the median of the odd rounds is the measurement, the median of
the even rounds an independent retest whose disagreement with it is the measurement's own noise, reported next to
the prediction error so a reader can tell how much of the error is the table's.

The table's own calibration networks are measured in the same rounds. Their timings today against those at build
time give the machine's drift since the build (this VM's speed wanders by 10-20 % over minutes), and
re-fitting the calibration on today's timings of those same networks gives the error that is the table's per-layer
model's, with the drift removed.

Before those rounds the calibration networks are timed once more on their own (``anchor_rounds``) and the table is
re-anchored on them, as ``autoprune latency-table anchor`` does before a search: its error on the policies timed
afterwards is what a table re-anchored at the start of a search sees. Three errors are reported: the table as built,
re-anchored before the measurement, and re-fitted in the measurement's own rounds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from autoprune.cost.calibration_set import calibration_networks, entry_name, random_policies
from autoprune.cost.flops import costs
from autoprune.cost.latency_table import LatencyTable, ProgressFn, calibrate, load_average, time_calibration
from autoprune.cost.measure import Timing, measure_interleaved
from autoprune.errors import UserError


def measure_and_retest(nets: list, table: LatencyTable, warmup: int, repeats: int, rounds: int
                       ) -> list[tuple[Timing, float]]:
    """Per network: its measurement (median of the odd rounds' medians; p10/p90 of those rounds' runs) and the
    retest (median of the even rounds' medians), with the table's backend, threads and device."""
    with table.measuring():
        timings = measure_interleaved(nets, table.input_shape, table.backend, table.threads, warmup, repeats,
                                      max(2, rounds), table.device)
    out = []
    for t in timings:
        first, second = t.round_medians[0::2], t.round_medians[1::2]
        out.append((Timing(float(np.median(first)), t.p10_us, t.p90_us, t.repeats // 2, first),
                    float(np.median(second))))
    return out


def validate_table(
    table: LatencyTable, model_name: str | None = None, *, weights: str | Path | None = None, samples: int = 50,
    seed: int = 0, warmup: int = 10, repeats: int = 50, rounds: int = 10, round_to: int | None = None,
    min_keep: float = 0.1, anchor_rounds: int = 2, on_progress: ProgressFn | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Predicted vs measured latency of ``samples`` random policies; returns the per-policy rows and a summary."""
    from autoprune.layers import analyze
    from autoprune.models import build_model
    from autoprune.prune import ChannelPruner

    model_name = model_name or table.model
    if model_name != table.model:
        raise UserError(f"the table is for {table.model}, not {model_name}: pass a table built for {model_name}")
    if samples < 3:
        raise UserError("--samples must be at least 3 to estimate an error and a rank correlation")
    shape = table.input_shape
    signature = table.check_speed()  # before anything else loads the machine
    model, _ = build_model(model_name, weights, use_default_weights=False)
    graph = analyze(model, shape, model_name)
    predict = table.predictor(graph)
    pruner = ChannelPruner(model, shape, graph=graph, model_name=model_name)
    step = table.block if round_to is None else max(int(round_to), 1)
    policies = [graph.channels.astype(np.int64)] + random_policies(graph, samples - 1, seed, round_to=step,
                                                                   min_keep=min_keep)
    full_flops = costs(graph, graph.channels)["flops"]
    calib = calibration_networks(graph, table.block)
    calib_kept = list(calib.values())
    nets = []
    for i, kept in enumerate(policies + calib_kept):
        net = pruner.apply(kept)
        if table.backend == "onnxruntime":
            from autoprune.onnx_graph import onnx_bytes

            net = onnx_bytes(net, shape, dynamic_batch=False)
        nets.append(net)
        if on_progress:
            on_progress(i + 1, len(nets), f"pruned {i + 1}/{len(nets)}; then {rounds} measuring rounds")
    if on_progress:
        on_progress(len(nets), len(nets), f"re-anchoring on the calibration networks ({anchor_rounds} rounds)")
    calib_nets = dict(zip(calib, nets[len(policies):], strict=True))  # pruned and exported once, timed twice
    anchored = table.reanchored(graph, time_calibration(table, calib_nets, rounds=anchor_rounds, repeats=repeats,
                                                        warmup=warmup)) if anchor_rounds > 0 else None
    predict_anchored = anchored.predictor(graph) if anchored is not None else None
    measured = measure_and_retest(nets, table, warmup, repeats, rounds)
    # today's calibration: the same uniform networks the build timed, re-timed in these rounds
    raw = [float(predict.layer_us(k).sum()) for k in calib_kept]
    today = [t.median_us for t, _ in measured[len(policies):]]
    fixed, scale = calibrate(raw, today)
    at_build = {entry_name(c): c["median_us"] for c in table.meta.get("calibration", [])}
    drift = [m / at_build[name] for name, m in zip(calib, today, strict=True) if name in at_build]
    rows = []
    for i, (kept, (first, retest)) in enumerate(zip(policies, measured, strict=False)):
        rows.append({
            "policy": i, "flops_share": costs(graph, kept)["flops"] / full_flops, "predicted_us": predict(kept),
            "reanchored_us": predict_anchored(kept) if predict_anchored is not None else float("nan"),
            "recalibrated_us": fixed + scale * float(predict.layer_us(kept).sum()),
            "measured_us": first.median_us, "p10_us": first.p10_us, "p90_us": first.p90_us,
            "retest_us": retest, "kept": " ".join(str(int(k)) for k in kept),
        })
    df = pd.DataFrame(rows)
    summary = summarize(df)
    err = (df["recalibrated_us"] - df["measured_us"]) / df["measured_us"]
    err_anchored = (df["reanchored_us"] - df["measured_us"]) / df["measured_us"]
    if anchored is not None:
        summary.update({
            "mape_reanchored": float(err_anchored.abs().mean()), "bias_reanchored": float(err_anchored.mean()),
            "spearman_reanchored": summary["spearman"],  # an affine re-fit keeps the ranking
            "speed_at_anchor": anchored.meta["anchor"]["speed_vs_build"],
        })
    summary.update({
        "speed_vs_build": float(np.median(drift)) if drift else float("nan"),
        "mape_recalibrated": float(err.abs().mean()), "bias_recalibrated": float(err.mean()),
        "within_5pct_recalibrated": float((err.abs() <= 0.05).mean()),
        "within_10pct_recalibrated": float((err.abs() <= 0.10).mean()),
        "worst_recalibrated": float(err.iloc[int(err.abs().idxmax())]),
        "calibration_today": {"fixed_us": fixed, "scale": scale, "measured_us": today},
        "load_average": load_average(),
        "speed_signature": signature.to_dict() if signature is not None else None,
        "threads": table.threads, "affinity": table.affinity, "device": table.device_name,
    })
    return df, summary


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
        "policies": len(df), "mape": float(err.abs().mean()), "median_ape": float(err.abs().median()),
        "bias": float(err.mean()), "worst_error": float(err.iloc[worst]), "worst_policy": int(df["policy"].iloc[worst]),
        "spearman": _spearman(df["predicted_us"].to_numpy(), df["measured_us"].to_numpy()),
        # as latency-predictor work reports it (nn-Meter: within ±10 %; LitePred: within ±5 % and ±10 %)
        "within_5pct": float((err.abs() <= 0.05).mean()), "within_10pct": float((err.abs() <= 0.10).mean()),
        "retest_mape": float(noise.mean()), "retest_worst": float(noise.max()),
        "retest_within_5pct": float((noise <= 0.05).mean()), "retest_within_10pct": float((noise <= 0.10).mean()),
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
    ax.errorbar(meas, pred, xerr=[(df["measured_us"] - df["p10_us"]) / 1000, (df["p90_us"] - df["measured_us"]) / 1000],
                fmt="o", ms=4, color="tab:blue", ecolor="tab:gray", elinewidth=0.8, alpha=0.85,
                label="policy (bars: measured p10–p90)")
    ax.scatter(meas, df["retest_us"] / 1000, s=8, marker="x", color="tab:orange", label="re-measurement vs first")
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="measured latency (ms)", ylabel="predicted latency (ms)",
           title=title)
    ax.text(0.03, 0.97, f"MAPE {summary['mape']:.1%}  worst {summary['worst_error']:+.1%}\n"
                        f"Spearman {summary['spearman']:.3f}\nretest noise {summary['retest_mape']:.1%}",
            transform=ax.transAxes, va="top", fontsize=9, family="monospace")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def budget_check(table: LatencyTable, budget: str, *, weights: str | Path | None = None, repeats: int = 100,
                 warmup: int = 20, rounds: int = 3, round_to: int | None = None, min_keep: float = 0.1,
                 on_measure: Callable[[str], None] | None = None) -> dict:
    """Choose a policy for ``budget`` by uniform search over the table's prediction, prune it for real and time it
    (median of ``repeats`` runs, in ``rounds`` interleaved rounds with the unpruned model; the median of the round
    medians): does the policy meet the budget on the device, without wasting it?"""
    from autoprune.budget import parse_budget
    from autoprune.cost.model import CostModel
    from autoprune.layers import analyze
    from autoprune.models import build_model
    from autoprune.problem import Problem
    from autoprune.prune import ChannelPruner
    from autoprune.search.baselines import uniform_kept

    shape = table.input_shape
    model, _ = build_model(table.model, weights, use_default_weights=False)
    graph = analyze(model, shape, table.model)
    predict = table.predictor(graph)
    problem = Problem(graph, CostModel(graph, latency=predict), parse_budget(budget), min_keep=min_keep,
                      round_to=table.block if round_to is None else round_to)
    kept, ratio = uniform_kept(problem)
    limit = problem.limits["latency"]
    net = ChannelPruner(model, shape, graph=graph, model_name=table.model).apply(kept)
    with table.measuring():
        unpruned, timing = measure_interleaved([model, net], shape, table.backend, table.threads, warmup, repeats,
                                               rounds, table.device)
    return {
        "budget": budget, "limit_us": limit, "keep_ratio": ratio, "predicted_us": predict(kept),
        "measured_us": timing.median_us, "p10_us": timing.p10_us, "p90_us": timing.p90_us,
        "repeats": repeats, "rounds": list(timing.round_medians), "unpruned_us": unpruned.median_us,
        "unpruned_predicted_us": predict(graph.channels), "measured_over_limit": timing.median_us / limit,
        "meets": bool(timing.median_us <= limit), "within_10pct": bool(0.9 * limit <= timing.median_us <= limit),
        "kept": [int(k) for k in kept], "flops_share": costs(graph, kept)["flops"] / costs(graph, graph.channels)[
            "flops"]
    }
