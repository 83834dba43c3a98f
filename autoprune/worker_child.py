"""A child of ``--workers``: ``python -m autoprune.worker_child SPEC.json [DEVICE]``, started and watched by its parent
(:func:`autoprune.search.workers.run_local_workers`).

SPEC holds the parent's :class:`~autoprune.spec.RunSpec` pointed at the shared storage; the child runs trials of
that study through the same pipeline (role ``worker``: it writes no run directory) until the study holds its budget,
printing one line per evaluation to its log. DEVICE (default: the spec's) is this worker's, e.g. its own GPU.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import torch

from autoprune.errors import UserError
from autoprune.pipeline import run
from autoprune.spec import RunSpec


def _print_progress(event) -> None:
    best = f"{event.best_reward:.4f}" if event.best_reward is not None else "-"
    reward = f"{event.reward:.4f}" if event.reward is not None else "-"
    print(
        f"evaluated: reward {reward}; study {event.evaluation}/{event.episodes} complete, best {best} "
        f"({event.seconds:.0f} s)",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    """A child of ``--workers``: run trials of the shared study until its budget is spent; write no run dir."""
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    torch.set_num_threads(int(spec["threads"]))
    run_spec = RunSpec.from_json(spec["spec"])
    if len(argv) > 1:
        run_spec = run_spec.replace(device=argv[1])
    where = f"{spec['threads']} torch thread(s), device {run_spec.device}"
    print(f"worker {socket.gethostname()}:{os.getpid()} with {where}", flush=True)
    try:
        run(run_spec, role="worker", trust_pickle=spec["trust_pickle"], callback=_print_progress)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
