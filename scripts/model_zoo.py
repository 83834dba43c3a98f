"""Check autoprune over every torchvision classifier: analyse, prune by a random policy, compare costs, export.

For each model (num_classes=10, the smallest input it accepts reasonably) the check runs these stages, and the first
one that fails is recorded:

* ``build``: ``build_model``;
* ``analyse``: ``ChannelPruner`` (Torch-Pruning's dependency graph; the analytic cost model must reproduce the
  unpruned FLOPs/params);
* ``apply``: a seeded random policy (every group keeps 30-90 % of its channels) is applied;
* ``forward``: the pruned model runs and its output shape equals the unpruned model's;
* ``cost``: analytic FLOPs and params of the policy equal ``torch_pruning.utils.count_ops_and_params`` on the pruned
  model (FLOPs to a relative 1e-9, params exactly), and the params really dropped;
* ``onnx-export``: ``autoprune.onnx_graph.onnx_bytes`` of the pruned model;
* ``onnxruntime``: the ONNX graph runs on the CPU provider with the unpruned output shape and matches the pruned
  PyTorch model's output (atol = rtol = 1e-3).

Every model runs in its own subprocess (with a time limit, and so that a crash or a huge model's memory does not take
the whole run down). Results go to ``benchmarks/model_zoo.csv``, one row per model, written as they come in.

    python scripts/model_zoo.py                    # all of them
    python scripts/model_zoo.py resnet18 vit_b_16  # some
    python scripts/model_zoo.py --one resnet18     # one, in this process, JSON on stdout
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CSV_PATH = ROOT / "benchmarks" / "model_zoo.csv"
FIELDS = [
    "model",
    "input_shape",
    "groups",
    "status",
    "stage",
    "reason",
    "seconds",
    "flops",
    "pruned_flops",
    "params",
    "pruned_params",
]
NUM_CLASSES = 10
SEED = 0
LARGEST = {
    "regnet_y_128gf",
    "vit_h_14",
    "vit_l_16",
    "vit_l_32",
    "regnet_y_32gf",
    "regnet_x_32gf",
    "efficientnet_b7",
    "efficientnet_v2_l",
    "convnext_large",
    "swin_v2_b",
    "swin_b",
    "vit_b_16",
    "maxvit_t",
    "swin_v2_s",
}


def input_shape(name: str) -> tuple[int, int, int, int]:
    """Smallest input each model takes reasonably: transformers need their native size (fixed position embeddings,
    window partitions), Inception's stem needs >= 75 px, everything else runs at 64x64."""
    if name.startswith(("vit_", "swin_", "maxvit_")):
        return (1, 3, 224, 224)
    if name == "inception_v3":
        return (1, 3, 80, 80)
    if name == "alexnet" or name.startswith("vgg"):
        # their AdaptiveAvgPool2d((6, 6) / (7, 7)) exports to ONNX only when its input is a multiple of that size
        return (1, 3, 224, 224)
    return (1, 3, 64, 64)


def random_policy(channels: list[int], seed: int = SEED) -> list[int]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [int(min(c, max(1, round(c * rng.uniform(0.3, 0.9))))) for c in channels]


def _first_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), text)
    for noise in (" Please feel free", "  [Caused by"):
        line = line.split(noise)[0]
    return line[:300]


def check(name: str, shape: tuple[int, ...] | None = None, seed: int = SEED) -> dict:
    """Run every stage on one model; returns a CSV row."""
    import numpy as np
    import onnxruntime as ort
    import torch
    import torch_pruning as tp

    from autoprune.cost.flops import costs
    from autoprune.models import build_model
    from autoprune.onnx_graph import onnx_bytes
    from autoprune.prune import ChannelPruner

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    shape = tuple(shape or input_shape(name))
    row = {
        "model": name,
        "input_shape": "x".join(map(str, shape)),
        "groups": "",
        "status": "fail",
        "stage": "",
        "reason": "",
        "seconds": 0.0,
    }
    t0 = time.perf_counter()
    stage = "build"
    try:
        model, _ = build_model(name, num_classes=NUM_CLASSES)
        x = torch.randn(*shape)
        with torch.no_grad():
            ref_shape = tuple(model(x).shape)
        stage = "analyse"
        pruner = ChannelPruner(model, shape, model_name=name)
        channels = [g.channels for g in pruner.graph.groups]
        row["groups"] = len(channels)
        row["flops"], row["params"] = int(pruner.graph.base_flops), int(pruner.graph.base_params)
        if not channels:
            raise RuntimeError("no prunable group found")
        stage = "apply"
        kept = random_policy(channels, seed)
        pruned = pruner.apply(kept)
        stage = "forward"
        with torch.no_grad():
            out = pruned(x)
        if tuple(out.shape) != ref_shape:
            raise RuntimeError(f"pruned output shape {tuple(out.shape)} != unpruned {ref_shape}")
        stage = "cost"
        analytic = costs(pruner.graph, kept)
        flops, params = tp.utils.count_ops_and_params(pruned, torch.randn(*shape))
        row["pruned_flops"], row["pruned_params"] = int(flops), int(params)
        if abs(analytic["flops"] - flops) > 1e-9 * max(flops, 1):
            raise RuntimeError(
                f"analytic FLOPs {analytic['flops']:.0f} != measured {flops:.0f} ({analytic['flops'] / flops - 1:+.3e})"
            )
        if round(analytic["params"]) != params:
            raise RuntimeError(f"analytic params {analytic['params']:.0f} != measured {params}")
        if params >= pruner.graph.base_params:
            raise RuntimeError(f"params did not drop ({params} >= {pruner.graph.base_params})")
        stage = "onnx-export"
        data = onnx_bytes(pruned, shape)
        stage = "onnxruntime"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        (onnx_out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        if tuple(onnx_out.shape) != ref_shape:
            raise RuntimeError(f"onnxruntime output shape {tuple(onnx_out.shape)} != unpruned {ref_shape}")
        if not np.allclose(onnx_out, out.numpy(), atol=1e-3, rtol=1e-3):
            raise RuntimeError(
                f"onnxruntime output differs from PyTorch by up to {float(np.abs(onnx_out - out.numpy()).max()):.3g}"
            )
        row.update(status="ok", stage="")
    except BaseException as e:  # noqa: BLE001 - every failure is a result, recorded with its stage
        if isinstance(e, KeyboardInterrupt):
            raise
        row.update(stage=stage, reason=_first_line(e))
        if "--verbose" in sys.argv:
            traceback.print_exc()
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def run_subprocess(name: str, timeout: float) -> dict:
    t0 = time.perf_counter()
    shape = input_shape(name)
    base = {"model": name, "input_shape": "x".join(map(str, shape)), "groups": "", "status": "fail"}
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--one", name], capture_output=True, text=True, timeout=timeout, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        return {
            **base,
            "stage": "timeout",
            "reason": f"did not finish in {timeout:.0f} s",
            "seconds": round(time.perf_counter() - t0, 1),
        }
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    reason = "killed (out of memory?)" if proc.returncode in (-9, 137) else tail[:300]
    return {**base, "stage": "crash", "reason": reason, "seconds": round(time.perf_counter() - t0, 1)}


def write_csv(path: Path, rows: list[dict]) -> None:
    from autoprune.models import torchvision_classifiers

    order = {n: i for i, n in enumerate(torchvision_classifiers())}
    rows = sorted(rows, key=lambda r: order.get(r["model"], len(order)))
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help="models to check (default: every torchvision classifier)")
    ap.add_argument("--one", help="check one model in this process and print its row as JSON")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per model")
    ap.add_argument("--csv", type=Path, default=CSV_PATH)
    ap.add_argument(
        "--update", action="store_true", help="re-run only the given models and replace their rows in the existing CSV"
    )
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(check(args.one)), flush=True)
        return

    from autoprune.models import torchvision_classifiers

    # the largest models last, so that a slow machine gets through the rest first
    names = args.models or sorted(torchvision_classifiers(), key=lambda n: n in LARGEST)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    previous: dict[str, dict] = {}
    if args.update and args.csv.is_file():
        with args.csv.open(newline="") as f:
            previous = {r["model"]: r for r in csv.DictReader(f)}
    rows = []
    for name in names:
        row = run_subprocess(name, args.timeout)
        rows.append(row)
        previous[name] = row
        # rewritten after every model, so an interrupted run keeps what it finished
        write_csv(args.csv, list(previous.values()) if args.update else rows)
        where = "" if row["status"] == "ok" else f" [{row['stage']}] {row['reason']}"
        print(
            f"{name:22s} {row['status']:4s} {float(row['seconds']):7.1f}s groups={row.get('groups', '')}{where}",
            flush=True,
        )
    ok = [r["model"] for r in rows if r["status"] == "ok"]
    print(f"\n{len(ok)}/{len(rows)} models pass")
    for r in rows:
        if r["status"] != "ok":
            print(f"  FAIL {r['model']}: [{r['stage']}] {r['reason']}")


if __name__ == "__main__":
    main()
