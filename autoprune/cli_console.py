"""What every command prints with: the consoles (stdout for results, stderr for progress and errors) and the parsing
of an ``NxCxHxW`` flag."""

from __future__ import annotations

import os
import sys

from rich.console import Console

from autoprune.models import parse_input_shape

# Off a terminal (pipes, CI logs) rich would wrap at 80 columns and cut group names: print wide instead.
# Under torchrun only rank 0 prints results and progress (every rank still prints its errors).
RANK0 = os.environ.get("RANK", "0") == "0"
console = Console(width=None if sys.stdout.isatty() else 160, quiet=not RANK0)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def shape_option(text: str | None) -> tuple[int, ...] | None:
    """An ``--input-shape`` flag (``1x3x224x224``) as a tuple; None when not given."""
    return parse_input_shape(text) if text else None
