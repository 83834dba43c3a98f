"""``--workers N``: N local processes running the trials of one shared Optuna study, watched by their parent.

Why processes and not Optuna's ``n_jobs`` threads: an evaluation is CPU-bound PyTorch work that holds the GIL
between kernels, and a worker that dies (killed, out of memory) must not take the others with it. Each child is an
ordinary worker of the study — the same code path as a worker started on another machine with ``--storage`` and
``--study`` — with ``max(1, cores // N)`` torch threads, so N workers do not oversubscribe the cores.

The study lives in a journal file in the run directory (or in ``--storage``). Optuna's journal storage has no
heartbeat, so the parent does the heartbeat's job: when a child exits on a signal its RUNNING trial is marked FAIL
and queued again (:func:`autoprune.search.optuna_study.fail_and_retry`) for the children still alive. A child
that fails with an error (exit code > 0) stops the search with that error. The parent itself evaluates nothing: it
mirrors the study for the progress line and, when the study holds its budget of complete trials, returns, and
:func:`autoprune.pipeline.run` writes the run directory from the study.

A child is ``python -m autoprune.worker_child SPEC.json`` (:data:`CHILD_MODULE`): SPEC holds the parent's
:class:`~autoprune.spec.RunSpec` pointed at the shared storage. It is a process of its own, not a function called
here, so this module (below the API) never imports the API that the child runs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from autoprune.compute import worker_devices
from autoprune.distributed import threads_per_process
from autoprune.errors import UserError
from autoprune.search.base import SearchContext
from autoprune.search.optuna_study import CONVERGED, POLL_S, StudyMirror, fail_and_retry, trial_counts

PARENT_ENV = "AUTOPRUNE_WORKER_PARENT"  # a child's parent pid: the child stops when its parent is gone
LOG_DIR = "workers"  # in the run directory: spec.json and one log per child
CHILD_MODULE = "autoprune.worker_child"  # a child's entry point (python -m)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_dead_local_trials(
    study: optuna.Study, max_retry: int | None, reason: str, *, dead: set[str] | None = None, everyone: bool = False
) -> list[int]:
    """Fail and retry the RUNNING trials of workers on this host that are gone; returns their trial numbers.

    ``dead``: worker ids (``host:pid``) known to have exited (a parent's children, whose pids it has reaped). Else
    a worker on this host counts as gone when its pid is not alive; ``everyone`` also takes trials that never
    named their worker (a killed single-process search, on ``--resume``).
    """
    host, reaped = socket.gethostname(), []
    for t in trial_counts(study)[1]:
        w = t.user_attrs.get("worker")
        if w is None:
            gone = everyone
        elif dead is not None:
            gone = w in dead
        else:
            h, _, pid = str(w).rpartition(":")
            gone = h == host and pid.isdigit() and not pid_alive(int(pid))
        if gone and fail_and_retry(study, t, reason if w is None else f"{reason} ({w})", max_retry):
            reaped.append(t.number)
    return reaped


def parent_gone() -> bool:
    """In a child: whether the parent that started it has died (then the child stops after its trial)."""
    parent = os.environ.get(PARENT_ENV)
    return parent is not None and os.getppid() != int(parent)


def _last_error(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.is_file() else []
    errors = [ln for ln in lines if ln.startswith("error:")]
    text = errors[-1][len("error:") :].strip() if errors else (lines[-1] if lines else "no output")
    return text[:400]


def worker_spec(strategy, study: optuna.Study, storage_url: str | None, n: int) -> dict:
    """What a child is started with: the search's :class:`~autoprune.spec.RunSpec` pointed at the shared study
    (one process each), whether to trust pickles, and its torch threads."""
    spec = strategy.spec.replace(
        options={**strategy.spec.options, "storage": storage_url, "study_name": study.study_name, "workers": 1}
    )
    return {"spec": spec.to_json(), "trust_pickle": strategy.trust_pickle, "threads": threads_per_process(n)}


def run_local_workers(strategy, study: optuna.Study, ctx: SearchContext, mirror: StudyMirror) -> None:
    """Start ``--workers`` children on the study, watch them, return when the budget is spent.

    ``strategy``: the :class:`~autoprune.search.optuna_search.OptunaStrategy` of the parent (its options, run
    directory, storage and spec)."""
    o, run_dir = strategy.options, strategy.workdir
    if strategy.spec is None or run_dir is None:
        raise UserError(
            "--workers needs a model and a dataset by name and a run directory (--out): the workers "
            "rebuild them in their own processes"
        )
    n = o["workers"]
    logs = run_dir / LOG_DIR
    logs.mkdir(parents=True, exist_ok=True)
    spec = worker_spec(strategy, study, strategy.storage_url(), n)
    spec_path = logs / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    env = {**os.environ, PARENT_ENV: str(os.getpid()), "OMP_NUM_THREADS": str(spec["threads"])}
    procs: list[subprocess.Popen] = []
    log_paths = [logs / f"worker-{k}.log" for k in range(n)]
    devices = worker_devices(strategy.spec.device, n)  # each GPU of this host its worker(s)
    try:
        for path, device in zip(log_paths, devices, strict=True):
            with open(path, "ab") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", CHILD_MODULE, str(spec_path), device],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=env,
                    )
                )
        _watch(procs, log_paths, study, o["max_retry"], ctx, mirror)
    finally:
        _stop(procs, study, o["max_retry"])
        mirror.sync()  # what the children finished last is the parent's too (Ctrl-C saves the best of it)
    complete = trial_counts(study)[0]
    if complete < ctx.episodes and not study.user_attrs.get(CONVERGED):
        failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
        raise UserError(
            f"every worker has stopped with {complete} of {ctx.episodes} trials complete ({failed} "
            f"failed; logs in {logs}): continue with autoprune search --resume {run_dir}"
        )


def _watch(
    procs: list[subprocess.Popen],
    log_paths: list[Path],
    study: optuna.Study,
    max_retry: int | None,
    ctx: SearchContext,
    mirror: StudyMirror,
) -> None:
    """Until every child has exited: a child that died gives its RUNNING trial back at once (not after a grace
    period), one that failed with an error stops the search with it, and the progress follows the study."""
    host, exited = socket.gethostname(), set()
    while len(exited) < len(procs):
        for k, p in enumerate(procs):
            if k in exited or p.poll() is None:
                continue
            exited.add(k)
            if p.returncode != 0:
                how = f"signal {-p.returncode}" if p.returncode < 0 else f"exit {p.returncode}"
                reap_dead_local_trials(study, max_retry, f"worker {k} died ({how})", dead={f"{host}:{p.pid}"})
            if p.returncode > 0:
                raise UserError(f"worker {k} failed: {_last_error(log_paths[k])} (log: {log_paths[k]})")
        if mirror.sync() and ctx.callback is not None and ctx.rows:
            ctx.callback(ctx.event(ctx.rows[-1].get("reward")))
        if len(exited) < len(procs):
            time.sleep(POLL_S)


def _stop(procs: list[subprocess.Popen], study: optuna.Study, max_retry: int | None) -> None:
    """Stop the children still running (Ctrl-C, an error): SIGTERM, then a kill after 30 s; their trials are
    re-run on --resume."""
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
        p.send_signal(signal.SIGTERM)
    for p in alive:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if alive:
        host = socket.gethostname()
        reap_dead_local_trials(study, max_retry, "the search was stopped", dead={f"{host}:{p.pid}" for p in alive})
