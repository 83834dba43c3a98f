"""Data-parallel training over several processes with ``torch.distributed`` (DDP), one GPU or CPU share each.

A fine-tune (or ``train``) started by ``torchrun --nproc-per-node N -m autoprune ...`` — or by ``--nproc N``, which
starts exactly that — runs in N processes. :func:`current` reads torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``) and joins the process group: NCCL between GPUs, gloo between CPU processes. Each process then
trains on its shard of every epoch (``DistributedSampler``'s split: one shuffled order shared by all ranks, padded
to a multiple of N, rank r taking every N-th sample from r) with a per-process batch of ``batch_size / N``, so the
global batch, the steps and the learning-rate schedule are those of one process, and DDP averages the gradients.
Only rank 0 writes files and prints.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from autoprune.errors import UserError

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# the search before a fine-tune, or a slow rank's checkpoint: waiting is not a hang
TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (``size`` 1: no process group)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, n: int, order: torch.Tensor | None = None) -> torch.Tensor:
        """This rank's indices of ``n`` samples taken in ``order`` (default 0..n-1), as ``DistributedSampler``
        splits them: padded by wrapping to a multiple of ``size``, then every ``size``-th from ``rank``."""
        order = torch.arange(n) if order is None else order
        if self.size == 1:
            return order
        total = -(-n // self.size) * self.size
        padded = torch.cat([order, order[: total - n]]) if total > n else order
        return padded[self.rank : total : self.size]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


SINGLE = World()


def launched() -> bool:
    """Whether torchrun (or ``--nproc``) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current(device: torch.device | None = None) -> World:
    """This process's :class:`World`, joining the process group on first use (NCCL for CUDA, else gloo)."""
    if not launched():
        return SINGLE
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        if device is not None and device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=TIMEOUT)
    return world


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS reports one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_per_process(n: int) -> int:
    """Torch threads for each of ``n`` processes sharing this machine's cores without oversubscribing them."""
    return max(1, usable_cores() // n)


def relaunch(nproc: int, argv: list[str]) -> int:
    """Run ``python -m autoprune ARGV`` as ``nproc`` processes under torchrun (one host); returns its exit code."""
    if nproc < 1:
        raise UserError(f"--nproc {nproc} must be at least 1")
    if launched():
        raise UserError("--nproc inside torchrun: torchrun already started the processes; drop --nproc")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += ["-m", "autoprune", *argv]
    # torchrun sets OMP_NUM_THREADS=1 for every process unless it is set: share the cores instead
    env = {"OMP_NUM_THREADS": str(threads_per_process(nproc)), **os.environ}
    return subprocess.run(cmd, env=env).returncode


def without_flag(argv: list[str], flag: str, takes_value: bool = True) -> list[str]:
    """``argv`` without ``flag`` (and its value, in either ``--flag V`` or ``--flag=V`` form)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = takes_value
        elif not a.startswith(flag + "="):
            out.append(a)
    return out
