"""Building a latency table: the channel blocks this device's kernels use, the probes timed at each layer's grid
of channel counts, and the assembly of those timings (with the end-to-end calibration networks) into a
:class:`~autoprune.cost.latency_table.LatencyTable`."""

from __future__ import annotations

import os

import pandas as pd
import torch.nn as nn

from autoprune.cost.calibration_set import calibration_networks, uniform_ratio
from autoprune.cost.device_identity import (
    device_id,
)
from autoprune.cost.latency_table import COLUMNS, FORMAT, LatencyTable, calibrate
from autoprune.cost.measure import (
    Timing,
    measure_interleaved,
    measure_model,
    measure_onnx_kernels,
)
from autoprune.cost.probes import LayerPlan, ProbeSpec
from autoprune.errors import UserError
from autoprune.layers import LayerGraph
from autoprune.onnx_graph import optimised_graph


def detect_blocking(backend: str, threads: int, device: str) -> tuple[int, int]:
    """``(block, align)`` of onnxruntime's NCHWc kernels on this CPU, found by asking the graph optimiser which
    convs it converts and how wide it pads their weights; ``(1, 1)`` when there is no such layout."""
    if backend != "onnxruntime" or device != "cpu":
        return 1, 1

    def blocked(c_in: int) -> tuple[bool, int]:
        spec = ProbeSpec("conv", c_in, 1, (3, 3), (1, 1), (1, 1), (1, 1), 1, 8, 8, 1)
        model = optimised_graph(spec.onnx_bytes(), threads)
        is_blocked = any(n.domain == "com.microsoft.nchwc" and n.op_type == "Conv" for n in model.graph.node)
        out_dim = max((int(t.dims[0]) for t in model.graph.initializer if len(t.dims) == 4), default=1)
        return is_blocked, out_dim

    ok, block = blocked(64)
    if not ok or block <= 1:
        return 1, 1
    for align in (1, 2, 4, 8, 16, 32, 64):
        if align >= block or blocked(64 + align)[0]:  # fewer than a block is always accepted: probe above it
            return block, min(align, block)
    return block, block


def measure_spec(spec: ProbeSpec, backend: str, threads: int, device: str, warmup: int, repeats: int) -> Timing:
    """Time one probe the way the serving stack runs it: onnxruntime's kernel time of the fused operator (the
    layout reorders a stand-alone probe needs are excluded, a served network has none between blocked convs);
    torch: wall time of the eager module."""
    if backend == "onnxruntime":
        return measure_onnx_kernels(spec.onnx_bytes(), spec.input_shape, threads, warmup, repeats, device)
    return measure_model(spec.torch_module(), spec.input_shape, "torch", threads, warmup, repeats, device)


def plan_rows(plans: list[LayerPlan]) -> tuple[pd.DataFrame, dict[str, ProbeSpec]]:
    """Table rows (without timings) for every layer's grid point, and the distinct probes they need."""
    rows, specs = [], {}
    for p in plans:
        for regime, ci, co in p.points:
            s = p.spec(ci, co)
            specs.setdefault(s.probe_id, s)
            rows.append(
                {
                    "group": p.group,
                    "in_group": p.in_group,
                    "layer": p.layer,
                    "op": p.op,
                    "regime": regime,
                    "c_in": ci,
                    "c_out": co,
                    "kernel": f"{s.kernel[0]}x{s.kernel[1]}",
                    "stride": f"{s.stride[0]}x{s.stride[1]}",
                    "padding": f"{s.padding[0]}x{s.padding[1]}",
                    "groups": s.groups,
                    "h_in": s.h_in,
                    "w_in": s.w_in,
                    "batch": s.batch,
                    "probe": s.probe_id,
                }
            )
    return pd.DataFrame(rows), specs


def table_from_measurements(rows: pd.DataFrame, timings: dict[str, Timing]) -> pd.DataFrame:
    missing = [p for p in rows["probe"].unique() if p not in timings]
    if missing:
        raise UserError(f"{len(missing)} probe(s) were not measured (e.g. {missing[0]}): rerun measure_probes.py")
    df = rows.copy()
    for field in ("median_us", "p10_us", "p90_us", "repeats"):
        df[field] = [getattr(timings[p], field) for p in df["probe"]]
    return df[COLUMNS]


def assemble_table(
    graph: LayerGraph,
    rows: pd.DataFrame,
    timings: dict[str, Timing],
    networks: dict[str, Timing],
    fp: dict,
    block: int,
    align: int,
    backend: str,
    threads: int,
    device: str,
    extra: dict | None = None,
) -> LatencyTable:
    """Measured probes + end-to-end timings of the calibration networks (by name, see
    :func:`~autoprune.cost.calibration_set.calibration_networks`) -> a calibrated table (build and import share
    this, so a table measured on another device is made exactly as a local one)."""
    shape = tuple(graph.input_shape)
    df = table_from_measurements(rows, timings)
    fp = {**fp, "batch": int(shape[0]), "input_shape": list(shape)}
    meta = {
        "format": FORMAT,
        "model": graph.model_name,
        "input_shape": list(shape),
        "batch": int(shape[0]),
        "structure": graph.fingerprint,
        "backend": backend,
        "threads": threads,
        "device": device,
        "device_id": device_id(fp),
        "fingerprint": fp,
        "channel_block": block,
        "channel_align": align,
        "fixed_us": 0.0,
        "scale": 1.0,
        **(extra or {}),
    }
    raw = LatencyTable(df, meta).predictor(graph)
    kept_of = calibration_networks(graph, block)
    unknown = sorted(set(networks) - set(kept_of))
    if unknown:
        raise UserError(
            f"calibration network {unknown[0]!r} is not one this version of autoprune makes: "
            "regenerate the probes (`autoprune latency-table probes`) and measure them again"
        )
    calib = []
    for name, kept in kept_of.items():
        if name in networks:
            calib.append(
                {
                    "name": name,
                    "keep_ratio": uniform_ratio(name),
                    "kept": [int(k) for k in kept],
                    "sum_layers_us": float(raw(kept)),
                    **networks[name].to_dict(),
                }
            )
    if not calib:
        raise UserError("no end-to-end calibration timing was measured: rerun the measurement")
    fixed, scale = calibrate([c["sum_layers_us"] for c in calib], [c["median_us"] for c in calib])
    full = [c for c in calib if c["name"] == "keep-1.00"]
    meta.update({"fixed_us": fixed, "scale": scale, "calibration": calib, "unpruned_us": (full or calib)[0]})
    return LatencyTable(df, meta)


def time_calibration(
    table: LatencyTable, nets: dict[str, nn.Module | bytes], *, rounds: int = 2, repeats: int = 30, warmup: int = 10
) -> dict[str, Timing]:
    """End-to-end timings of ``table``'s calibration networks (name -> pruned module, or its ONNX for onnxruntime)
    on this machine now, in ``rounds`` interleaved rounds with the table's backend and settings."""
    with table.measuring():
        timings = measure_interleaved(
            list(nets.values()), table.input_shape, table.backend, table.threads, warmup, repeats, rounds, table.device
        )
    return dict(zip(nets, timings, strict=True))


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None
