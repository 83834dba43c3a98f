"""The README's failure table, row by row (a killed worker: tests/test_workers.py).

Each failure is made real: a full disk is /dev/full behind the file being written, an unreachable database is a
loopback port nothing listens on, and the failing models are real models that break for some pruned widths.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from autoprune.budget import parse_budget
from autoprune.cost.model import CostModel
from autoprune.data import make_synthetic
from autoprune.layers import analyze
from autoprune.problem import Problem
from autoprune.prune import ChannelPruner
from autoprune.reward import Evaluator
from autoprune.search import run_search
from tests import _failing_models

ROOT = Path(__file__).resolve().parent.parent
SHAPE = (1, 1, 16, 16)
TINY = [
    "--input-shape",
    "1x1x16x16",
    "--data",
    "synthetic",
    "--budget",
    "flops=50%",
    "--held-out",
    "64",
    "--finetune-epochs",
    "0",
    "--no-measure",
]


def problem_of(factory) -> tuple[Problem, Evaluator]:
    torch.manual_seed(0)
    model = factory()
    graph = analyze(model, SHAPE, "resnet20")
    data = make_synthetic(SHAPE[1:], n_train=256, n_test=64, held_out=64)
    evaluator = Evaluator(
        ChannelPruner(model, SHAPE, graph=graph), data, held_out=64, calib_batches=1, calib_batch_size=32
    )
    return Problem(graph, CostModel(graph), parse_budget("flops=50%")), evaluator


def trials_of(run) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="autoprune-tpe", storage=f"sqlite:///{run}/optuna.db").trials


def test_a_model_that_raises_fails_its_trial_and_the_study_goes_on(tmp_path):
    problem, evaluator = problem_of(_failing_models.raising)
    result = run_search("optuna", problem, evaluator, episodes=8, seed=0, workdir=tmp_path)
    trials = trials_of(tmp_path)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed, "the seed no longer proposes a policy this model breaks on: pick another seed"
    assert all(t.user_attrs["error"].startswith("RuntimeError: this model cannot run with") for t in failed)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 8 == result.evaluations  # the budget, still
    assert not _failing_models.broken(evaluator.pruner.apply(list(result.best_kept)))


def test_nan_accuracy_fails_the_trial_and_is_never_best(tmp_path):
    problem, evaluator = problem_of(_failing_models.nan_outputs)
    result = run_search("optuna", problem, evaluator, episodes=8, seed=0, workdir=tmp_path)
    failed = [t for t in trials_of(tmp_path) if t.state == TrialState.FAIL]
    assert failed and all("not finite" in t.user_attrs["error"] for t in failed)
    assert result.evaluations == 8 and result.history["reward"].notna().all()  # the history holds the scored ones
    assert math.isfinite(result.best_reward)
    # without a study (any strategy): the NaN rows stay in the history, and are never the best
    problem, evaluator = problem_of(_failing_models.nan_outputs)
    result = run_search("random", problem, evaluator, episodes=12, seed=0)
    rewards = result.history["reward"]
    assert rewards.isna().any() and math.isfinite(result.best_reward) and result.best_reward == rewards.max()


def test_a_model_that_always_fails_stops_with_one_line(run_cli, tmp_path):
    args = [
        "--model",
        "tests._failing_models:always_raising",
        *TINY,
        "--strategy",
        "optuna",
        "--episodes",
        "20",
        "--option",
        "max_failures=3",
        "--out",
        tmp_path / "run",
    ]
    code, _, err = run_cli("search", *args)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1, err
    assert "3 trials in a row failed" in lines[0] and "cannot run pruned" in lines[0]


def test_unreachable_database_is_one_line_before_model_work(run_cli, tmp_path, monkeypatch):
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def no_model_work(*args, **kwargs):
        raise AssertionError("the model was loaded before the storage was checked")

    monkeypatch.setattr("autoprune.pipeline.setup.load_model", no_model_work)
    url = f"postgresql://autoprune:s3cret@127.0.0.1:{port}/autoprune"
    code, out, err = run_cli(
        "search",
        "--model",
        "resnet20",
        *TINY,
        "--strategy",
        "optuna",
        "--storage",
        url,
        "--study",
        "s",
        "--out",
        tmp_path / "run",
    )
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert f"postgresql://autoprune:***@127.0.0.1:{port}/autoprune" in err and "s3cret" not in err + out
    assert "start the database" in err
    assert not (tmp_path / "run").exists()


def _digest(run) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.iterdir()) if p.is_file()}


def test_full_disk_keeps_the_previous_run_directory(run_cli, tmp_path, monkeypatch):
    run = tmp_path / "run"
    code, _, err = run_cli(
        "search", "--model", "resnet20", *TINY, "--strategy", "random", "--episodes", "4", "--out", run
    )
    assert code == 0, err
    before = _digest(run)
    assert {"policy.json", "pruned.pt", "pruned_state.pt", "pruned.onnx", "history.csv", "report.md"} <= set(before)

    real_mkstemp = tempfile.mkstemp

    def onnx_on_a_full_disk(*args, **kwargs):
        """The temporary file for pruned.onnx is /dev/full: writing it fails with ENOSPC, as on a full disk."""
        fd, path = real_mkstemp(*args, **kwargs)
        if str(kwargs.get("prefix", "")).startswith(".pruned.onnx."):
            os.close(fd)
            os.unlink(path)
            os.symlink("/dev/full", path)
            fd = os.open(path, os.O_WRONLY)
        return fd, path

    monkeypatch.setattr(tempfile, "mkstemp", onnx_on_a_full_disk)
    with pytest.raises(OSError) as full, open("/dev/full", "wb") as dev:  # the stand-in is a real full device
        dev.write(b"x")
        dev.flush()
    assert full.value.errno == errno.ENOSPC

    # the same search again (resumed: every evaluation reused), up to writing the run directory, which fails
    code, _, err = run_cli("search", "--resume", run)
    assert code != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: could not write the run directory"), err
    assert "No space left on device" in lines[0] and "pruned.onnx" in lines[0]
    assert _digest(run) == before  # pruned.pt was written before pruned.onnx failed: not renamed into place
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # no temporary left behind


def test_nan_reward_reaches_no_agent(tmp_path):
    """DDPG learns from numbers: a NaN reward reaches the agent as the worst reward seen so far."""
    from autoprune.envs.pruning_env import ChannelPruningEnv

    problem, _ = problem_of(_failing_models.nan_outputs)
    rewards = iter([0.5, float("nan"), 0.2, float("nan")])
    env = ChannelPruningEnv(problem, lambda kept: next(rewards))
    seen = []
    for _ in range(4):
        env.reset()
        done = False
        while not done:
            _, r, done, _, _ = env.step(np.array([0.5], dtype=np.float32))
        seen.append(r)
    assert seen == [0.5, 0.5, 0.2, 0.2]


def _postgres_or_skip(directory) -> str:
    """A PostgreSQL server of this test's own (it is stopped and started again): `.ci/postgres.sh` in `directory`."""
    import glob
    import subprocess

    if not glob.glob("/usr/lib/postgresql/*/bin/initdb") and not os.environ.get("CI"):
        pytest.skip("no PostgreSQL server binaries (Debian's postgresql package)")
    started = subprocess.run([ROOT / ".ci" / "postgres.sh", "start", directory], capture_output=True, text=True)
    assert started.returncode == 0, started.stderr[-2000:]
    return started.stdout.strip()


def test_losing_the_database_mid_search_is_one_line_and_resume_continues(tmp_path):
    """The database stops under a running search: one line naming the storage and the fix, exit 2, every finished
    trial kept in the study; once it is back, --resume finishes the budget from there."""
    import subprocess
    import sys
    import time

    pg = Path(tempfile.mkdtemp(prefix="autoprune-pg-"))  # not under tmp_path: the server's user must reach it
    url = _postgres_or_skip(pg)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-c",
        "from autoprune.cli import main; main()",
        "search",
        "--model",
        "resnet20",
        *TINY,
        "--strategy",
        "optuna",
        "--reward",
        "acc-ft",
        "--option",
        "finetune_steps=12",
        "--episodes",
        "12",
        "--storage",
        url,
        "--study",
        "lost",
        "--out",
        str(run),
    ]
    search = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def complete() -> list[optuna.trial.FrozenTrial]:
        try:
            study = optuna.load_study(study_name="lost", storage=url)
        except KeyError:  # not created yet
            return []
        return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    try:
        deadline = time.time() + 120
        while len(complete()) < 2 and time.time() < deadline:
            assert search.poll() is None, search.stderr.read().decode()[-3000:]
            time.sleep(0.2)
        before = {t.number: t.params for t in complete()}
        assert len(before) >= 2
        subprocess.run([ROOT / ".ci" / "postgres.sh", "stop", pg], check=True, capture_output=True)
        _, err = search.communicate(timeout=120)
    finally:
        if search.poll() is None:
            search.kill()
    lines = [ln for ln in err.decode().splitlines() if ln.strip() and "Warning" not in ln]
    message = " ".join(err.decode().split())
    assert search.returncode == 2, message[-3000:]
    assert "Traceback" not in message and message.startswith("error: lost the Optuna storage"), message[-3000:]
    assert f"autoprune search --resume {run}" in message and len(lines) <= 3  # one message, wrapped by rich

    restarted = subprocess.run([ROOT / ".ci" / "postgres.sh", "restart", pg], capture_output=True, text=True)
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    try:
        resumed = subprocess.run([*cmd[:3], "search", "--resume", str(run)], env=env, capture_output=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
        done = complete()
        assert len(done) == 12
        after = {t.number: t.params for t in done}
        assert all(after.get(n) == params for n, params in before.items())  # the earlier trials are kept as they were
    finally:
        subprocess.run([ROOT / ".ci" / "postgres.sh", "stop", pg], capture_output=True)
        shutil.rmtree(pg, ignore_errors=True)


def test_a_heartbeat_thread_losing_the_database_prints_no_traceback(monkeypatch):
    """Optuna's heartbeat thread raises when the database goes away mid-trial; the search reports that in one line,
    so the thread's own traceback is not printed (not handed to the hook that prints it). Any other error in a
    thread still is."""
    import threading

    import optuna

    from autoprune.search.optuna_storage import quiet_heartbeat_failures

    printed: list[BaseException] = []  # what Python's hook would print
    monkeypatch.setattr(threading, "excepthook", lambda args: printed.append(args.exc_value))

    def raise_in_thread(error: BaseException) -> None:
        def run() -> None:
            raise error

        t = threading.Thread(target=run)
        t.start()
        t.join()

    with quiet_heartbeat_failures():
        raise_in_thread(optuna.exceptions.StorageInternalError("An exception is raised during the commit."))
        assert printed == []
        raise_in_thread(ValueError("a bug in a thread"))
        assert [type(e) for e in printed] == [ValueError]
    raise_in_thread(optuna.exceptions.StorageInternalError("after the search"))
    assert len(printed) == 2  # the search's hook is gone with it
