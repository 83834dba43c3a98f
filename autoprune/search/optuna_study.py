"""The Optuna study a search shares with its workers: its storage, its trials' bookkeeping, and the mirror that keeps a
worker's :class:`~autoprune.search.base.SearchContext` equal to it.

Used by the strategy (:mod:`autoprune.search.optuna_search`) and by the ``--workers`` parent that watches its
children (:mod:`autoprune.search.workers`); where a study lives and how a dead worker's trial is retried is told in
the strategy's docstring.
"""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from autoprune.errors import UserError
from autoprune.search.base import SearchContext

JOURNAL = "journal:"  # storage prefix of an Optuna journal file: journal:PATH
CONVERGED = "converged"  # study user attr: why the study ended before its budget (every worker stops on it)
# user attrs of one attempt, not carried into its retry
PER_ATTEMPT = ("worker", "row", "error", "surplus", "repeat", "kept")
POLL_S = 0.5  # how often a worker waiting for the others' trials looks at the study again


def redact(url: str) -> str:
    """The storage URL with any password replaced by ``***`` (safe to print)."""
    if url.startswith(JOURNAL):
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL sqlalchemy understands: print nothing secret of it
        return url.split("@")[-1] if "@" in url else url


def worker_id() -> str:
    """``host:pid``: which process runs a trial, so a dead one's trials can be found."""
    return f"{socket.gethostname()}:{os.getpid()}"


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


def fail_and_retry(study: optuna.Study, trial: FrozenTrial, reason: str, max_retry: int | None) -> bool:
    """Mark a RUNNING trial FAIL and queue its retry; False when another process already finished it."""
    try:
        if not study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    RetryStaleTrial(max_retry, reason)(study, study._storage.get_trial(trial._trial_id))
    return True


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


def study_args(url: str, name: str) -> dict:
    """The ``autoprune.api.search`` arguments a study was started with (its user attribute ``args``)."""
    storage = open_storage(url)
    if name not in optuna.study.get_all_study_names(storage):
        raise UserError(
            f"no Optuna study {name!r} in {redact(url)}: check --study (studies there: "
            f"{', '.join(optuna.study.get_all_study_names(storage)) or 'none'})"
        )
    study = optuna.load_study(study_name=name, storage=storage)
    args = study.user_attrs.get("args")
    if not isinstance(args, dict):
        raise UserError(
            f"study {name!r} in {redact(url)} does not describe its search (no 'args' attribute): it "
            "was not started by `autoprune search` with a named model and dataset"
        )
    return args


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


def trial_counts(study: optuna.Study) -> tuple[int, list[FrozenTrial]]:
    """The number of COMPLETE trials and the RUNNING trials (oldest first)."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    running = sorted((t for t in trials if t.state == TrialState.RUNNING), key=lambda t: t._trial_id)
    return complete, running


class StudyMirror:
    """Keeps a :class:`SearchContext` equal to the study: one row per COMPLETE trial, in trial-number order.

    So the progress line shows the study's global evaluation count and best, the history and the best policy are
    the study's whichever worker builds them, and the reward cache of this worker's evaluator learns every policy
    another worker evaluated (an identical policy proposed again is not evaluated twice).
    """

    def __init__(self, study: optuna.Study, ctx: SearchContext) -> None:
        self.study, self.ctx = study, ctx
        self.synced: tuple[int, ...] = ()

    def sync(self) -> bool:
        """Rebuild the context's rows from the study; True when the set of complete trials changed."""
        done = sorted(
            (t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "row" in t.user_attrs),
            key=lambda t: t.number,
        )
        numbers = tuple(t.number for t in done)
        changed = numbers != self.synced
        ctx = self.ctx
        ctx.rows.clear()
        ctx.best_kept, ctx.best_reward = None, None
        evaluator = getattr(ctx.reward, "evaluator", None)
        for t in done:
            row = json.loads(t.user_attrs["row"])
            row["kept"] = tuple(row["kept"])
            row["trial"] = t.number
            ctx.add_row(row)
            acc = row.get("accuracy")
            if evaluator is not None and changed and acc is not None and math.isfinite(acc):
                evaluator.remember(row["kept"], ctx.reward.finetune_steps, acc)
        self.synced = numbers
        return changed
