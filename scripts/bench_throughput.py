"""Throughput of the passes over data (issue 15): search evaluations per second and fine-tune images per second.

For each case — the demo (``fmnist-resnet20`` at batch 64 on Fashion-MNIST) and ``resnet18`` on a generated
224x224 ImageFolder (``scripts/make_imagefolder.py``) — on ``--device``:

* **evaluations/s**: a search's evaluation of a policy (uniform 50 % channels kept: prune, recalibrate BN on
  10 x 128 training images, score ``--held-out`` images), timed over ``--evaluations`` different policies after one
  warm-up (each policy distinct, so the evaluator's cache answers none);
* **fine-tune images/s**: the distilled fine-tune of that pruned model (the unpruned model as teacher, batch 128,
  augmentation on), timed over ``--steps`` steps after one warm-up step.

One row per case is printed (markdown) and appended to ``--out`` (default ``benchmarks/throughput.csv``) with the
CPU's vector ISA or the GPU's name.

    .venv/bin/python scripts/bench_throughput.py                       # CPU, both cases
    .venv/bin/python scripts/bench_throughput.py --device cuda         # the same on the GPU (scripts/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoprune.compute import Compute  # noqa: E402
from autoprune.data import load_data  # noqa: E402
from autoprune.finetune import DEFAULT_FINETUNE_LR  # noqa: E402
from autoprune.layers import analyze  # noqa: E402
from autoprune.models import input_normalisation  # noqa: E402
from autoprune.pipeline.setup import load_model  # noqa: E402
from autoprune.prune import ChannelPruner  # noqa: E402
from autoprune.reward import Evaluator  # noqa: E402
from autoprune.training import TrainConfig, train  # noqa: E402

COLUMNS = ["case", "device", "hardware", "amp", "held_out", "evaluations_per_s", "finetune_images_per_s", "date"]


def hardware(compute: Compute) -> str:
    if compute.cuda:
        return torch.cuda.get_device_name(compute.device)
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = sorted({w for w in text.split() if w.startswith("avx512") or w == "avx2"})
    return f"{torch.get_num_threads()} threads, " + ("+".join(isa) or "no AVX2")


def bench_case(name: str, model: str, data: str, shape, compute: Compute, a) -> dict:
    net, shape = load_model(model, None, shape)
    bundle = load_data(data, tuple(shape[1:]), stats=input_normalisation(model))
    bundle = bundle.to(compute.device, loader_workers=compute.loader_workers)
    graph = analyze(net, shape, model)
    pruner = ChannelPruner(net, shape, graph=graph, compute=compute)
    evaluator = Evaluator(pruner, bundle, held_out=a.held_out, compute=compute)
    full = [g.channels for g in graph.groups]
    policies = [[max(1, int(c * (0.4 + 0.02 * i))) for c in full] for i in range(a.evaluations + 1)]
    evaluator.evaluate(policies[0])  # warm-up: kernels chosen, caches filled
    sync(compute)
    t = time.perf_counter()
    for kept in policies[1:]:
        evaluator.evaluate(kept)
    sync(compute)
    evals = a.evaluations / (time.perf_counter() - t)
    pruned = pruner.apply([max(1, c // 2) for c in full])
    stamps: list[float] = []

    def on_step(_step: int, _total: int, _loss: float) -> None:
        sync(compute)
        stamps.append(time.perf_counter())

    config = TrainConfig(lr=DEFAULT_FINETUNE_LR, max_steps=a.steps + 1)  # the fine-tune's recipe, a few steps
    train(pruned, bundle.train, config, teacher=net, on_step=on_step, compute=compute)
    # the first step (allocations, cudnn autotuning) left out: images over the remaining steps' time
    images = config.batch_size * (len(stamps) - 1) / (stamps[-1] - stamps[0])
    return {
        "case": name,
        "device": str(compute.device),
        "hardware": hardware(compute),
        "amp": compute.amp,
        "held_out": evaluator.held_out_size,
        "evaluations_per_s": round(evals, 3),
        "finetune_images_per_s": round(images, 1),
        "date": dt.date.today().isoformat(),
    }


def sync(compute: Compute) -> None:
    if compute.cuda:
        torch.cuda.synchronize(compute.device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", default="auto")
    ap.add_argument("--cases", default="demo,resnet18", help="comma-separated: demo, resnet18")
    ap.add_argument("--evaluations", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5, help="fine-tune steps timed")
    ap.add_argument("--held-out", type=int, default=1000, help="held-out images per evaluation")
    ap.add_argument("--imagefolder", type=Path, help="an ImageFolder for resnet18 (default: generate one)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "throughput.csv")
    a = ap.parse_args(argv)
    compute = Compute.resolve(a.device, a.amp)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in a.cases.split(","):
            if case == "demo":
                rows.append(
                    bench_case(
                        "demo fmnist-resnet20 64x1x28x28",
                        "fmnist-resnet20",
                        "fashion-mnist",
                        (64, 1, 28, 28),
                        compute,
                        a,
                    )
                )
            elif case == "resnet18":
                folder = a.imagefolder
                if folder is None:
                    folder = Path(tmp) / "imagefolder"
                    gen = [sys.executable, str(ROOT / "scripts" / "make_imagefolder.py"), str(folder)]
                    subprocess.run([*gen, "--train-per-class", "150", "--val-per-class", "10"], check=True)
                rows.append(
                    bench_case(
                        "resnet18 1x3x224x224 imagefolder",
                        "resnet18",
                        f"imagefolder:{folder}",
                        (1, 3, 224, 224),
                        compute,
                        a,
                    )
                )
            else:
                ap.error(f"unknown case {case!r}")
            print("| " + " | ".join(str(rows[-1][k]) for k in COLUMNS[:-1]) + " |", flush=True)
    new = not a.out.exists()
    with open(a.out, "a", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        if new:
            w.writeheader()
        w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
