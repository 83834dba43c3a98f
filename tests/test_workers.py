"""A search shared by many workers through one Optuna study: PostgreSQL across machines, a journal file for --workers.

The PostgreSQL test needs a server: `.ci/run` starts one (`.ci/postgres.sh`) and exports AUTOPRUNE_TEST_POSTGRES.
Without it the test is skipped on a developer's machine and fails in CI (CI is set there), so CI cannot pass by
skipping it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autoprune.errors import UserError

POSTGRES = os.environ.get("AUTOPRUNE_TEST_POSTGRES")
ROOT = Path(__file__).resolve().parent.parent
# resnet20 at 1x16x16 (random init from --seed) on synthetic data; acc-ft makes each trial ~1 s of real work, long
# enough to be killed in the middle of one
SEARCH = [
    "search",
    "--model",
    "resnet20",
    "--input-shape",
    "1x1x16x16",
    "--data",
    "synthetic:1024",
    "--budget",
    "flops=50%",
    "--strategy",
    "optuna",
    "--held-out",
    "256",
    "--reward",
    "acc-ft",
    "--option",
    "finetune_steps=12",
    "--finetune-epochs",
    "0",
    "--no-measure",
    "--option",
    "n_startup_trials=4",
]
EPISODES = 8


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from autoprune.cli import main; main()", *map(str, args)]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def policy_part(path: Path) -> dict:
    """What a policy decides (kept channels per group, the budget, the model): the same from any worker."""
    p = json.loads(Path(path).read_text())
    return {"model": p["model"], "budget": p["budget"], "groups": p["groups"]}


def wait_for_running_trial(study_of, worker_pid: int, procs: list[subprocess.Popen], timeout: float = 120):
    """The RUNNING trial of the worker with ``worker_pid`` once it has run a moment (and a trial has completed)."""
    me = f"{socket.gethostname()}:{worker_pid}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in procs:
            assert p.poll() is None, f"a worker exited early ({p.returncode}): {p.stderr.read().decode()[-2000:]}"
        study = study_of()
        if study is not None:
            trials = study.get_trials(deepcopy=False)
            complete = [t for t in trials if t.state == TrialState.COMPLETE]
            mine = [
                t
                for t in trials
                if t.state == TrialState.RUNNING and t.user_attrs.get("worker") == me and "row" not in t.user_attrs
            ]
            if complete and mine and (time.time() - mine[0].datetime_start.timestamp()) > 0.2:
                return mine[0]
        time.sleep(0.1)
    raise AssertionError(f"worker {me} never had a running trial")


def check_killed_trial_was_rerun(study: optuna.Study, killed: optuna.trial.FrozenTrial) -> None:
    trials = study.get_trials(deepcopy=False)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == EPISODES  # the shared budget, exactly
    assert study.get_trials(deepcopy=False)[killed.number].state == TrialState.FAIL
    reruns = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(reruns) == 1 and reruns[0].state == TrialState.COMPLETE, [(t.number, t.state) for t in reruns]
    assert reruns[0].params == study.get_trials(deepcopy=False)[killed.number].params  # the same policy, re-run
    assert "worker" in reruns[0].user_attrs and reruns[0].user_attrs["worker"] != killed.user_attrs["worker"]
    for t in trials:  # each trial was evaluated once, by the worker the storage gave it to
        if t.state == TrialState.COMPLETE:
            row = json.loads(t.user_attrs["row"])
            assert row["trial"] == t.number and row["worker"] == t.user_attrs["worker"]


@pytest.mark.skipif(
    not POSTGRES and not os.environ.get("CI"),
    reason="AUTOPRUNE_TEST_POSTGRES is not set "
    "(start a server: export AUTOPRUNE_TEST_POSTGRES=$(.ci/postgres.sh start /tmp/pg))",
)
def test_two_postgres_workers_survive_a_sigkill(tmp_path):
    assert POSTGRES, "CI must run this test: .ci/run exports AUTOPRUNE_TEST_POSTGRES (see .ci/postgres.sh)"
    name = f"test-{uuid.uuid4().hex[:8]}"
    shared = [
        "--storage",
        POSTGRES,
        "--study",
        name,
        "--episodes",
        str(EPISODES),
        "--option",
        "heartbeat_interval=1",
        "--option",
        "grace_period=3",
    ]
    procs = [
        subprocess.Popen(
            cli(*SEARCH, *shared, "--out", tmp_path / f"worker{k}"),
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for k in range(2)
    ]
    storage = optuna.storages.RDBStorage(POSTGRES)

    def study_of():
        if name not in optuna.study.get_all_study_names(storage):
            return None
        return optuna.load_study(study_name=name, storage=storage)

    try:
        killed = wait_for_running_trial(study_of, procs[0].pid, procs)
        os.kill(procs[0].pid, signal.SIGKILL)  # mid-trial: its heartbeat stops, nothing else tells the study
        out, err = procs[1].communicate(timeout=180)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[1].returncode == 0, err.decode()[-3000:]
    assert procs[0].wait() == -signal.SIGKILL
    check_killed_trial_was_rerun(study_of(), killed)
    rerun = next(t for t in study_of().trials if t.system_attrs.get("failed_trial") == killed.number)
    assert rerun.user_attrs["retry_reason"] == "its worker's heartbeat stopped"  # Optuna's heartbeat found it
    survivor = tmp_path / "worker1" / "policy.json"
    assert survivor.is_file() and not (tmp_path / "worker0" / "policy.json").exists()

    # the run directory again, from the study alone
    report = subprocess.run(
        cli("report", "--storage", POSTGRES, "--study", name, "--out", tmp_path / "report"),
        env=env(),
        capture_output=True,
        timeout=180,
    )
    assert report.returncode == 0, report.stderr.decode()[-3000:]
    assert policy_part(tmp_path / "report" / "policy.json") == policy_part(survivor)
    for f in ("history.csv", "report.md", "pruned.onnx", "pruned_state.pt"):
        assert (tmp_path / "report" / f).is_file()
    history = (tmp_path / "report" / "history.csv").read_text().splitlines()
    assert len(history) == 1 + EPISODES


def test_local_workers_share_a_journal_and_survive_a_sigkill(tmp_path):
    run = tmp_path / "run"
    journal = run / "optuna-journal.log"
    parent = subprocess.Popen(
        cli(*SEARCH, "--workers", "2", "--episodes", str(EPISODES), "--out", run),
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    def study_of():
        if not journal.is_file():
            return None
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        if "autoprune-tpe" not in optuna.study.get_all_study_names(storage):
            return None
        return optuna.load_study(study_name="autoprune-tpe", storage=storage)

    try:
        deadline = time.time() + 120
        children: list[int] = []
        while len(children) < 2 and time.time() < deadline:  # the children's pids, from their trials
            study = study_of()
            workers = {t.user_attrs.get("worker") for t in study.trials} if study is not None else set()
            children = sorted(int(w.rpartition(":")[2]) for w in workers if w)
            assert parent.poll() is None, parent.stderr.read().decode()[-3000:]
            time.sleep(0.1)
        assert len(children) == 2 and parent.pid not in children  # the parent evaluates nothing
        killed = wait_for_running_trial(study_of, children[0], [parent])
        os.kill(children[0], signal.SIGKILL)
        out, err = parent.communicate(timeout=180)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode == 0, err.decode()[-3000:]
    check_killed_trial_was_rerun(study_of(), killed)
    rerun = next(t for t in study_of().trials if t.system_attrs.get("failed_trial") == killed.number)
    assert rerun.user_attrs["retry_reason"].startswith("worker 0 died (signal 9)")  # the parent saw it at once
    spec = json.loads((run / "workers" / "spec.json").read_text())
    assert spec["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)  # two workers split the cores
    policy = json.loads((run / "policy.json").read_text())
    assert policy["search"]["evaluations"] == EPISODES
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 1 + EPISODES

    report = subprocess.run(
        cli("report", "--storage", f"journal:{journal}", "--study", "autoprune-tpe", "--out", tmp_path / "report"),
        env=env(),
        capture_output=True,
        timeout=180,
    )
    assert report.returncode == 0, report.stderr.decode()[-3000:]
    assert policy_part(tmp_path / "report" / "policy.json") == policy_part(run / "policy.json")


def test_a_worker_joins_a_finished_study_and_writes_the_same_policy(tmp_path):
    """The budget is the study's: a second worker with the same arguments finds it spent, runs no trial, and
    writes the study's best policy; a worker with other arguments is refused before it runs anything."""
    from autoprune.api import search

    storage = f"journal:{tmp_path / 'study.log'}"
    kwargs = dict(
        strategy="optuna",
        input_shape=(1, 1, 16, 16),
        episodes=4,
        held_out=64,
        measure=False,
        finetune_epochs=0,
        options={"storage": storage, "study_name": "s"},
    )
    first = search("resnet20", "synthetic", "flops=50%", out=tmp_path / "a", **kwargs)
    second = search("resnet20", "synthetic", "flops=50%", out=tmp_path / "b", **kwargs)
    assert second.result.evaluations == 4 and not second.result.history["cached"].any()
    assert list(second.result.history["trial"]) == list(first.result.history["trial"]) == [0, 1, 2, 3]
    assert policy_part(tmp_path / "a" / "policy.json") == policy_part(tmp_path / "b" / "policy.json")
    assert not (tmp_path / "b" / "evaluations.jsonl").exists()  # it evaluated nothing
    with pytest.raises(UserError, match="budget='flops=50%' but this worker has 'flops=60%'"):
        search("resnet20", "synthetic", "flops=60%", out=tmp_path / "c", **kwargs)


def test_workers_need_optuna(run_cli, tmp_path):
    code, _, err = run_cli(
        "search",
        "--model",
        "resnet20",
        "--budget",
        "flops=50%",
        "--strategy",
        "random",
        "--workers",
        "2",
        "--out",
        tmp_path / "r",
    )
    assert code == 2 and "--strategy optuna" in err and not (tmp_path / "r").exists()


def test_resume_reruns_the_trial_a_killed_search_left_running(tmp_path):
    """A search killed mid-trial leaves it RUNNING in its own study: --resume fails it and evaluates it again."""
    from autoprune.search import run_search
    from tests._search_tiny import tiny_evaluator, tiny_problem

    problem, evaluator = tiny_problem(), tiny_evaluator()
    run_search("optuna", problem, evaluator, episodes=2, seed=0, workdir=tmp_path)
    study = optuna.load_study(study_name="autoprune-tpe", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = study.ask()  # what the killed process was evaluating
    for i, g in enumerate(problem.graph.groups):
        orphan.suggest_float(f"{i:03d}:{g.name}", problem.min_keep, 1.0)
    orphan.set_user_attr("worker", f"{socket.gethostname()}:{int(dead.stdout)}")

    result = run_search("optuna", problem, evaluator, episodes=4, seed=0, workdir=tmp_path, resume=True)
    trials = study.get_trials(deepcopy=False)
    assert trials[orphan.number].state == TrialState.FAIL
    rerun = [t for t in trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert len(rerun) == 1 and rerun[0].state == TrialState.COMPLETE and rerun[0].params == orphan.params
    assert result.evaluations == 4 == sum(t.state == TrialState.COMPLETE for t in trials)


def _ctrl_c_as_from_a_terminal() -> None:
    """SIGINT back to its default in the child: pytest started in the background (``cmd &``, ``nohup``) inherits it
    ignored, and Python then installs no KeyboardInterrupt handler, so the search would run to its end."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_workers_writes_the_best_policy_so_far_and_resumes(tmp_path):
    """Ctrl-C reaches the parent and its children (one process group, as a terminal sends it): the run directory
    gets the study's best complete trial as policy.json, and --resume finishes the shared budget."""
    run = tmp_path / "run"
    journal = run / "optuna-journal.log"
    parent = subprocess.Popen(
        cli(*SEARCH, "--workers", "2", "--episodes", "16", "--out", run),
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=_ctrl_c_as_from_a_terminal,
    )

    def complete_rows() -> list[dict]:
        if not journal.is_file():
            return []
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        if "autoprune-tpe" not in optuna.study.get_all_study_names(storage):
            return []
        study = optuna.load_study(study_name="autoprune-tpe", storage=storage)
        return [json.loads(t.user_attrs["row"]) for t in study.get_trials(states=(TrialState.COMPLETE,))]

    try:
        deadline = time.time() + 120
        while len(complete_rows()) < 3 and time.time() < deadline:
            assert parent.poll() is None, parent.stderr.read().decode()[-3000:]
            time.sleep(0.1)
        os.killpg(parent.pid, signal.SIGINT)
        _, err = parent.communicate(timeout=120)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
    assert parent.returncode == 130, err.decode()[-3000:]
    assert f"continue with: autoprune search --resume {run}" in " ".join(err.decode().split())  # rich wraps lines
    rows = complete_rows()
    assert 3 <= len(rows) < 16
    policy = json.loads((run / "policy.json").read_text())
    assert policy["search"]["interrupted"] and policy["search"]["evaluations"] == len(rows)
    best = max((r for r in rows if r["feasible"]), key=lambda r: r["reward"])
    assert [g["kept"] for g in policy["groups"]] == list(best["kept"])
    assert len((run / "history.csv").read_text().splitlines()) == 1 + len(rows)

    resumed = subprocess.run(cli("search", "--resume", run), env=env(), capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    assert len(complete_rows()) == 16
    assert "interrupted" not in json.loads((run / "policy.json").read_text())["search"]


def test_local_workers_stop_together_when_the_study_runs_out_of_new_policies(tmp_path):
    """On a coarse space the study converges before its budget: the worker that sees ``max_repeats`` repeats in a
    row marks the study, every worker stops, and the parent writes the run directory instead of calling it a
    failure; every evaluated policy is a distinct one."""
    run = tmp_path / "run"
    args = [
        "search",
        "--model",
        "resnet20",
        "--input-shape",
        "1x1x12x12",
        "--data",
        "synthetic:256",
        "--budget",
        "flops=60%",
        "--round-to",
        "16",
        "--strategy",
        "optuna",
        "--held-out",
        "64",
        "--finetune-epochs",
        "0",
        "--no-measure",
        "--episodes",
        "300",
        "--option",
        "max_repeats=12",
        "--workers",
        "2",
        "--out",
        run,
    ]
    done = subprocess.run(cli(*args), capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    policy = json.loads((run / "policy.json").read_text())
    assert "proposals were all policies already evaluated" in policy["search"]["converged"]
    # a policy another worker is scoring counts as seen too; only two workers proposing one new policy in the same
    # instant both score it
    assert (
        policy["search"]["evaluations"] - 2
        <= policy["search"]["distinct_policies"]
        <= policy["search"]["evaluations"]
        < 300
    )
    assert "stopped early" in done.stdout.decode()
