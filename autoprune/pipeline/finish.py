"""Stage 4, finish: the searched policy (checked against the device when the budget is latency) is pruned for real,
scored, fine-tuned, measured end to end and written down as a :class:`~autoprune.policy.Policy`."""

from __future__ import annotations

import time
from collections.abc import Callable

import onnxruntime
import torch
import torch.nn as nn
import torch_pruning

from autoprune.compute import CPU, Compute
from autoprune.cost.measure import Timing
from autoprune.data import DataBundle
from autoprune.evaluate import accuracy, recalibrate_bn
from autoprune.finetune import DEFAULT_FINETUNE_LR, finetune
from autoprune.pipeline.finetune_processes import finetune_in_processes
from autoprune.pipeline.run_dir import PolicyOutcome, cost_metrics
from autoprune.pipeline.setup import Setup
from autoprune.pipeline.verify import meet_measured_latency, time_pair
from autoprune.policy import Policy
from autoprune.search import SearchResult, uniform_kept
from autoprune.search.promotion import Promoted
from autoprune.version import __version__

Phase = Callable[[str], None]


def versions() -> dict[str, str]:
    return {
        "autoprune": __version__,
        "torch": torch.__version__,
        "torch_pruning": torch_pruning.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def evaluate_pruned(
    pruned: nn.Module, data: DataBundle, recalibrate: bool = True, seed: int = 0, *, compute: Compute = CPU
) -> dict[str, float]:
    """Held-out and test accuracy, after BatchNorm recalibration on training batches."""
    if recalibrate:
        recalibrate_bn(pruned, data.train, seed=seed, compute=compute)
    return {
        "held_out_accuracy": accuracy(pruned, data.held_out, compute=compute),
        "test_accuracy": accuracy(pruned, data.test, compute=compute),
    }


def finish(setup: Setup, result: SearchResult, started: float, phase: Phase) -> PolicyOutcome:
    """The searched policy as a pruned, fine-tuned, measured model and the policy file that describes it."""
    spec, problem = setup.spec, setup.problem
    kept = [int(k) for k in result.best_kept]
    timings, checks = None, None
    if spec.measure and setup.table is not None and "latency" in spec.budget.metrics and not setup.elsewhere:
        phase("measuring the chosen policy against the latency budget")
        rung = [Promoted(**{**r, "kept": tuple(r["kept"])}) for r in result.extra.get("promotion") or ()]
        kept, timings, checks = meet_measured_latency(
            problem, result.history, kept, setup.pruner, setup.net, setup.shape, setup.table, on_phase=phase, rung=rung
        )
    pruned = setup.pruner.apply(kept)
    metrics, unpruned = cost_metrics(problem, kept), cost_metrics(problem, setup.graph.channels)
    if checks is not None:
        metrics["latency_checks"] = checks
    finetuned = None
    if setup.bundle is not None:
        finetuned = _score_and_finetune(setup, pruned, kept, metrics, unpruned, phase)
    if spec.measure:
        _measure(setup, pruned, timings, metrics, unpruned, phase)
    metrics["unpruned"] = unpruned
    policy = Policy.from_kept(
        setup.graph, kept, budget=spec.budget, metrics=metrics, search=_search_record(setup, result, started, finetuned)
    )
    return PolicyOutcome(policy, pruned, unpruned)


def _score_and_finetune(
    setup: Setup, pruned: nn.Module, kept: list[int], metrics: dict, unpruned: dict, phase: Phase
) -> dict | None:
    """Accuracies before and after the fine-tune (distilled from the unpruned model with ``kd``; in ``nproc``
    processes with torch.distributed); returns what the fine-tune was (None without one)."""
    spec, bundle, compute, info = setup.spec, setup.bundle, setup.compute, None
    phase("scoring the pruned model")
    unpruned.update(evaluate_pruned(setup.net, bundle, recalibrate=False, compute=compute))
    before = evaluate_pruned(pruned, bundle, seed=spec.seed, compute=compute)
    metrics["held_out_accuracy"] = before["held_out_accuracy"]
    metrics["test_accuracy_before_finetune"] = before["test_accuracy"]
    if spec.finetune_epochs > 0:
        lr = spec.finetune_lr or DEFAULT_FINETUNE_LR
        how = f"{' with distillation' if spec.kd else ''}{f' in {spec.nproc} processes' if spec.nproc > 1 else ''}"
        phase(f"fine-tuning {spec.finetune_epochs} epoch(s){how} on {compute}")
        if spec.nproc > 1:
            seconds = finetune_in_processes(setup, pruned, kept, lr)
        else:
            teacher = setup.net if spec.kd else None
            log = finetune(
                pruned, bundle, epochs=spec.finetune_epochs, lr=lr, teacher=teacher, seed=spec.seed, compute=compute
            )
            seconds = log.seconds
        info = {"epochs": spec.finetune_epochs, "lr": lr, "kd": spec.kd, "seconds": seconds, "nproc": spec.nproc}
        metrics["held_out_accuracy_after_finetune"] = accuracy(pruned, bundle.held_out, compute=compute)
    metrics["test_accuracy"] = accuracy(pruned, bundle.test, compute=compute)
    return info


def _measure(
    setup: Setup, pruned: nn.Module, timings: list[Timing] | None, metrics: dict, unpruned: dict, phase: Phase
) -> None:
    """End-to-end latency of both models, timed here (the measured check's last timings when it ran)."""
    table = setup.table
    if timings is None:
        phase("measuring end-to-end latency")
        timings = time_pair(setup.net, pruned, setup.shape, table, setup.spec.threads)
    unpruned["latency_measured_us"], metrics["latency_measured_us"] = (t.median_us for t in timings)
    if setup.elsewhere:  # timed here; the budget is the table's device's
        metrics["latency_measured_elsewhere"] = True
        metrics["latency_predicted_for"] = table.device_name


def _search_record(setup: Setup, result: SearchResult, started: float, finetuned: dict | None) -> dict:
    """policy.json's ``search``: how the policy was found, enough to reproduce and judge it."""
    spec, table = setup.spec, setup.table
    history = result.history
    return {
        "strategy": spec.strategy,
        "evaluations": result.evaluations,
        # on a coarse space (a 16-channel block on a small model) DDPG's episodes repeat policies: the cache
        # answers them, the episode counts (Optuna prunes its repeats and counts none)
        "distinct_policies": int(history["kept"].map(tuple).nunique()) if len(history) else 0,
        "converged": result.extra.get("converged"),  # an Optuna study that ran out of new policies to propose
        "seed": spec.seed,
        "reward": result.extra.get("reward"),
        "promotion": result.extra.get("promotion"),  # the multi-fidelity rung's candidates, winner first
        "promotion_margin_se": result.extra.get("promotion_margin_se"),  # the lead over uniform the winner needed
        "promotion_steps": result.extra.get("promotion_steps"),  # its fine-tune: at most the final one's length
        "episodes": spec.episodes,
        "criterion": spec.criterion,
        "min_keep": spec.min_keep,
        "round_to": setup.problem.round_to,
        "data": setup.bundle.name if setup.bundle else None,
        "table": spec.table,
        "table_device": table.device_name if table is not None else None,
        "speed_signature": setup.signature.to_dict() if setup.signature is not None else None,
        "table_reanchored": setup.reanchored,  # the chosen table re-fitted here before the search, as it drifted
        "search_seconds": result.seconds,
        "seconds": time.perf_counter() - started,
        "uniform_kept": [int(k) for k in uniform_kept(setup.problem)[0]],
        "finetune": finetuned,
        "compute": setup.compute.describe(),
        "versions": versions(),
    }
