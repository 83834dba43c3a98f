"""Does a longer promotion rung rank two baselines as the final one-epoch fine-tune does?

    python scripts/bench_rung_length.py --model fmnist-mobilenetv2 --budget flops=10% --seed 1 --steps 200,430

Fine-tunes the uniform policy and global magnitude's allocation of the budget for each number of distilled steps on
the evaluator a search with that seed and 5,000 held-out images builds (the rung's fidelity), and prints their
held-out accuracies, to compare with the test accuracies of the same seed's `uniform` and `magnitude` curve cells.
"""

from __future__ import annotations

import argparse
import time

from autoprune.pipeline.setup import prepare
from autoprune.search.baselines import magnitude_kept, uniform_kept
from autoprune.spec import RunSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="fmnist-mobilenetv2")
    ap.add_argument("--budget", default="flops=10%")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", default="200,430", help="comma-separated distilled step counts")
    a = ap.parse_args()
    spec = RunSpec.create(a.budget, a.model, "fashion-mnist", seed=a.seed, held_out=5000, finetune_epochs=1)
    s = prepare(spec)
    p = s.problem
    for name, kept in (("uniform", uniform_kept(p)[0]), ("magnitude", magnitude_kept(p, p.importance))):
        for n in (int(x) for x in a.steps.split(",")):
            t = time.perf_counter()
            acc = s.evaluator.evaluate(kept, finetune_steps=n).accuracy
            took = time.perf_counter() - t
            print(f"{a.model} {a.budget} seed {a.seed} {name} {n} steps: held-out {acc:.4f} ({took:.0f} s)")


if __name__ == "__main__":
    main()
