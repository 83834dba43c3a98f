"""A latency table's error on widths below its channel block, against widths on it (ResNet-20 demo model).

Where the table's block is 16 (AVX-512), a search whose budget is under the block's floor runs at 8 channels, and
onnxruntime's optimised graph of such a policy reorders NCHWc back to NCHW before every conv whose input is narrower
than a block, which no isolated probe times; the table's calibration networks are drawn at the block. This times a
fixed set of policies (whole blocks, and 8-channel groups in stages 1-2) with the unpruned model in interleaved
rounds and prints the table's predicted share of the unpruned model against the measured one, with the number of
``ReorderOutput`` nodes onnxruntime's optimiser leaves in each network. Run it on a quiet machine:

    T=~/.cache/autoprune/latency_tables/<device>/fmnist-resnet20-64x1x28x28.csv
    .venv/bin/python scripts/table_error_by_width.py --table $T --out benchmarks/table_error_by_width.json

Benchmark code only; no part of the ``autoprune`` package.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from autoprune.cost.latency_table import LatencyTable
from autoprune.cost.measure import measure_interleaved
from autoprune.layers import analyze
from autoprune.models import build_model
from autoprune.onnx_graph import onnx_bytes, optimised_graph
from autoprune.prune import ChannelPruner

MODEL = "fmnist-resnet20"
# kept channels per group: stem/stage-1 stream, stage-1 convs (3), stage-2 conv1, stage-2 stream, stage-2 convs (2),
# stage-3 conv1, stage-3 stream, stage-3 convs (2)
POLICIES = {
    "unpruned": [16] * 4 + [32] * 4 + [64] * 4,
    "blocks of 16": [16] * 8 + [32] * 4,
    "stage 1 at 8": [8] * 4 + [16] * 4 + [32] * 4,
    "stages 1-2 at 8, 3 at 24": [8] * 8 + [24] * 4,
    "stages 1-2 at 8, 3 at 32": [8] * 8 + [32] * 4,
    "search A": [8, 8, 8, 8, 16, 16, 8, 8, 32, 32, 32, 32],
    "search B": [8, 8, 8, 8, 8, 16, 8, 16, 32, 32, 32, 32],
    "stream 16, stage 2 at 8": [16, 16, 16, 16, 8, 16, 8, 8, 32, 32, 32, 32],
    "stage 2 stream 8": [8, 8, 8, 8, 16, 8, 8, 8, 32, 32, 32, 32],
}


def reorders(model_bytes: bytes, threads: int) -> int:
    """``ReorderOutput`` nodes in onnxruntime's optimised graph of the network."""
    return sum(n.op_type == "ReorderOutput" for n in optimised_graph(model_bytes, threads).graph.node)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", required=True, help="the fmnist-resnet20 table (.csv) of this machine")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--repeats", type=int, default=100, help="timed runs per network and round (default 100)")
    ap.add_argument("--out", help="write the rows as JSON here too")
    a = ap.parse_args(argv)
    table = LatencyTable.load(a.table)
    if table.model != MODEL:
        print(f"table_error_by_width: {a.table} is a table of {table.model}, not {MODEL}", file=sys.stderr)
        return 2
    shape = table.input_shape
    model, _ = build_model(MODEL, None, use_default_weights=False)
    graph = analyze(model, shape, MODEL)
    predict = table.predictor(graph)
    pruner = ChannelPruner(model, shape, graph=graph, model_name=MODEL)
    nets = [onnx_bytes(pruner.apply(np.array(k)), shape, dynamic_batch=False) for k in POLICIES.values()]
    with table.measuring():
        timings = measure_interleaved(nets, shape, table.backend, table.threads, 20, a.repeats, a.rounds, table.device)
    full_pred, full_meas = predict(np.array(POLICIES["unpruned"])), timings[0].median_us
    rows = []
    print(f"table block {table.block}; {a.rounds} rounds of {a.repeats} runs; error = predicted / measured share - 1")
    for (name, kept), net, t in zip(POLICIES.items(), nets, timings, strict=True):
        predicted = predict(np.array(kept))
        share_p, share_m = predicted / full_pred, t.median_us / full_meas
        row = {
            "policy": name,
            "kept": kept,
            "reorders": reorders(net, table.threads),
            "predicted_us": predicted,
            "measured_us": t.median_us,
            "round_medians_us": t.round_medians,
            "share_predicted": share_p,
            "share_measured": share_m,
            "error": share_p / share_m - 1,
        }
        rows.append(row)
        spread = (max(t.round_medians) - min(t.round_medians)) / t.median_us
        print(
            f"{name:26s} reorders {row['reorders']:2d}  share predicted {share_p:.3f} measured {share_m:.3f}  "
            f"error {row['error']:+.3f}  rounds spread {spread:.1%}"
        )
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
