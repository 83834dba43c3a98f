"""Probes for another device: a model's probes and calibration networks as ONNX files, with a stand-alone timing
script (``scripts/measure_probes.py``: onnxruntime and numpy only), and what that device measured read back as a
calibrated table, made exactly as a table built here (:func:`autoprune.cost.table_build.assemble_table`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from autoprune import atomic
from autoprune.cost import device_identity
from autoprune.cost.calibration_set import calibration_networks, uniform_ratio
from autoprune.cost.latency_table import LatencyTable, shape_text
from autoprune.cost.measure import Timing
from autoprune.cost.probes import REFERENCE_PROBES, plan_layers
from autoprune.cost.table_build import assemble_table, plan_rows
from autoprune.errors import UserError
from autoprune.layers import analyze
from autoprune.models import build_model
from autoprune.onnx_graph import onnx_bytes
from autoprune.prune import ChannelPruner

PROBES_FORMAT = "autoprune.probes/1"


def measure_script() -> Path:
    """The canonical stand-alone timing script (``scripts/measure_probes.py`` of the source tree)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "measure_probes.py"
    if not path.is_file():
        raise UserError(f"{path} is missing: `probes` needs autoprune's source tree (scripts/measure_probes.py)")
    return path


SIGNATURE_DIR = "signature"  # the speed signature's reference probes, timed on the device like the layer probes


def export_probes(
    model_name: str,
    input_shape: tuple[int, ...] | None,
    out: str | Path,
    *,
    threads: int = 2,
    grid: int = 6,
    block: int = 16,
    align: int = 4,
    weights: str | Path | None = None,
    warmup: int = 3,
    repeats: int = 15,
    e2e_repeats: int = 50,
    passes: int = 2,
    rounds: int = 3,
) -> dict[str, int]:
    """Write every probe as ONNX, the pruned calibration networks, the plan and ``measure_probes.py``
    into ``out``, so that a device with only onnxruntime and numpy can produce a table's measurements."""
    if block < 1 or align < 1 or grid < 2:
        raise UserError("--block and --align must be at least 1 and --grid at least 2")
    out = Path(out)
    model, spec = build_model(model_name, weights, use_default_weights=False)
    shape = tuple(input_shape or spec.input_shape)
    graph = analyze(model, shape, model_name)
    rows, specs = plan_rows(plan_layers(graph, block, align, grid))
    listing = _write_probes(out, specs) + _write_networks(out, model, graph, shape, block)
    atomic.write_text(out / "probes.csv", pd.DataFrame(listing).to_csv(index=False))
    atomic.write_text(out / "plan.csv", rows.to_csv(index=False))
    meta = {
        "format": PROBES_FORMAT,
        "model": model_name,
        "input_shape": list(shape),
        "structure": graph.fingerprint,
        "channel_block": block,
        "channel_align": align,
        "grid": grid,
        "threads": threads,
        "warmup": warmup,
        "repeats": repeats,
        "e2e_warmup": 10,
        "e2e_repeats": e2e_repeats,
        "passes": passes,
        "rounds": rounds,
    }
    atomic.write_text(out / "probes.json", json.dumps(meta, indent=2) + "\n")
    shutil.copyfile(measure_script(), out / "measure_probes.py")
    # the device's identity is read there by the same code as here (it imports only the standard library)
    shutil.copyfile(device_identity.__file__, out / "device_identity.py")
    return {"probes": len(specs), "networks": sum(row["kind"] == "network" for row in listing)}


def _write_probes(out: Path, specs: dict) -> list[dict]:
    """Every layer probe and the speed signature's reference probes as ONNX files; their rows of probes.csv."""
    listing = []
    for folder, kind, items in (
        ("probes", "probe", specs.items()),
        (SIGNATURE_DIR, "signature", ((s.probe_id, s) for s in REFERENCE_PROBES)),
    ):
        (out / folder).mkdir(parents=True, exist_ok=True)
        for pid, s in items:
            atomic.write_with(out / folder / f"{pid}.onnx", lambda f, s=s: f.write(s.onnx_bytes()))
            listing.append(
                {
                    "file": f"{folder}/{pid}.onnx",
                    "kind": kind,
                    "keep_ratio": "",
                    "input_shape": shape_text(s.input_shape),
                }
            )
    return listing


def _write_networks(out: Path, model, graph, shape: tuple[int, ...], block: int) -> list[dict]:
    """The calibration networks (the model pruned uniformly) as ONNX files; their rows of probes.csv."""
    (out / "networks").mkdir(parents=True, exist_ok=True)
    pruner = ChannelPruner(model, shape, graph=graph, model_name=graph.model_name)
    listing = []
    for net_name, kept in calibration_networks(graph, block).items():
        data = onnx_bytes(pruner.apply(kept), shape, dynamic_batch=False)
        name = f"networks/{net_name}.onnx"
        atomic.write_with(out / name, lambda f, d=data: f.write(d))
        ratio = uniform_ratio(net_name)
        listing.append(
            {
                "file": name,
                "kind": "network",
                "keep_ratio": "" if ratio is None else f"{ratio:.2f}",
                "input_shape": shape_text(shape),
            }
        )
    return listing


def import_probes(probe_dir: str | Path, weights: str | Path | None = None) -> LatencyTable:
    """Read what ``measure_probes.py`` measured in ``probe_dir`` into a calibrated :class:`LatencyTable`."""
    d = Path(probe_dir)
    need = {
        "probes.json": "run `autoprune latency-table probes` to create it",
        "plan.csv": "run `autoprune latency-table probes` to create it",
        "measured.csv": f"run `python {d / 'measure_probes.py'} {d}` on the device first",
        "device.json": f"run `python {d / 'measure_probes.py'} {d}` on the device first",
    }
    for name, fix in need.items():
        if not (d / name).is_file():
            raise UserError(f"{d / name} is missing: {fix}")
    try:
        meta = json.loads((d / "probes.json").read_text())
        fp = json.loads((d / "device.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{d}: probes.json or device.json is not valid JSON ({e}): rerun the measurement") from e
    if meta.get("format") != PROBES_FORMAT:
        raise UserError(f"{d / 'probes.json'} is not an autoprune probe set ({PROBES_FORMAT})")
    try:
        plan = pd.read_csv(
            d / "plan.csv", dtype={"group": str, "in_group": str, "kernel": str, "stride": str, "padding": str}
        ).fillna({"group": "", "in_group": ""})
        measured = pd.read_csv(d / "measured.csv")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise UserError(
            f"{d}: plan.csv or measured.csv is not a readable CSV ({str(e).splitlines()[0]}): rerun measure_probes.py"
        ) from e
    cols = ["file", "kind", "keep_ratio", "median_us", "p10_us", "p90_us", "repeats"]
    if any(c not in measured.columns for c in cols) or measured[cols[3:]].isna().any().any():
        raise UserError(f"{d / 'measured.csv'} is truncated or corrupt: rerun measure_probes.py")
    timing = {
        row.file: Timing(float(row.median_us), float(row.p10_us), float(row.p90_us), int(row.repeats))
        for row in measured.itertuples()
    }
    probes_t = {Path(f).stem: t for f, t in timing.items() if f.startswith("probes/")}
    signature = {Path(f).stem: t.median_us for f, t in timing.items() if f.startswith(f"{SIGNATURE_DIR}/")}
    networks = {Path(r.file).stem: timing[r.file] for r in measured.itertuples() if r.kind == "network"}
    model, _ = build_model(meta["model"], weights, use_default_weights=False)
    graph = analyze(model, tuple(meta["input_shape"]), meta["model"])
    if graph.fingerprint != meta.get("structure"):
        raise UserError(f"{d} was made for a different structure of {meta['model']}: regenerate the probes")
    backend = fp.get("backend", "onnxruntime")
    extra = {
        "grid": meta["grid"],
        "warmup": meta["warmup"],
        "repeats": meta["repeats"],
        "probes": len(probes_t),
        "imported_from": str(d),
    }
    if signature:  # each kept its fastest of the passes; their disagreement was not recorded there
        extra["speed_signature"] = {
            "probes": signature,
            "noise": 0.0,
            "passes": int(meta.get("passes", 2)),
            "repeats": int(meta["repeats"]),
        }
    return assemble_table(
        graph,
        plan,
        probes_t,
        networks,
        fp,
        int(meta["channel_block"]),
        int(meta["channel_align"]),
        backend,
        int(fp.get("threads", meta["threads"])),
        fp.get("device", "cpu"),
        extra,
    )
