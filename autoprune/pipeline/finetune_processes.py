"""The search's final fine-tune in ``--nproc N`` processes (torch.distributed), through ``autoprune finetune``.

A search itself runs in one process (its evaluations are sequential decisions; ``--workers`` parallelises an
Optuna study). When it has chosen a policy, the fine-tune of the pruned model is an ordinary training run, and that
is what data parallelism speeds up. Rather than a second implementation, the search starts exactly the command a
user would type — ``autoprune finetune --policy P --nproc N ...`` on the chosen policy, written to a temporary
directory — and loads the fine-tuned weights it saves. The same code path, the same checkpoints, the same result.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

from autoprune.distributed import relaunch
from autoprune.errors import UserError
from autoprune.pipeline.setup import Setup
from autoprune.policy import Policy


def finetune_argv(setup: Setup, policy_path: Path, out: Path, lr: float) -> list[str]:
    """``autoprune finetune``'s arguments for the spec's fine-tune of the policy at ``policy_path``."""
    spec = setup.spec
    argv = ["finetune", "--model", spec.model, "--policy", str(policy_path), "--data", str(spec.data)]
    argv += ["--epochs", repr(spec.finetune_epochs), "--lr", repr(lr), "--seed", str(spec.seed)]
    argv += ["--criterion", spec.criterion, "--device", spec.device, "--amp", spec.amp, "--out", str(out)]
    argv += ["--kd" if spec.kd else "--no-kd"]
    if spec.weights is not None:
        argv += ["--weights", str(spec.weights)]
    if spec.loader_workers is not None:
        argv += ["--loader-workers", str(spec.loader_workers)]
    return argv


def finetune_in_processes(setup: Setup, pruned: nn.Module, kept: list[int], lr: float) -> float:
    """Fine-tune ``pruned`` (the spec's model pruned to ``kept``) in ``spec.nproc`` processes; loads the result into
    ``pruned`` and returns the seconds it took."""
    spec = setup.spec
    if not isinstance(spec.data, str):
        raise UserError("--nproc needs data named by a string (e.g. imagefolder:PATH), not a loaded bundle")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="autoprune-finetune-") as tmp:
        policy_path, out = Path(tmp) / "policy.json", Path(tmp) / "pruned.pt"
        Policy.from_kept(setup.graph, kept, budget=spec.budget).save(policy_path)
        code = relaunch(spec.nproc, finetune_argv(setup, policy_path, out, lr))
        if code != 0:
            raise UserError(f"the fine-tune in {spec.nproc} processes failed (exit {code}): its error is above")
        pruned.load_state_dict(torch.load(out.with_name("pruned_state.pt"), map_location="cpu", weights_only=True))
    return time.perf_counter() - started
