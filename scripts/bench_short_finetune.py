"""What a short distilled fine-tune (the ``acc-ft`` reward, the promotion rung) costs with the unpruned model's
logits replayed and with them computed afresh for every policy.

    python scripts/bench_short_finetune.py --model fmnist-mobilenetv2 --budget flops=20% --steps 50

Scores the same few policies (uniform keep ratios around the budget's) both ways on one evaluator's batches and
prints seconds per step and the held-out accuracies (equal both ways: the replay changes no result).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from autoprune.cost.device_identity import isa_level, read_cpuinfo
from autoprune.pipeline.setup import prepare
from autoprune.reward import Evaluator
from autoprune.search.baselines import uniform_kept
from autoprune.spec import RunSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="fmnist-mobilenetv2")
    ap.add_argument("--budget", default="flops=20%")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--policies", type=int, default=3)
    a = ap.parse_args()
    spec = RunSpec.create(a.budget, a.model, "fashion-mnist", finetune_epochs=0, measure=False)
    s = prepare(spec)
    base = uniform_kept(s.problem)[1]
    ratios = [base * f for f in np.linspace(0.9, 1.0, a.policies)]
    policies = [s.problem.ratios_to_kept(np.full(len(s.problem.channels), r)) for r in ratios]
    cpu = isa_level(read_cpuinfo()["isa"])
    print(f"{a.model} {a.budget}, {a.steps} distilled steps x {len(policies)} policies, CPU {cpu}")
    for replay in (False, True):
        # teacher_replay_bytes=0: nothing remembered, every fine-tune runs the teacher itself
        ev = Evaluator(
            s.pruner,
            s.bundle,
            held_out=spec.held_out,
            seed=0,
            kd=True,
            compute=s.compute,
            teacher_replay_bytes=256 * 2**20 if replay else 0,
        )
        ev.teacher_logits()  # the held-out targets, once, outside the timing
        seconds, accs = [], []
        for kept in policies:
            t = time.perf_counter()
            accs.append(ev.evaluate(kept, a.steps).accuracy)
            seconds.append(time.perf_counter() - t)
        per_step = [sec / a.steps for sec in seconds]
        print(
            f"  teacher {'replayed' if replay else 'afresh  '}: s/step per policy "
            + " ".join(f"{p:.3f}" for p in per_step)
            + f"; held-out acc {' '.join(f'{x:.4f}' for x in accs)}"
        )


if __name__ == "__main__":
    main()
