"""Interrupted searches: a SIGKILL mid-search loses at most the evaluation in flight, and --resume finishes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from autoprune.search import JOURNAL

ARGS = [
    "--model",
    "resnet20",
    "--input-shape",
    "1x1x16x16",
    "--data",
    "synthetic",
    "--budget",
    "flops=50%",
    "--strategy",
    "random",
    "--episodes",
    "24",
    "--held-out",
    "64",
    "--finetune-epochs",
    "0.1",
    "--no-measure",
]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from autoprune.cli import main; main()", *args]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "OMP_NUM_THREADS": "1"}


def journal_lines(run: Path) -> list[dict]:
    path = run / JOURNAL
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]


def test_sigkill_then_resume_keeps_every_evaluation(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        cli("search", *ARGS, "--out", str(run)), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 300
    while len(journal_lines(run)) < 6 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = journal_lines(run)
    assert 6 <= len(before) < 24
    assert not (run / "policy.json").exists()  # the run never finished: nothing half-written pretends it did

    done = subprocess.run(cli("search", "--resume", str(run)), env=env(), capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 24
    kept = [tuple(json.loads(k.replace("(", "[").replace(")", "]").replace(",]", "]"))) for k in history["kept"]]
    for row in before:  # every earlier evaluation is in the final history, reused rather than recomputed
        assert tuple(row["kept"]) in kept
    reused = history[history["kept"].map(lambda s: s in {str(tuple(r["kept"])) for r in before})]
    assert reused["cached"].all()
    assert json.loads((run / "policy.json").read_text())["search"]["evaluations"] == 24


def test_new_search_into_an_existing_run_is_refused(tmp_path, run_cli):
    run = tmp_path / "run"
    run.mkdir()
    (run / "args.json").write_text("{}")
    code, _, err = run_cli("search", *ARGS, "--out", run)
    assert code == 2 and "--resume" in err


def test_resume_without_a_search(tmp_path, run_cli):
    code, _, err = run_cli("search", "--resume", tmp_path)
    assert code == 2 and "no search to resume" in err


def tiny_search(run: Path, **settings):
    """``autoprune.api.search`` of a random-init resnet20 at 1x16x16 on synthetic data into ``run``."""
    from autoprune.api import search

    return search(
        "resnet20",
        "synthetic",
        "flops=50%",
        input_shape=(1, 1, 16, 16),
        held_out=64,
        out=run,
        measure=False,
        **settings,
    )


def test_ctrl_c_writes_the_best_policy_so_far(tmp_path, tiny_data):
    from autoprune.policy import Policy

    def interrupt_after_five(event) -> None:
        if event.evaluation == 5:
            raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        tiny_search(run, strategy="random", episodes=20, callback=interrupt_after_five)
    policy = Policy.load(run / "policy.json")
    rows = journal_lines(run)
    assert policy.search["interrupted"] and len(rows) == 5
    assert policy.kept == list(max(rows, key=lambda r: r["reward"])["kept"])
    assert policy.metrics["flops_share"] <= 0.5 + 1e-9


def test_ctrl_c_never_saves_a_policy_whose_reward_is_nan(tmp_path):
    """The best-so-far policy follows the search's own rule: a NaN reward (non-finite outputs) is never the best,
    even when it comes first."""
    from autoprune.pipeline.run_dir import save_interrupted
    from autoprune.policy import Policy
    from tests._search_tiny import tiny_problem

    problem = tiny_problem()
    full = [int(c) for c in problem.graph.channels]
    half = [max(1, c // 2) for c in full]
    rows = [
        {"kept": full, "feasible": True, "reward": float("nan"), "accuracy": float("nan")},
        {"kept": half, "feasible": True, "reward": 0.25, "accuracy": 0.25},
        {"kept": full, "feasible": False, "reward": 0.9, "accuracy": 0.9},
    ]
    path = save_interrupted(tmp_path, problem, rows)
    policy = Policy.load(path)
    assert policy.kept == half and policy.search["reward"] == 0.25 and policy.search["evaluations"] == 3
    assert len(pd.read_csv(tmp_path / "history.csv")) == 3
    assert save_interrupted(tmp_path / "none", problem, rows[:1]) is None  # nothing to save


def test_ctrl_c_before_the_study_resumes(tmp_path, tiny_data):
    """Ctrl-C before the Optuna study exists (while the latency table is measured) leaves only args.json, which
    refuses a new search into the run directory: --resume starts the search there."""
    from autoprune.api import resume

    def interrupt(text: str) -> None:
        if text.startswith("searching with"):
            raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        tiny_search(run, strategy="optuna", episodes=3, finetune_epochs=0, on_phase=interrupt)
    assert (run / "args.json").is_file() and not (run / "history.csv").exists()
    outcome = resume(run)
    assert outcome.result.evaluations == 3 and len(pd.read_csv(run / "history.csv")) == 3
