"""Where an Optuna study lives: opening a storage (an RDB URL, ``journal:PATH``, or memory) with the heartbeat that
lets a dead worker's trial be retried, and telling a lost database apart from other errors.

Storage is Optuna's concern and kept apart from the study's bookkeeping (:mod:`autoprune.search.optuna_study`), as
Optuna keeps ``optuna/storages`` apart from ``optuna/samplers``.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

from autoprune.errors import UserError

JOURNAL = "journal:"  # storage prefix of an Optuna journal file: journal:PATH
# user attrs of one attempt, not carried into its retry
PER_ATTEMPT = ("worker", "row", "error", "surplus", "repeat", "kept")


def redact(url: str) -> str:
    """The storage URL with any password replaced by ``***`` (safe to print)."""
    if url.startswith(JOURNAL):
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL sqlalchemy understands: print nothing secret of it
        return url.split("@")[-1] if "@" in url else url


class RetryStaleTrial(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a trial whose worker died, without the dead attempt's per-attempt attributes.

    The WAITING copy keeps the parameters (so the same policy is evaluated again), the retry history in its system
    attributes (``failed_trial``: the original trial number) and a ``retry_reason``; ``worker``, ``row`` and
    ``error`` belonged to the attempt that died.
    """

    def __init__(self, max_retry: int | None = 3, reason: str = "its worker's heartbeat stopped") -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(max_retry=max_retry)
        self.reason = reason

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trial = copy.deepcopy(trial)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in PER_ATTEMPT}
        trial.user_attrs["retry_reason"] = self.reason
        super().__call__(study, trial)


def open_storage(
    url: str | None,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int | None = 3,
) -> BaseStorage | None:
    """An Optuna storage for ``url`` (None: in memory), or a one-line UserError naming the URL and the fix.

    RDB URLs get Optuna's heartbeat when ``heartbeat_interval`` is given; ``journal:PATH`` is a journal file
    (no heartbeat in Optuna: the ``--workers`` parent watches its children instead).
    """
    if url is None:
        return None
    if url.startswith(JOURNAL):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len(JOURNAL) :]).expanduser()
        if not path.parent.is_dir():
            raise UserError(f"no directory {path.parent} for the journal storage {url}: create it or fix --storage")
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    kwargs: dict[str, Any] = {}
    if url.startswith("postgresql"):
        kwargs["engine_kwargs"] = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    if heartbeat_interval:
        kwargs.update(
            heartbeat_interval=int(heartbeat_interval),
            grace_period=int(grace_period or 2 * heartbeat_interval),
            heartbeat_stale_trial_callback=RetryStaleTrial(max_retry),
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, **kwargs)
    except ImportError as e:
        fix = (
            "pip install 'psycopg[binary]' (autoprune's postgres extra)"
            if url.startswith("postgresql")
            else ("install the driver SQLAlchemy names for this URL")
        )
        raise UserError(f"the storage {redact(url)} needs a database driver ({e.__cause__ or e}): {fix}") from e
    except Exception as e:  # noqa: BLE001 - sqlalchemy's connection errors, Optuna's schema errors, bad URLs
        reason = " ".join(str(getattr(e, "orig", None) or e).split())[:200]
        raise UserError(
            f"cannot open the Optuna storage {redact(url)} ({reason}): start the database and check "
            "host, port, user and database name in --storage"
        ) from e


def check_storage(url: str | None) -> None:
    """Fail early, before any model work, when a ``--storage`` cannot be opened."""
    storage = open_storage(url)
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()


def storage_failure(e: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The storage error behind ``e``, if any: Optuna re-raises a lost database as itself or, while cleaning up
    after it, as another error whose context it is (Optuna 5.0's ``_run_trial`` raises ``UnboundLocalError``)."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, kinds):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def lost_storage(e: BaseException) -> BaseException | None:
    """The database error behind ``e`` when the storage went away (:func:`storage_failure` for an RDB's kinds)."""
    from sqlalchemy.exc import SQLAlchemyError  # Optuna's RDB storage brings SQLAlchemy; a journal file does not

    return storage_failure(e, (SQLAlchemyError, optuna.exceptions.StorageInternalError))


@contextlib.contextmanager
def quiet_heartbeat_failures() -> Iterator[None]:
    """While a search runs: Optuna's heartbeat thread raises when the database goes away, and Python would print
    that thread's traceback. The trial loop reports the lost storage in one line, so the thread's is not printed."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None or lost_storage(args.exc_value) is None:
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous
