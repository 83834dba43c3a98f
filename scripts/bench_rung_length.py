"""Does the promotion rung rank the baselines as the final one-epoch fine-tune does?

    python scripts/bench_rung_length.py --model fmnist-mobilenetv2 --budget flops=10% --seed 1 --steps 200,430
    python scripts/bench_rung_length.py --model fmnist-mobilenetv2 --budget flops=10% --seed 1 --steps 200 --augment

Fine-tunes the uniform policy, global magnitude's allocation of the budget and both grown into the budget their whole
channel blocks leave (``fill``) for each number of distilled steps on the evaluator a search with that seed and 5,000
held-out images builds (the rung's fidelity; ``--augment``: with the final fine-tune's crops and flips), and prints
their held-out accuracies and each one's difference from uniform with its paired standard error over the held-out
images, to compare with the test accuracies of the same seed's curve cells.
"""

from __future__ import annotations

import argparse
import time

from autoprune.pipeline.setup import prepare
from autoprune.search.baselines import magnitude_kept, uniform_kept
from autoprune.search.promotion import paired_standard_error
from autoprune.spec import RunSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="fmnist-mobilenetv2")
    ap.add_argument("--budget", default="flops=10%")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", default="200,430", help="comma-separated distilled step counts")
    ap.add_argument("--augment", action="store_true", help="the short fine-tunes augment as the final one does")
    a = ap.parse_args()
    spec = RunSpec.create(a.budget, a.model, "fashion-mnist", seed=a.seed, held_out=5000, finetune_epochs=1)
    s = prepare(spec)
    s.evaluator.finetune_augment = a.augment
    p = s.problem
    policies = {
        "uniform": uniform_kept(p)[0],
        "uniform+fill": uniform_kept(p, fill=True)[0],
        "magnitude": magnitude_kept(p, p.importance),
        "magnitude+fill": magnitude_kept(p, p.importance, fill=True),
    }
    for n in (int(x) for x in a.steps.split(",")):
        base = s.evaluator.evaluate(policies["uniform"], finetune_steps=n)
        for name, kept in policies.items():
            t = time.perf_counter()
            ev = s.evaluator.evaluate(kept, finetune_steps=n)
            took = time.perf_counter() - t
            diff = ev.accuracy - base.accuracy
            se = paired_standard_error(ev.correct, base.correct)
            print(
                f"{a.model} {a.budget} seed {a.seed} augment={a.augment} {name} {n} steps: held-out "
                f"{ev.accuracy:.4f}, - uniform {diff:+.4f} (paired s.e. {se:.4f}) ({took:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
