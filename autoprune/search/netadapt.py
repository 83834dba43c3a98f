"""NetAdapt (Yang et al., 2018): shrink one layer at a time under a falling resource target.

Each iteration lowers the target by a step that decays geometrically; for every group it proposes the candidate
that shrinks *only that group* just enough to meet the target (largest kept count that does, by bisection on the
real cost model), short-term fine-tunes each candidate for a few batches, scores it on the held-out split and keeps
the best. It stops once the budget is met. The resource is the budget metric furthest over its limit, so budgets on
several metrics are met one after another.

Differences from the paper, stated: candidates are scored through the shared reward path (each pruned from the
original weights, then short-term fine-tuned), so the long-term fine-tune happens once, after the search, as for
every strategy; and the step is sized so that the evaluation budget (``episodes``) suffices to reach the budget.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from autoprune.problem import last_true
from autoprune.search.base import SearchContext, Strategy


class NetAdaptStrategy(Strategy):
    name = "netadapt"
    defaults: ClassVar[dict] = {
        "step_decay": 0.96,  # per-iteration decay of the resource reduction step
        "short_finetune": 20,  # batches of short-term fine-tuning per candidate (NetAdapt's "short-term")
        "iterations": None,  # None: as many as the evaluation budget allows (one evaluation per group each)
    }

    def most_violated(self, kept: np.ndarray) -> str | None:
        over = self.problem.excess(kept)
        return max(over, key=over.__getitem__) if over else None

    def shrink_one(self, kept: np.ndarray, i: int, metric: str, target: float) -> np.ndarray | None:
        """``kept`` with only group ``i`` shrunk to the largest count whose ``metric`` cost meets ``target``."""
        p, cands = self.problem, self.problem.candidates[i]
        cands = cands[cands < kept[i]]
        trial = kept.copy()

        def ok(k: int) -> bool:
            trial[i] = k
            return p.cost(trial)[metric] <= target

        if len(cands) == 0 or not ok(int(cands[0])):
            return None
        lo = last_true(len(cands), lambda j: ok(int(cands[j])))
        trial[i] = int(cands[lo])
        return trial

    def run(self, ctx: SearchContext) -> dict:
        p, o = self.problem, self.options
        n = len(p.channels)
        kept = p.channels.copy()
        iterations = o["iterations"] or max(1, ctx.remaining // n)
        decay = o["step_decay"]
        trace = []
        it = 0
        while (metric := self.most_violated(kept)) is not None:
            now, limit = p.cost(kept)[metric], p.limits[metric]
            left = max(1, iterations - it)
            # a geometric schedule over the iterations left that sums to the remaining gap
            step = (now - limit) * (1 - decay) / (1 - decay**left) if decay < 1 else (now - limit) / left
            target = max(limit, now - step)
            proposals = [c for i in range(n) if (c := self.shrink_one(kept, i, metric, target)) is not None]
            if not proposals or ctx.remaining < len(proposals):
                break
            scores = [ctx.evaluate(c, finetune_steps=o["short_finetune"], iteration=it) for c in proposals]
            kept = proposals[int(np.argmax(scores))]
            trace.append({"iteration": it, "metric": metric, "target": target, "kept": kept.tolist()})
            it += 1
        if self.most_violated(kept) is not None:  # out of evaluations or candidates: the clip finishes the job
            kept = p.project(kept / p.channels)
            ctx.evaluate(kept, finetune_steps=o["short_finetune"], iteration=it)
        return {"iterations": it, "trace": trace}
