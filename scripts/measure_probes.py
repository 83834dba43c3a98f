#!/usr/bin/env python3
"""Time autoprune's latency probes on this device. Needs only Python 3.8+, onnxruntime and numpy.

    python measure_probes.py PROBE_DIR [--threads N] [--repeats R] [--warmup W] [--e2e-repeats E]
                             [--passes P] [--rounds K]

PROBE_DIR is what ``autoprune latency-table probes`` wrote: ``probes.csv`` lists ONNX files (one operator each, plus a
few uniformly pruned whole networks for calibration). Each is timed the way a serving stack runs it: an onnxruntime
session with full graph optimisation (so conv + activation fusion and the blocked layouts are what is timed), a fixed
number of intra-op threads, warm-up runs, then the median of timed runs with the 10th / 90th percentiles. Operator
probes are timed by onnxruntime's profiler (kernel time, without the layout reorders only a lone operator needs);
whole networks by wall time per run. A busy or virtual machine has slow spells and slow sessions that pass, so
every probe is timed in P passes over the whole list and keeps its fastest pass, and the calibration networks are
timed in K interleaved rounds (a fresh session each) and keep the median of their round medians -- the same
protocol as ``autoprune latency-table build``. Writes
``measured.csv`` and ``device.json`` (this device's fingerprint) into PROBE_DIR; then, where autoprune is installed:
``autoprune latency-table import PROBE_DIR``.

This file is the canonical copy in autoprune's ``scripts/``; ``probes`` copies it next to the probe models.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def fingerprint(threads: int, device: str) -> dict:
    """This device's identity, read by autoprune's own ``device_identity.py`` (copied beside this script by
    ``autoprune latency-table probes``; in the source tree, the installed package's)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        from device_identity import identify
    except ImportError:
        from autoprune.cost.device_identity import identify
    return identify("onnxruntime", threads, device)


def session(path: Path, threads: int, device: str, profile_prefix: str | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), so, providers=providers)


LAYOUT_OPS = ("ReorderInput", "ReorderOutput")


def kernel_times(events: list, warmup: int) -> list:
    """Per run (profiler ``model_run`` span), the summed kernel time of its nodes except layout reorders, which
    a stand-alone probe needs and a served network of blocked convs does not run between them."""
    runs = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    nodes = sorted(
        (e["ts"], e["dur"])
        for e in events
        if e.get("cat") == "Node"
        and e.get("name", "").endswith("_kernel_time")
        and e.get("args", {}).get("op_name") not in LAYOUT_OPS
    )
    out, j = [], 0
    for start, end in runs:
        total = 0.0
        while j < len(nodes) and nodes[j][0] < start:
            j += 1
        while j < len(nodes) and nodes[j][0] <= end:
            total += nodes[j][1]
            j += 1
        out.append(total)
    return out[warmup:]


def measure(path: Path, shape: list, threads: int, device: str, warmup: int, repeats: int, kernels: bool) -> dict:
    """Operator probes (``kernels``): kernel time from onnxruntime's profiler; whole networks: wall time per run."""
    with tempfile.TemporaryDirectory() as tmp:
        sess = session(path, threads, device, str(Path(tmp) / "probe") if kernels else None)
        name = sess.get_inputs()[0].name
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        for _ in range(warmup):
            sess.run(None, {name: x})
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sess.run(None, {name: x})
            samples.append((time.perf_counter() - t0) * 1e6)
        if kernels:
            samples = kernel_times(json.loads(Path(sess.end_profiling()).read_text()), warmup)
    s = np.asarray(samples)
    return {
        "median_us": float(np.median(s)),
        "p10_us": float(np.percentile(s, 10)),
        "p90_us": float(np.percentile(s, 90)),
        "repeats": len(s),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("probe_dir", type=Path)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: as in probes.json)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--e2e-repeats", type=int, default=None, help="timed runs per calibration network")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--passes", type=int, default=None, help="passes over the probes (default: as in probes.json)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per calibration network (default: probes.json)")
    args = ap.parse_args(argv)
    d = args.probe_dir
    try:
        meta = json.loads((d / "probes.json").read_text())
        with open(d / "probes.csv", newline="") as f:
            listing = list(csv.DictReader(f))
    except (OSError, ValueError) as e:
        print(f"error: {d} is not a probe directory written by `autoprune latency-table probes` ({e})", file=sys.stderr)
        return 2
    threads = args.threads or int(meta.get("threads", 2))
    warmup = args.warmup if args.warmup is not None else int(meta.get("warmup", 3))
    repeats = args.repeats or int(meta.get("repeats", 15))
    e2e_repeats = args.e2e_repeats or int(meta.get("e2e_repeats", 50))
    passes = max(1, args.passes or int(meta.get("passes", 2)))
    rounds = max(1, args.rounds or int(meta.get("rounds", 3)))
    best: dict = {}
    rounds_of: dict = {}
    t_start = time.perf_counter()
    schedule = [(p, item) for p in range(passes) for item in listing if item["kind"] != "network"] + [
        (r, item) for r in range(rounds) for item in listing if item["kind"] == "network"
    ]
    for i, (_, item) in enumerate(schedule):
        shape = [int(v) for v in item["input_shape"].split("x")]
        network = item["kind"] == "network"
        t = measure(
            d / item["file"],
            shape,
            threads,
            args.device,
            int(meta.get("e2e_warmup", 10)) if network else warmup,
            e2e_repeats if network else repeats,
            kernels=not network,
        )
        if network:
            rounds_of.setdefault(item["file"], []).append(t)
        elif item["file"] not in best or t["median_us"] < best[item["file"]]["median_us"]:
            best[item["file"]] = t
        if (i + 1) % 25 == 0 or i + 1 == len(schedule):
            print(f"{i + 1}/{len(schedule)} measured ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr)
    for f, ts in rounds_of.items():
        best[f] = {
            "median_us": float(np.median([t["median_us"] for t in ts])),
            "p10_us": float(np.median([t["p10_us"] for t in ts])),
            "p90_us": float(np.median([t["p90_us"] for t in ts])),
            "repeats": sum(t["repeats"] for t in ts),
        }
    rows = [
        {"file": item["file"], "kind": item["kind"], "keep_ratio": item["keep_ratio"], **best[item["file"]]}
        for item in listing
    ]
    tmp = d / "measured.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "kind", "keep_ratio", "median_us", "p10_us", "p90_us", "repeats"])
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, d / "measured.csv")
    (d / "device.json").write_text(json.dumps(fingerprint(threads, args.device), indent=2) + "\n")
    print(f"wrote {d / 'measured.csv'} and {d / 'device.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
