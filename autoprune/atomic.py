"""Atomic file writes: write to a temporary file in the same directory, fsync, then rename over the target.

A kill at any moment leaves either the old file or the new one, never half of one. Inside :func:`batch` the renames
wait until the block ends, so a group of files (a run directory) is replaced together or not at all.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

_pending: contextvars.ContextVar[list[tuple[Path, Path]] | None] = contextvars.ContextVar("atomic_batch", default=None)


@contextlib.contextmanager
def batch() -> Iterator[None]:
    """Defer the renames of every atomic write in the block until it ends without an error.

    Then all the new files replace their targets one after the other (renames, which need no space); on an error
    (a full disk, a failed export) none does, their temporaries are removed and every target keeps its old content.
    A batch inside a batch joins the outer one.
    """
    if _pending.get() is not None:
        yield
        return
    pending: list[tuple[Path, Path]] = []
    token = _pending.set(pending)
    try:
        yield
    except BaseException:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        _pending.reset(token)
    for tmp, target in pending:
        os.replace(tmp, target)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically (at the end of the
    enclosing :func:`batch`, if any). An OSError names ``path`` when it names no file itself."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    deferred = False
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes files private; give them the usual mode
        pending = _pending.get()
        if pending is not None:
            pending.append((tmp_path, path))
            deferred = True
        else:
            os.replace(tmp_path, path)
    except OSError as e:
        if e.filename is None:
            e.filename = str(path)
        raise
    finally:
        if not deferred:
            tmp_path.unlink(missing_ok=True)


def write_with(path: str | Path, writer: Callable[[IO[bytes]], None]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        writer(f)


def write_text(path: str | Path, text: str) -> None:
    write_with(path, lambda f: f.write(text.encode()))


def torch_save(obj: object, path: str | Path) -> None:
    import torch

    write_with(path, lambda f: torch.save(obj, f))
