"""The Optuna study a search shares with its workers: its trials' bookkeeping, and the mirror that keeps a
worker's :class:`~autoprune.search.base.SearchContext` equal to it.

Used by the strategy (:mod:`autoprune.search.optuna_search`) and by the ``--workers`` parent that watches its
children (:mod:`autoprune.search.workers`); where a study lives and how a dead worker's trial is retried is told in
the strategy's docstring.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.errors import UserError
from autoprune.search.base import SearchContext
from autoprune.search.optuna_storage import RetryStaleTrial, open_storage, redact

CONVERGED = "converged"  # study user attr: why the study ended before its budget (every worker stops on it)
POLL_S = 0.5  # how often a worker waiting for the others' trials looks at the study again


def worker_id() -> str:
    """``host:pid``: which process runs a trial, so a dead one's trials can be found."""
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_and_retry(study: optuna.Study, trial: FrozenTrial, reason: str, max_retry: int | None) -> bool:
    """Mark a RUNNING trial FAIL and queue its retry; False when another process already finished it."""
    try:
        if not study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    RetryStaleTrial(max_retry, reason)(study, study._storage.get_trial(trial._trial_id))
    return True


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
                evaluator.remember(row["kept"], ctx.reward.finetune_steps, acc, distill_loss=row.get("distill_loss"))
        self.synced = numbers
        return changed


def file_sha256(path: str | Path | None) -> str | None:
    if path is None or not Path(path).expanduser().is_file():
        return None
    h = hashlib.sha256()
    with open(Path(path).expanduser(), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


IDENTITY_KEYS = (
    "model",
    "input_shape",
    "data",
    "budget",
    "min_keep",
    "round_to",
    "criterion",
    "held_out",
    "reward",
    "seed",
    "table",
)


def study_identity(described: dict, *, sampler: str, objective_cost: str, fingerprint: str) -> dict:
    """What every worker of one study must agree on (``described``: the search's
    :attr:`~autoprune.spec.RunSpec.described`): the problem, the reward and the budget; weights and a latency table
    are compared by content, not by where they lie."""
    ident = {k: described.get(k) for k in IDENTITY_KEYS}
    ident.update(
        sampler=sampler,
        objective_cost=objective_cost,
        finetune_steps=(described.get("options") or {}).get("finetune_steps"),
        episodes=None,
        fingerprint=fingerprint,
        weights_sha256=file_sha256(described.get("weights")),
    )
    if ident["table"] is not None:
        ident["table"] = file_sha256(ident["table"]) or ident["table"]
    return json.loads(json.dumps(ident))


def describe_study(
    study: optuna.Study, mine: dict, *, args: dict | None, groups: list[str], where: str, resume: bool, role: str
) -> None:
    """Write the study's self-description (``args``: the spec that re-runs it; the group names; ``mine``: its
    identity), or check this worker against the one already there."""
    attrs = study.user_attrs
    if "identity" not in attrs:
        if args is not None:
            study.set_user_attr("args", args)
        study.set_user_attr("groups", groups)
        study.set_user_attr("identity", mine)
        attrs = study.user_attrs  # a worker racing to describe it may have won: check against what is there
    theirs = attrs.get("identity") or {}
    for key, value in mine.items():
        if key == "episodes" and (resume or role == "read"):
            continue
        if theirs.get(key) != value:
            raise UserError(
                f"study {study.study_name!r} in {where} was started with {key}={theirs.get(key)!r} but this "
                f"worker has {value!r}: start every worker of a study with the same arguments, or use another "
                "--study"
            )
    if resume and theirs.get("episodes") != mine["episodes"] and role == "search":
        study.set_user_attr("identity", {**theirs, "episodes": mine["episodes"]})
