"""A named model's latency table on this device, end to end: build it, re-anchor it, validate it, check a budget.

Each step builds the model (by name, or the one a table names), analyses and prunes it, and hands the networks to
:mod:`autoprune.cost`, whose parts take analysed graphs and built networks: the probe plan and the calibration set
(:mod:`~autoprune.cost.probes`, :mod:`~autoprune.cost.calibration_set`), the timings
(:mod:`~autoprune.cost.measure`), the table (:mod:`~autoprune.cost.latency_table`) and the validation's figures
(:mod:`~autoprune.cost.latency_validate`, whose docstring describes the protocol :func:`validate_table` runs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch.nn as nn

from autoprune.budget import Budget, within
from autoprune.cost.calibration_set import calibration_networks, entry_name, random_policies
from autoprune.cost.device_identity import identify
from autoprune.cost.flops import costs
from autoprune.cost.latency_table import LatencyTable, ProgressFn, calibrate
from autoprune.cost.latency_validate import measure_and_retest, summarize
from autoprune.cost.measure import BACKENDS, Timing, combine_rounds, measure_interleaved, pinned
from autoprune.cost.model import CostModel
from autoprune.cost.probes import plan_layers
from autoprune.cost.speed_signature import time_signature
from autoprune.cost.table_build import (
    assemble_table,
    detect_blocking,
    load_average,
    measure_spec,
    plan_rows,
    time_calibration,
)
from autoprune.errors import UserError
from autoprune.layers import analyze
from autoprune.models import build_model
from autoprune.onnx_graph import onnx_bytes
from autoprune.problem import Problem
from autoprune.prune import ChannelPruner


def build_table(
    model_name: str,
    input_shape: Sequence[int] | None = None,
    *,
    backend: str = "onnxruntime",
    threads: int = 2,
    device: str = "cpu",
    weights: str | Path | None = None,
    grid: int = 6,
    warmup: int = 3,
    repeats: int = 15,
    e2e_repeats: int = 50,
    rounds: int = 3,
    passes: int = 2,
    blocking: tuple[int, int] | None = None,
    affinity: bool = False,
    on_progress: ProgressFn | None = None,
) -> LatencyTable:
    """Measure every conv/linear layer of ``model_name`` on a channel grid, calibrate end to end, return the table.

    Every probe is timed in ``passes`` passes over the whole grid and keeps its fastest pass's median (a
    disturbance only ever adds time, and it rarely hits the same probe twice minutes apart); the calibration
    networks are timed in ``rounds`` rounds placed before, between and after the probe passes, so the calibration
    sees the machine in the same states as the probes (this VM's speed drifts by 10-20 % over minutes).
    ``affinity`` pins the measuring threads to cores (:func:`~autoprune.cost.measure.pinned`) for every timing,
    and the table records it, so what is measured against it later is pinned alike.
    """
    with pinned(threads, affinity):
        table = _build_table(
            model_name,
            input_shape,
            backend,
            threads,
            device,
            weights,
            grid,
            warmup,
            repeats,
            e2e_repeats,
            rounds,
            passes,
            blocking,
            on_progress,
        )
    table.meta["affinity"] = affinity
    return table


def _build_table(
    model_name: str,
    input_shape: Sequence[int] | None,
    backend: str,
    threads: int,
    device: str,
    weights: str | Path | None,
    grid: int,
    warmup: int,
    repeats: int,
    e2e_repeats: int,
    rounds: int,
    passes: int,
    blocking: tuple[int, int] | None,
    on_progress: ProgressFn | None,
) -> LatencyTable:
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if threads < 1 or grid < 2 or repeats < 1 or rounds < 1 or passes < 1:
        raise UserError("--threads, --repeats, --rounds and --passes must be at least 1 and --grid at least 2")
    t_start = time.perf_counter()
    model, spec = build_model(model_name, weights, use_default_weights=False)
    shape = tuple(input_shape or spec.input_shape)
    graph = analyze(model, shape, model_name)
    block, align = detect_blocking(backend, threads, device) if blocking is None else blocking
    plans = plan_layers(graph, block, align, grid)
    rows, specs = plan_rows(plans)
    calib = calibration_networks(graph, block)
    total = passes * len(specs) + rounds * len(calib)
    timings: dict[str, Timing] = {}
    # largest first: the costly probes run while the machine is in its steadiest state, and progress is honest
    order = sorted(specs.values(), key=lambda s: -s.c_in * s.c_out * s.kernel[0] * s.kernel[1] * s.h_in * s.w_in)
    pruner = ChannelPruner(model, shape, graph=graph, model_name=model_name)
    nets = [pruner.apply(kept) for kept in calib.values()]
    if backend == "onnxruntime":
        nets = [onnx_bytes(n, shape, dynamic_batch=False) for n in nets]
    calib_rounds: list[list[Timing]] = []
    if on_progress:  # the clock of the progress bar's ETA starts here, not after the first calibration round
        on_progress(0, total, "reference probes (speed signature)")
    signature = time_signature(backend, threads, device)  # what search / validate / anchor re-time to compare
    done = 0
    for step in range(max(rounds, passes)):
        if step < rounds:
            calib_rounds.append(measure_interleaved(nets, shape, backend, threads, 10, e2e_repeats, 1, device))
            done += len(nets)
            if on_progress:
                on_progress(done, total, f"end-to-end calibration, round {step + 1}/{rounds}")
        if step >= passes:
            continue
        for s in order:
            t = measure_spec(s, backend, threads, device, warmup, repeats)
            if s.probe_id not in timings or t.median_us < timings[s.probe_id].median_us:
                timings[s.probe_id] = t
            done += 1
            if on_progress:
                on_progress(done, total, f"layer probes, pass {step + 1}/{passes}")
    fp = identify(backend, threads, device)
    meta = {
        "grid": grid,
        "warmup": warmup,
        "repeats": repeats,
        "passes": passes,
        "rounds": rounds,
        "probes": len(specs),
        "speed_signature": signature,
    }
    networks = {name: combine_rounds([rd[i] for rd in calib_rounds]) for i, name in enumerate(calib)}
    table = assemble_table(graph, rows, timings, networks, fp, block, align, backend, threads, device, meta)
    table.meta["build_seconds"] = round(time.perf_counter() - t_start, 1)
    table.meta["load_average"] = load_average()  # a loaded machine makes every timing an upper bound
    return table


def reanchor_table(
    table: LatencyTable,
    *,
    weights: str | Path | None = None,
    rounds: int = 2,
    repeats: int = 30,
    model: nn.Module | None = None,
) -> LatencyTable:
    """``table`` re-fitted on its calibration networks timed on this machine now (:meth:`LatencyTable.reanchored`);
    refused for a table of another device. ``model`` is the table's model already built (a search's), else it is
    built by the table's name with ``weights``."""
    table.check_device(refuse=True)
    if model is None:
        model, _ = build_model(table.model, weights, use_default_weights=False)
    graph = analyze(model, table.input_shape, table.model)
    pruner = ChannelPruner(model, table.input_shape, graph=graph, model_name=table.model)
    nets = {name: pruner.apply(kept) for name, kept in calibration_networks(graph, table.block).items()}
    with table.measuring():
        signature = time_signature(table.backend, table.threads, table.device)  # the level the anchor fixes
        anchored = table.reanchored(graph, time_calibration(table, nets, rounds=rounds, repeats=repeats))
    anchored.meta["anchor"]["speed_signature"] = signature
    return anchored


def validate_table(
    table: LatencyTable,
    model_name: str | None = None,
    *,
    weights: str | Path | None = None,
    samples: int = 50,
    seed: int = 0,
    warmup: int = 10,
    repeats: int = 50,
    rounds: int = 10,
    round_to: int | None = None,
    min_keep: float = 0.1,
    anchor_rounds: int = 2,
    on_progress: ProgressFn | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Predicted vs measured latency of ``samples`` random policies; returns the per-policy rows and a summary."""
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
    policies = [graph.channels.astype(np.int64)] + random_policies(
        graph, samples - 1, seed, round_to=step, min_keep=min_keep
    )
    calib = calibration_networks(graph, table.block)
    calib_kept = list(calib.values())
    nets = _exported(policies + calib_kept, pruner, table, shape, on_progress, rounds)
    if on_progress:
        on_progress(len(nets), len(nets), f"re-anchoring on the calibration networks ({anchor_rounds} rounds)")
    calib_nets = dict(zip(calib, nets[len(policies) :], strict=True))  # pruned and exported once, timed twice
    anchored = None
    if anchor_rounds > 0:
        timed = time_calibration(table, calib_nets, rounds=anchor_rounds, repeats=repeats, warmup=warmup)
        anchored = table.reanchored(graph, timed)
    measured = measure_and_retest(nets, table, warmup, repeats, rounds)
    # today's calibration: the same uniform networks the build timed, re-timed in these rounds
    today = [t.median_us for t, _ in measured[len(policies) :]]
    fixed, scale = calibrate([float(predict.layer_us(k).sum()) for k in calib_kept], today)
    at_build = {entry_name(c): c["median_us"] for c in table.meta.get("calibration", [])}
    drift = [m / at_build[name] for name, m in zip(calib, today, strict=True) if name in at_build]
    df = _validation_rows(graph, policies, measured, predict, anchored, fixed, scale)
    summary = summarize(df)
    err = (df["recalibrated_us"] - df["measured_us"]) / df["measured_us"]
    if anchored is not None:
        err_anchored = (df["reanchored_us"] - df["measured_us"]) / df["measured_us"]
        summary.update(
            mape_reanchored=float(err_anchored.abs().mean()),
            bias_reanchored=float(err_anchored.mean()),
            spearman_reanchored=summary["spearman"],  # an affine re-fit keeps the ranking
            speed_at_anchor=anchored.meta["anchor"]["speed_vs_build"],
        )
    summary.update(
        speed_vs_build=float(np.median(drift)) if drift else float("nan"),
        mape_recalibrated=float(err.abs().mean()),
        bias_recalibrated=float(err.mean()),
        within_5pct_recalibrated=float((err.abs() <= 0.05).mean()),
        within_10pct_recalibrated=float((err.abs() <= 0.10).mean()),
        worst_recalibrated=float(err.iloc[int(err.abs().idxmax())]),
        calibration_today={"fixed_us": fixed, "scale": scale, "measured_us": today},
        load_average=load_average(),
        speed_signature=signature.to_dict() if signature is not None else None,
        threads=table.threads,
        affinity=table.affinity,
        device=table.device_name,
    )
    return df, summary


def _exported(policies: list, pruner: ChannelPruner, table: LatencyTable, shape, on_progress, rounds: int) -> list:
    """Each policy pruned for real (and exported to ONNX for onnxruntime) once, before any timing starts."""
    nets = []
    for i, kept in enumerate(policies):
        net = pruner.apply(kept)
        nets.append(onnx_bytes(net, shape, dynamic_batch=False) if table.backend == "onnxruntime" else net)
        if on_progress:
            on_progress(i + 1, len(policies), f"pruned {i + 1}/{len(policies)}; then {rounds} measuring rounds")
    return nets


def _validation_rows(graph, policies: list, measured: list, predict, anchored, fixed: float, scale: float):
    """One row per policy: its FLOPs share, the table's prediction (as built, re-anchored, re-fitted to today's
    calibration) and its measured time with the retest."""
    full_flops = costs(graph, graph.channels)["flops"]
    predict_anchored = anchored.predictor(graph) if anchored is not None else None
    rows = []
    for i, (kept, (first, retest)) in enumerate(zip(policies, measured, strict=False)):
        rows.append(
            {
                "policy": i,
                "flops_share": costs(graph, kept)["flops"] / full_flops,
                "predicted_us": predict(kept),
                "reanchored_us": predict_anchored(kept) if predict_anchored is not None else float("nan"),
                "recalibrated_us": fixed + scale * float(predict.layer_us(kept).sum()),
                "measured_us": first.median_us,
                "p10_us": first.p10_us,
                "p90_us": first.p90_us,
                "retest_us": retest,
                "kept": " ".join(str(int(k)) for k in kept),
            }
        )
    return pd.DataFrame(rows)


def budget_check(
    table: LatencyTable,
    budget: Budget,
    *,
    weights: str | Path | None = None,
    repeats: int = 100,
    warmup: int = 20,
    rounds: int = 3,
    round_to: int | None = None,
    min_keep: float = 0.1,
    on_measure: Callable[[str], None] | None = None,
) -> dict:
    """Choose a policy for ``budget`` by uniform search over the table's prediction, prune it for real and time it
    (median of ``repeats`` runs, in ``rounds`` interleaved rounds with the unpruned model; the median of the round
    medians): does the policy meet the budget on the device, without wasting it?"""
    # the search package loads every strategy's libraries (stable-baselines3, Optuna): only for --budget
    from autoprune.search.baselines import uniform_kept

    shape = table.input_shape
    model, _ = build_model(table.model, weights, use_default_weights=False)
    graph = analyze(model, shape, table.model)
    predict = table.predictor(graph)
    problem = Problem(
        graph,
        CostModel(graph, latency=predict),
        budget,
        min_keep=min_keep,
        round_to=table.block if round_to is None else round_to,
    )
    kept, ratio = uniform_kept(problem)
    limit = problem.limits["latency"]
    net = ChannelPruner(model, shape, graph=graph, model_name=table.model).apply(kept)
    with table.measuring():
        unpruned, timing = measure_interleaved(
            [model, net], shape, table.backend, table.threads, warmup, repeats, rounds, table.device
        )
    return {
        "budget": budget.text,
        "limit_us": limit,
        "keep_ratio": ratio,
        "predicted_us": predict(kept),
        "measured_us": timing.median_us,
        "p10_us": timing.p10_us,
        "p90_us": timing.p90_us,
        "repeats": repeats,
        "rounds": list(timing.round_medians),
        "unpruned_us": unpruned.median_us,
        "unpruned_predicted_us": predict(graph.channels),
        "measured_over_limit": timing.median_us / limit,
        "meets": within(timing.median_us, limit),
        "within_10pct": within(timing.median_us, limit) and timing.median_us >= 0.9 * limit,
        "kept": [int(k) for k in kept],
        "flops_share": costs(graph, kept)["flops"] / costs(graph, graph.channels)["flops"],
    }
