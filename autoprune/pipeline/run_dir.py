"""Stage 5, the run directory: history.csv, the model files, policy.json, report.md and its plots — written all
or nothing, and the best policy so far when a search is interrupted."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch.nn as nn

from autoprune import atomic
from autoprune.errors import UserError
from autoprune.export import export_onnx, save_pytorch
from autoprune.policy import Policy
from autoprune.problem import Problem
from autoprune.report import render
from autoprune.search import JOURNAL
from autoprune.search.base import Journal, can_be_best


@dataclass
class PolicyOutcome:
    """A policy and the pruned model it gives, with the measured costs and accuracies."""

    policy: Policy
    pruned: nn.Module
    baseline: dict = field(default_factory=dict)  # the unpruned model's metrics, same keys as policy.metrics


def cost_metrics(problem: Problem, kept) -> dict[str, float]:
    """A policy's FLOPs and params (counted, and as shares of the unpruned model) and its predicted latency."""
    c = problem.cost(kept)
    out = {
        "flops": c["flops"],
        "params": c["params"],
        "flops_share": c["flops"] / problem.cost.baseline["flops"],
        "params_share": c["params"] / problem.cost.baseline["params"],
    }
    if "latency" in c:
        out["latency_predicted_us"] = c["latency"]
    return out


def write_history(history: pd.DataFrame, path: Path) -> None:
    atomic.write_text(path, history.to_csv(index=False))


def save_outcome(outcome: PolicyOutcome, out_dir: str | Path, onnx: bool = True) -> Path:
    """Write ``policy.json``, ``pruned.pt`` (+ ``pruned_state.pt``) and ``pruned.onnx`` into a run directory.

    Each file is replaced atomically and policy.json is written last, so a directory holding a policy.json always
    holds the model files that go with it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_pytorch(outcome.pruned, out / "pruned.pt", out / "pruned_state.pt")
    if onnx:
        export_onnx(outcome.pruned, outcome.policy.input_shape, out / "pruned.onnx")
    outcome.policy.save(out / "policy.json")
    return out / "policy.json"


def write_run_dir(run_dir: Path, history: pd.DataFrame, outcome: PolicyOutcome) -> None:
    """Write a finished search's files all or nothing: each goes to a temporary file beside its target, and only
    once every one is written are they renamed into place. A full disk (or any failed write) leaves the run
    directory as it was and is one line."""
    try:
        with atomic.batch():
            write_history(history, run_dir / "history.csv")
            save_outcome(outcome, run_dir)
            render(run_dir, policy=outcome.policy, history=history)
    except OSError as e:
        where = e.filename or run_dir
        raise UserError(
            f"could not write the run directory {run_dir}: {e.strerror or e} ({where}); its previous files are "
            "unchanged: free space (or fix the permissions) and run the same command again (a --resume or a "
            "study reuses every evaluation)"
        ) from e


def save_interrupted(run_dir: Path, problem: Problem, rows: list[dict] | None = None) -> Path | None:
    """After Ctrl-C: write the best feasible policy evaluated so far and the history (``rows``: the search's
    evaluations; by default those of the run directory's journal)."""
    if rows is None:
        rows = Journal(run_dir / JOURNAL).read()
    scored = [r for r in rows if r.get("reward") is not None and can_be_best(r["reward"], r.get("feasible", True))]
    if not scored:
        return None
    best = max(scored, key=lambda r: r["reward"])
    metrics = cost_metrics(problem, best["kept"])
    metrics["held_out_accuracy"] = best.get("accuracy")
    policy = Policy.from_kept(
        problem.graph,
        best["kept"],
        budget=problem.budget,
        metrics=metrics,
        search={"interrupted": True, "evaluations": len(rows), "reward": best["reward"]},
    )
    with atomic.batch():  # the history and its best policy replace the old files together
        write_history(pd.DataFrame(rows), run_dir / "history.csv")
        policy.save(run_dir / "policy.json")
    return run_dir / "policy.json"
