"""Device latency look-up tables: measure each prunable layer once on the device, predict any policy by lookup.

NetAdapt (Yang et al., 2018) builds the table from isolated layers and sums it; the sum of isolated layers misses
what the serving graph does between them (layout reorders, fused adds, pooling, session overhead), so this table is
*calibrated* and *validated*: at build time a set of pruned networks (uniform prunes and random non-uniform
policies, :mod:`autoprune.cost.calibration_set`) is materialised and timed end to end, and an affine map
``latency = fixed_us + scale * sum(layers)`` is fitted to them. ``fixed_us`` is the part of the
network no policy changes; ``scale`` absorbs the per-layer overhead an isolated probe has and the network has not.
``autoprune latency-table validate`` then checks the prediction on random (non-uniform) policies.

This module takes analysed graphs and built networks; :mod:`autoprune.latency_workflows` builds and prunes the
model to measure (:func:`~autoprune.latency_workflows.build_table`).

Files: ``<table>.csv`` (one row per measured layer configuration, schema in ``latency_tables/README.md``) and the
JSON sidecar ``<table>.json`` (device fingerprint, calibration, build settings).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch.nn as nn

from autoprune import atomic
from autoprune.cost.calibration_set import calibration_networks, entry_name
from autoprune.cost.device_identity import (
    Difference,
    compare,
    device_id,
    device_name,
    differences_text,
    identify,
)
from autoprune.cost.measure import (
    Timing,
    pinned,
)
from autoprune.cost.probes import OPS, REGIMES, effective_channels
from autoprune.cost.speed_signature import SignatureCheck, compare_signature, time_signature
from autoprune.errors import UserError
from autoprune.layers import LayerGraph
from autoprune.vit import HeadAttention

FORMAT = "autoprune.latency_table/1"
COLUMNS = [
    "group",
    "in_group",
    "layer",
    "op",
    "regime",
    "c_in",
    "c_out",
    "kernel",
    "stride",
    "padding",
    "groups",
    "h_in",
    "w_in",
    "batch",
    "median_us",
    "p10_us",
    "p90_us",
    "repeats",
    "probe",
]
NUMERIC = ["c_in", "c_out", "groups", "h_in", "w_in", "batch", "median_us", "p10_us", "p90_us", "repeats"]
ProgressFn = Callable[[int, int, str], None]


# ---------------------------------------------------------------------------------------------------- device


def shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


def table_file_name(model: str, input_shape: Sequence[int]) -> str:
    name = re.sub(r"[^A-Za-z0-9_.]+", "-", model).strip("-") or "model"  # keep torchvision's underscores
    return f"{name}-{shape_text(input_shape)}.csv"


def default_table_path(
    model: str, input_shape: Sequence[int], ident: dict, root: str | Path = "latency_tables"
) -> Path:
    """``<root>/<device-id>/<model>-<NxCxHxW>.csv``: the device's directory derives from its identity."""
    return Path(root) / device_id(ident) / table_file_name(model, input_shape)


# ---------------------------------------------------------------------------------------------------- table


class LatencyTable:
    """A measured table: ``df`` (the CSV rows) and ``meta`` (the sidecar). Use :meth:`predictor` in a search."""

    def __init__(self, df: pd.DataFrame, meta: dict, path: Path | None = None) -> None:
        self.df, self.meta, self.path = df, meta, path
        self.block, self.align = int(meta.get("channel_block", 1)), int(meta.get("channel_align", 1))
        self._layers = _layer_arrays(df, self.block, self.align)

    # -- what the search command reads
    @property
    def model(self) -> str:
        return str(self.meta["model"])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.meta["input_shape"])

    @property
    def backend(self) -> str:
        return str(self.meta["backend"])

    @property
    def threads(self) -> int:
        return int(self.meta["threads"])

    @property
    def device(self) -> str:
        return str(self.meta.get("device", "cpu"))

    @property
    def affinity(self) -> bool:
        """Whether the table was measured with pinned threads (and so is served and re-measured that way)."""
        return bool(self.meta.get("affinity", False))

    def measuring(self) -> contextlib.AbstractContextManager:
        """The block in which to measure against this table: its thread pinning, when it was built with one."""
        return pinned(self.threads, self.affinity)

    @property
    def fingerprint(self) -> dict:
        return dict(self.meta.get("fingerprint", {}))

    @property
    def fixed_us(self) -> float:
        return float(self.meta.get("fixed_us", 0.0))

    @property
    def scale(self) -> float:
        return float(self.meta.get("scale", 1.0))

    @property
    def layers(self) -> list[str]:
        return list(self._layers["names"])

    # -- files
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix != ".csv":
            raise UserError(f"latency table path {str(path)!r} must end in .csv (the sidecar is written beside it)")
        text = self.df[COLUMNS].to_csv(index=False, float_format="%.3f")
        atomic.write_text(path, text)
        atomic.write_text(path.with_suffix(".json"), json.dumps(self.meta, indent=2) + "\n")
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        """Read a table; anything missing or malformed is one :class:`UserError` naming the file and the fix."""
        path = Path(path).expanduser()
        if path.suffix == ".json":
            path = path.with_suffix(".csv")
        fix = "rebuild it with `autoprune latency-table build`"
        if not path.is_file():
            raise UserError(f"latency table {str(path)!r} does not exist: pass the .csv of a table ({fix})")
        sidecar = path.with_suffix(".json")
        if not sidecar.is_file():
            raise UserError(
                f"latency table {path} has no sidecar {sidecar.name} (device fingerprint, calibration): "
                f"copy it next to the CSV or {fix}"
            )
        try:
            meta = json.loads(sidecar.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"sidecar {sidecar} is not valid JSON ({e.msg if hasattr(e, 'msg') else e}): {fix}") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise UserError(f"sidecar {sidecar} is not an autoprune latency table ({FORMAT}): {fix}")
        for key in (
            "model",
            "input_shape",
            "backend",
            "threads",
            "fixed_us",
            "scale",
            "channel_block",
            "channel_align",
        ):
            if key not in meta:
                raise UserError(f"sidecar {sidecar} lacks {key!r}: {fix}")
        try:
            df = pd.read_csv(
                path,
                dtype={
                    "kernel": str,
                    "stride": str,
                    "padding": str,
                    "group": str,
                    "in_group": str,
                    "layer": str,
                    "probe": str,
                },
            )
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
            raise UserError(f"latency table {path} is not a readable CSV ({str(e).splitlines()[0]}): {fix}") from e
        missing = [c for c in COLUMNS if c not in df.columns]
        if missing:
            raise UserError(f"latency table {path} lacks column(s) {', '.join(missing)}: {fix}")
        df["group"] = df["group"].fillna("")
        df["in_group"] = df["in_group"].fillna("")
        for c in NUMERIC:
            df[c] = pd.to_numeric(df[c], errors="coerce")
        bad = df[NUMERIC + ["layer", "op", "regime"]].isna().any(axis=1)
        if bad.any() or df.empty:
            line = int(np.flatnonzero(bad.to_numpy())[0]) + 2 if bad.any() else 1
            raise UserError(
                f"latency table {path} is truncated or corrupt (line {line} has missing or non-numeric fields): {fix}"
            )
        if (df["median_us"] <= 0).any() or not df["op"].isin(OPS).all() or not df["regime"].isin(REGIMES).all():
            raise UserError(f"latency table {path} has invalid rows (non-positive latency or unknown op/regime): {fix}")
        try:
            return cls(df, meta, path)
        except ValueError as e:
            raise UserError(f"latency table {path} is incomplete ({e}): {fix}") from e

    # -- device check
    @property
    def device_name(self) -> str:
        """The device the table was measured on, in a few words (for "predicted for <device>")."""
        return device_name(self.fingerprint)

    def identity_differences(self, here: dict | None = None) -> list[Difference]:
        """How this machine (``here``, default: identified now) differs from the table's device, notes included."""
        return compare(self.fingerprint, here or identify(self.backend, self.threads, self.device))

    def device_differences(self, here: dict | None = None) -> list[Difference]:
        """The differences that make this machine another device than the table's (empty: the table is this
        machine's, and its predictions may be checked by measuring here)."""
        return [d for d in self.identity_differences(here) if not d.note]

    def check_device(self, force: bool = False, refuse: bool = False) -> list[Difference]:
        """Compare the table's device with this machine's; returns the differences that make it another device.

        ``refuse=True`` (``validate``, ``anchor``: both measure here against the table) raises :class:`UserError`
        unless ``force``; otherwise (``search`` with an explicit ``--table``) a warning names each difference in
        plain words and says that latency is then *predicted* for the table's device, not measured. Notes (a
        backend patch release) are one line.
        """
        here = identify(self.backend, self.threads, self.device)
        diffs = self.identity_differences(here)
        device, notes = [d for d in diffs if not d.note], [d for d in diffs if d.note]
        where = self.path or "latency table"
        from rich.console import Console

        err = Console(stderr=True, highlight=False, soft_wrap=True)
        for n in notes:
            err.print(f"note: {where}: {n.text}")
        if not device:
            return device
        text = differences_text(device)
        if refuse and not force:
            raise UserError(
                f"{where} was measured on another device ({text}): build a table here with "
                "`autoprune latency-table build`, or pass --force"
            )
        if force:
            err.print(f"note: using {where} from another device (--force): {text}")
        else:
            err.print(
                f"[bold red]WARNING: {where} was measured on another device: {self.device_name}; this machine "
                f"is {device_name(here)}.[/]\n[red]{text[0].upper() + text[1:]}.[/]\n[red]Latency is judged by "
                "the table's PREDICTION for its device, not measured here. Build a table on this machine "
                "(`autoprune latency-table build`, or leave out --table) to have the budget measured.[/]"
            )
        return device

    def check_speed(self) -> SignatureCheck | None:
        """Re-time the reference probes now and compare with the signature of the table's level (the anchor's
        when the table was re-anchored, else the build's); None for a table that stores no signature."""
        stored = self.meta.get("anchor", {}).get("speed_signature") or self.meta.get("speed_signature")
        if not stored:
            return None
        with self.measuring():
            return compare_signature(stored, time_signature(self.backend, self.threads, self.device))

    # -- prediction
    def predictor(self, graph: LayerGraph) -> Callable[[np.ndarray], float]:
        """``fn(kept) -> microseconds`` for ``graph`` (the analysed model the table was built for).

        Everything that does not depend on the policy (which terms row each layer is, its grid, its regime
        curves) is resolved here, so a call is a few vectorised numpy operations.
        """
        L = self._layers
        hi_in, hi_out = L["hi_in"], L["hi_out"]
        index = {n: j for j, n in reversed(list(enumerate(graph.terms.layer_names)))}
        t = graph.terms
        widths = []  # per table layer: (in_w, in_c, out_w, out_c), its channel counts as affine maps of the policy
        for k, (name, op) in enumerate(zip(L["names"], L["ops"], strict=True)):
            # an attention core's width is the one its query layer's rows keep
            j = index.get(f"{name}.q" if op == "attention" else name)
            if j is None:
                raise UserError(
                    f"latency table {self.path} has layer {name!r} that {graph.model_name} lacks: build "
                    f"a table for this model (`autoprune latency-table build --model {graph.model_name}`)"
                )
            w = (t.out_w[j], t.out_c[j]) * 2 if op == "attention" else (t.in_w[j], t.in_c[j], t.out_w[j], t.out_c[j])
            full_in = round(float(w[0] @ graph.channels + w[1]))
            full_out = round(float(w[2] @ graph.channels + w[3]))
            if (full_in, full_out) != (hi_in[k], hi_out[k]):
                raise UserError(
                    f"latency table {self.path} has {name} at {hi_in[k]}->{hi_out[k]} channels but the "
                    f"model has {full_in}->{full_out}: build a table for this model"
                )
            widths.append(w)
        if tuple(graph.input_shape) != self.input_shape:
            raise UserError(
                f"latency table {self.path} was measured at input {shape_text(self.input_shape)}, the "
                f"model is analysed at {shape_text(graph.input_shape)}: use --input-shape "
                f"{shape_text(self.input_shape)} or build a table for that shape"
            )
        modules = dict(graph.model.named_modules()) if graph.model is not None else {}
        timed = {n for n in t.layer_names if isinstance(modules.get(n), (nn.Conv2d, nn.Linear))}
        timed |= {n for n, m in modules.items() if type(m) is HeadAttention}
        uncovered = sorted(timed - set(L["names"]))
        if uncovered:
            raise UserError(
                f"latency table {self.path} has no measurements for {len(uncovered)} layer(s) of "
                f"{graph.model_name} (e.g. {uncovered[0]}): build a table for this model"
            )
        in_w, in_c, out_w, out_c = (np.stack([w[i] for w in widths]) for i in range(4))
        n = len(widths)
        lut = _lookups(L, max(self.block, 1), max(self.align, 1))
        off_in, off_out, cell, go = lut["off_in"], lut["off_out"], lut["cell"], lut["go"]
        reg, i0s, i1s, tis = lut["r"], lut["i0"], lut["i1"], lut["ti"]
        o0s, o1s, tos, vals = lut["o0"], lut["o1"], lut["to"], lut["vals"]
        hi_in_a, hi_out_a = np.asarray(hi_in, dtype=np.int64), np.asarray(hi_out, dtype=np.int64)
        lidx2 = np.arange(n) * 2
        scale, fixed = self.scale, self.fixed_us

        def layer_us(kept: np.ndarray) -> np.ndarray:
            k = np.asarray(kept, dtype=np.float64)
            ci = np.minimum(np.rint(in_w @ k + in_c).astype(np.int64), hi_in_a)
            co = np.minimum(np.rint(out_w @ k + out_c).astype(np.int64), hi_out_a)
            a = off_in + ci
            lr = lidx2 + reg[a]
            b = off_out[lr] + co
            ti, to, o0, o1 = tis[a], tos[b], o0s[b], o1s[b]
            base0, base1 = lr * cell + i0s[a] * go, lr * cell + i1s[a] * go
            return (1 - ti) * ((1 - to) * vals[base0 + o0] + to * vals[base0 + o1]) + ti * (
                (1 - to) * vals[base1 + o0] + to * vals[base1 + o1]
            )

        def predict(kept: np.ndarray) -> float:
            return float(fixed + scale * layer_us(kept).sum())

        predict.layer_us = layer_us  # type: ignore[attr-defined]  # the uncalibrated per-layer terms
        return predict

    def reanchored(self, graph: LayerGraph, networks: dict[str, Timing]) -> LatencyTable:
        """This table with its calibration re-fitted on ``networks`` (calibration-set name -> an end-to-end timing
        taken now): the probe grid, the expensive part, is kept; the map from it to end-to-end latency is today's.

        For a machine whose state has changed since the build (the probes' relative costs hold, the level moved):
        re-timing the 13 calibration networks is cheap next to the probe grid. A level that moves within minutes (a
        busy shared VM) is not followed: the anchor is the moment's level (``latency_tables/README.md``,
        "Re-anchoring")."""
        layer_us = self.predictor(graph).layer_us
        kept_of = calibration_networks(graph, self.block)
        names = [n for n in kept_of if n in networks]
        if not names:
            raise UserError("no calibration network was timed: nothing to re-anchor the table on")
        fixed, scale = calibrate(
            [float(layer_us(kept_of[n]).sum()) for n in names], [networks[n].median_us for n in names]
        )
        at_build = {entry_name(c): c["median_us"] for c in self.meta.get("calibration", [])}
        speed = [networks[n].median_us / at_build[n] for n in names if n in at_build]
        anchor = {
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "networks": len(names),
            "speed_vs_build": float(np.median(speed)) if speed else None,
            "fixed_us_at_build": self.meta.get("anchor", {}).get("fixed_us_at_build", self.fixed_us),
            "scale_at_build": self.meta.get("anchor", {}).get("scale_at_build", self.scale),
            "measured_us": {n: networks[n].median_us for n in names},
        }
        return LatencyTable(self.df, {**self.meta, "fixed_us": fixed, "scale": scale, "anchor": anchor}, self.path)

    def predict(self, graph: LayerGraph, kept: Sequence[int] | np.ndarray) -> float:
        """Predicted end-to-end latency (µs) of ``graph``'s model keeping ``kept[i]`` channels of group ``i``."""
        return self.predictor(graph)(np.asarray(kept))


def _lookups(L: dict, block: int, align: int) -> dict:
    """Per layer and every integer channel count up to full width: the regime, grid bracket and interpolation
    weight, precomputed so that pricing a policy is a handful of gathers (the search calls it thousands of times)."""
    n = len(L["names"])
    is_dw, unblocked, has = L["is_dw"], L["unblocked"], L["has"]
    r_l, i0_l, i1_l, ti_l, off_in = [], [], [], [], []
    o0_l, o1_l, to_l, off_out = [], [], [], []
    pos_in = pos_out = 0
    for k in range(n):
        ci = np.arange(int(L["hi_in"][k]) + 1, dtype=np.float64)
        aligned = bool(unblocked[k]) | (block <= 1) | (ci % align == 0) | ((not is_dw[k]) & (ci < block))
        r = np.where(aligned, 0 if has[k, 0] else 1, 1 if has[k, 1] else 0)
        blk = (r == 0) & (not unblocked[k])
        ci_eff = effective_channels(ci, block, blk & (bool(is_dw[k]) | (ci >= block)), True)
        rows = k * 2 + r
        i0, i1, ti = _bracket(L["ax_in_f"][rows], L["n_in_f"][rows], ci_eff)
        r_l.append(r)
        i0_l.append(i0)
        i1_l.append(i1)
        ti_l.append(ti)
        off_in.append(pos_in)
        pos_in += len(ci)
        for regime in (0, 1):
            co = np.arange(int(L["hi_out"][k]) + 1, dtype=np.float64)
            pad = regime == 0 and not unblocked[k] and not is_dw[k]
            co_eff = effective_channels(co, block, np.full(len(co), pad), True)
            row = np.full(len(co), k * 2 + regime)
            o0, o1, to = _bracket(L["ax_out_f"][row], L["n_out_f"][row], co_eff)
            o0_l.append(o0)
            o1_l.append(o1)
            to_l.append(to)
            off_out.append(pos_out)
            pos_out += len(co)
    vals = L["vals"]
    return {
        "r": np.concatenate(r_l),
        "i0": np.concatenate(i0_l),
        "i1": np.concatenate(i1_l),
        "ti": np.concatenate(ti_l),
        "off_in": np.asarray(off_in),
        "o0": np.concatenate(o0_l),
        "o1": np.concatenate(o1_l),
        "to": np.concatenate(to_l),
        "off_out": np.asarray(off_out),
        "vals": vals.reshape(-1),
        "go": vals.shape[-1],
        "cell": vals.shape[-2] * vals.shape[-1],
    }


def _bracket(axes: np.ndarray, counts: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: grid indices around ``x`` and the interpolation weight (clamped to the grid's ends)."""
    rows = np.arange(len(x))
    i0 = np.minimum((axes <= x[:, None]).sum(1) - 1, counts - 2).clip(0)
    i1 = np.minimum(i0 + 1, counts - 1)
    x0, x1 = axes[rows, i0], axes[rows, i1]
    span = x1 - x0
    t = ((x - x0) / np.maximum(span, 1e-9)).clip(0.0, 1.0) * (span > 0)
    return i0, i1, t


def _layer_arrays(df: pd.DataFrame, block: int, align: int) -> dict:
    """The table as padded arrays: per layer and regime, the c_in / c_out grid and the latency on it, on the
    channel widths the kernels really compute (blocked widths padded to whole blocks)."""
    names = list(dict.fromkeys(df["layer"]))
    grids = []
    for name in names:
        rows = df[df["layer"] == name]
        op = rows["op"].iloc[0]
        per_regime = {}
        for r in REGIMES:
            rr = rows[rows["regime"] == r]
            if rr.empty:
                continue
            blk = r == "aligned" and op in ("conv", "depthwise")
            ci = effective_channels(rr["c_in"], block, blk, True)
            if op == "conv":
                ci = np.where(rr["c_in"].to_numpy() >= block, ci, rr["c_in"].to_numpy())
            co = effective_channels(rr["c_out"], block, blk and op == "conv", True)
            rr = rr.assign(c_in=ci, c_out=0 if op in ("depthwise", "attention") else co)  # one axis: c_out = c_in
            piv = rr.pivot_table(index="c_in", columns="c_out", values="median_us", aggfunc="median")
            if piv.isna().any().any():
                raise ValueError(f"layer {name} ({r}) misses grid points")
            per_regime[r] = (piv.index.to_numpy(float), piv.columns.to_numpy(float), piv.to_numpy(float))
        grids.append((op, per_regime, int(rows["c_in"].max()), int(rows["c_out"].max())))
    n_l = len(names)
    gi = max(len(g[0]) for _, pr, _, _ in grids for g in pr.values())
    go = max(len(g[1]) for _, pr, _, _ in grids for g in pr.values())
    ax_in = np.zeros((n_l, 2, gi))
    ax_out = np.zeros((n_l, 2, go))
    vals = np.zeros((n_l, 2, gi, go))
    n_in = np.ones((n_l, 2), dtype=np.int64)
    n_out = np.ones((n_l, 2), dtype=np.int64)
    has = np.zeros((n_l, 2), dtype=bool)
    for k, (_, per_regime, _, _) in enumerate(grids):
        for r, regime in enumerate(REGIMES):
            if regime not in per_regime:
                continue
            xi, xo, v = per_regime[regime]
            has[k, r] = True
            n_in[k, r], n_out[k, r] = len(xi), len(xo)
            ax_in[k, r] = np.pad(xi, (0, gi - len(xi)), mode="edge")
            ax_out[k, r] = np.pad(xo, (0, go - len(xo)), mode="edge")
            vals[k, r] = np.pad(v, ((0, gi - len(xi)), (0, go - len(xo))), mode="edge")
    ops = [g[0] for g in grids]
    return {
        "names": names,
        "ops": ops,
        "is_dw": np.array([o == "depthwise" for o in ops]),
        "unblocked": np.array([o in ("linear", "attention") for o in ops]),  # no channel blocks
        "has": has,
        "ax_in": ax_in,
        "n_in": n_in,
        "ax_out": ax_out,
        "n_out": n_out,
        "vals": vals,
        "hi_in": np.array([g[2] for g in grids]),
        "hi_out": np.array([g[3] for g in grids]),
        "ax_in_f": ax_in.reshape(n_l * 2, -1),
        "n_in_f": n_in.reshape(-1),
        "ax_out_f": ax_out.reshape(n_l * 2, -1),
        "n_out_f": n_out.reshape(-1),
    }


# ---------------------------------------------------------------------------------------------------- build


def calibrate(raw_sums: Sequence[float], measured: Sequence[float]) -> tuple[float, float]:
    """``(fixed_us, scale)`` of ``measured ≈ fixed + scale * raw`` (least squares; a pure offset when the points
    cannot fix a slope)."""
    x, y = np.asarray(raw_sums, float), np.asarray(measured, float)
    if len(x) >= 2 and np.ptp(x) > 1e-6 * max(x.max(), 1):
        scale, fixed = np.polyfit(x, y, 1)
        if scale > 0:
            return float(fixed), float(scale)
    return float(np.mean(y - x)), 1.0


def describe(table: LatencyTable) -> dict:
    """Summary figures for ``show``."""
    m = table.meta
    return {
        "model": table.model,
        "input shape": shape_text(table.input_shape),
        "backend": table.backend,
        "threads": table.threads,
        "device": table.device,
        "layers": len(table.layers),
        "rows": len(table.df),
        "probes": m.get("probes", table.df["probe"].nunique()),
        "channel block/align": f"{m.get('channel_block')}/{m.get('channel_align')}",
        "unpruned (measured)": _us(m.get("unpruned_us", {}).get("median_us")),
        "fixed part": _us(table.fixed_us),
        "scale": f"{table.scale:.3f}",
        "build time": f"{m['build_seconds']} s" if m.get("build_seconds") else "-",
        "load average at build (1/5/15 min)": m.get("load_average", "-"),
        "re-anchored": (
            f"{m['anchor']['date']}: machine {m['anchor']['speed_vs_build']:.3f}x the build's times"
            if m.get("anchor", {}).get("speed_vs_build")
            else "no"
        ),
    }


def _us(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v / 1000:.3f} ms" if abs(v) >= 1000 else f"{v:.1f} µs"
