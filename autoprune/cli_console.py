"""What every command prints with: the consoles (stdout for results, stderr for progress and errors) and the parsing
of an ``NxCxHxW`` flag."""

from __future__ import annotations

import sys

from rich.console import Console

from autoprune.models import parse_input_shape

# Off a terminal (pipes, CI logs) rich would wrap at 80 columns and cut group names: print wide instead.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def shape_option(text: str | None) -> tuple[int, ...] | None:
    """An ``--input-shape`` flag (``1x3x224x224``) as a tuple; None when not given."""
    return parse_input_shape(text) if text else None
