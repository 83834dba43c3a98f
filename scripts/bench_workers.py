"""Evaluations per minute of the demo search with 1 and with N local workers (benchmarks/README.md, "Workers").

    .venv/bin/python scripts/bench_workers.py --episodes 60 --workers 1 2 --out runs/bench-workers

Each run is `autoprune search --strategy optuna` on the demo (fmnist-resnet20, Fashion-MNIST, flops=50%, 2,000
held-out images, channels rounded to 8, no fine-tune, no latency measurement): one process with all the cores'
torch threads for 1 worker, `--workers N` (cores // N torch threads each) otherwise. Throughput is read from the
study: complete trials per minute between the first trial's start and the last one's end (the search itself, with
every worker up), next to the whole command's wall time (model load, worker start-up and writing the run
directory included). Cached trials (a policy another trial already evaluated) are counted separately.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

DEMO = [
    "--strategy",
    "optuna",
    "--budget",
    "flops=50%",
    "--held-out",
    "2000",
    "--round-to",
    "8",
    "--finetune-epochs",
    "0",
    "--no-measure",
]


def study_of(run: Path, workers: int) -> optuna.Study:
    if workers > 1:
        from optuna.storages.journal import JournalFileBackend

        storage = optuna.storages.JournalStorage(JournalFileBackend(str(run / "optuna-journal.log")))
    else:
        storage = f"sqlite:///{run / 'optuna.db'}"
    return optuna.load_study(study_name="autoprune-tpe", storage=storage)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=60)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=Path("runs/bench-workers"))
    a = ap.parse_args()
    exe = Path(sys.executable).with_name("autoprune")
    print(f"load average before: {os.getloadavg()}", flush=True)
    print(
        "| workers | torch threads each | complete trials | cached | search evals/min | command wall s | "
        "load avg (1 min) after |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in a.workers:
        run = a.out / f"w{n}"
        shutil.rmtree(run, ignore_errors=True)
        cmd = [str(exe), "search", *DEMO, "--episodes", str(a.episodes), "--out", str(run)]
        if n > 1:
            cmd += ["--workers", str(n)]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t
        trials = [t for t in study_of(run, n).trials if t.state == TrialState.COMPLETE]
        span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
        cached = sum('"cached": true' in t.user_attrs.get("row", "") for t in trials)
        threads = len(os.sched_getaffinity(0)) // n if n > 1 else len(os.sched_getaffinity(0))
        print(
            f"| {n} | {max(1, threads)} | {len(trials)} | {cached} | {len(trials) / span * 60:.1f} | {wall:.0f} | "
            f"{os.getloadavg()[0]:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
