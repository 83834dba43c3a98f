"""Which latency table a search uses when the user names none: one measured on *this* device, found or built.

A table is chosen by the identity it records (:mod:`autoprune.cost.device_identity`), never because a file sits
at the expected path: a shipped table whose directory name looked right was once used on a CPU with another
instruction set, and its prediction called a model 2x over budget "met". When no shipped or cached table matches,
one is built here (a minute or a few) and cached under this device's id, so the next search finds it.

The cache is looked in before the shipped tables: a table there was built or re-anchored on this very machine
(``search`` re-anchors a drifted shipped table into the cache rather than rewrite the repository's file), while a
shipped one was measured on another machine that only shares this one's identity.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from autoprune.cost.device_identity import Difference, compare, device_name, identify
from autoprune.cost.latency_table import LatencyTable, default_table_path, table_file_name

SHIPPED_TABLES = Path(__file__).resolve().parents[2] / "latency_tables"


@dataclass
class TableChoice:
    """The table a search will use, whether it was built just now, and the tables passed over and why."""

    path: Path
    built: bool
    passed_over: list[tuple[Path, list[Difference]]] = field(default_factory=list)


def find_table(
    model: str,
    input_shape: Sequence[int],
    roots: Sequence[Path],
    *,
    backend: str = "onnxruntime",
    threads: int = 2,
    device: str = "cpu",
    here: dict | None = None,
) -> tuple[Path | None, list[tuple[Path, list[Difference]]]]:
    """The first table for ``model`` at ``input_shape`` under ``roots`` whose recorded device is this one (and
    measured with the same backend, threads and device), and every other such table with its differences."""
    here = here or identify(backend, threads, device)
    passed_over: list[tuple[Path, list[Difference]]] = []
    for root in roots:
        for csv in sorted(Path(root).glob(f"*/{table_file_name(model, input_shape)}")):
            try:
                meta = json.loads(csv.with_suffix(".json").read_text())
                settings = (meta["backend"], int(meta["threads"]), meta.get("device", "cpu"))
                recorded = dict(meta.get("fingerprint", {}))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue  # not a readable table: never chosen; `latency-table show` says what is wrong with it
            if settings != (backend, threads, device):
                continue
            diffs = [d for d in compare(recorded, here) if not d.note]
            if not diffs:
                return csv, passed_over
            passed_over.append((csv, diffs))
    return None, passed_over


# Kept channels are rounded to a multiple of the device's channel block (the width its convolution kernels compute
# at once): other widths fall to slower kernels, and a cut in FLOPs would buy no speed. Without a table of this device
# to say, 8: the block of onnxruntime's AVX2 and Arm kernels, and half of AVX-512's.
FALLBACK_BLOCK = 8


def channel_block(model: str, input_shape: Sequence[int], cache_root: Path, *, threads: int = 2) -> int:
    """The channel block of this device for ``model`` at ``input_shape``: from a cached or shipped table of this
    device, else :data:`FALLBACK_BLOCK`. Nothing is measured."""
    found, _ = find_table(model, input_shape, [cache_root, SHIPPED_TABLES], threads=threads)
    if found is None:
        return FALLBACK_BLOCK
    try:
        return max(1, int(json.loads(found.with_suffix(".json").read_text())["channel_block"]))
    except (OSError, ValueError, KeyError, TypeError):
        return FALLBACK_BLOCK


def choose_table(
    model: str,
    input_shape: Sequence[int],
    cache_root: Path,
    build: Callable[[], LatencyTable],
    *,
    threads: int = 2,
    on_phase: Callable[[str], None] | None = None,
) -> TableChoice:
    """A table of this device for ``model``: cached, shipped, or built now and cached by this device's id.

    ``build()`` measures ``model``'s table at ``input_shape`` with ``threads`` threads here (e.g.
    :func:`autoprune.latency_workflows.build_table`); it is called only when no shipped or cached table matches."""
    here = identify("onnxruntime", threads, "cpu")
    found, passed_over = find_table(model, input_shape, [cache_root, SHIPPED_TABLES], threads=threads, here=here)
    if found is not None:
        return TableChoice(found, False, passed_over)
    path = default_table_path(model, input_shape, here, cache_root)
    if on_phase is not None:
        others = "; ".join(f"{p.parent.name}: {diffs[0].text}" for p, diffs in passed_over[:3])
        on_phase(
            f"no latency table of this device ({device_name(here)}) for {model}"
            f"{' (passed over ' + others + ')' if others else ''}: building one here, once; cached as {path}"
        )
    build().save(path)
    return TableChoice(path, True, passed_over)
