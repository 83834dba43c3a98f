"""``scripts/bench_curve.py --merge``: the curve built across sittings ends in one CSV, each cell from the first CSV
given that has it, its source named, its kept policy beside the merged CSV."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_curve.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_curve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_curve"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench_curve"]


def _row(bench, runs: Path, strategy: str, seed: int, held_out: str, acc: str) -> dict:
    row = dict.fromkeys(bench.COLUMNS, "")
    cell = f"{strategy.replace(':', '-')}-e150-ft1-s{seed}"
    row.update(
        model="fmnist-resnet20",
        budget="flops=20%",
        budget_searched="flops=20%",
        strategy=strategy,
        seed=str(seed),
        finetune_epochs="1.0",
        episodes="150",
        held_out=held_out,
        test_acc_ft=acc,
        run_dir=str(runs / "fmnist-resnet20" / "flops-20pct" / cell),
        note="searched",
    )
    return row


def _sitting(bench, tmp_path: Path, name: str, rows: list[dict]) -> Path:
    """A sitting's CSV and the policies it kept beside it (each holding the row's accuracy, to tell them apart)."""
    out = tmp_path / f"{name}.csv"
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=bench.COLUMNS)
        w.writeheader()
        w.writerows(rows)
    for row in rows:
        *_, model, budget, cell = Path(row["run_dir"]).parts
        kept = tmp_path / f"{name}_policies" / model / budget / f"{cell}.json"
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(json.dumps({"acc": row["test_acc_ft"]}))
    return out


def test_merge_takes_each_missing_cell_from_the_first_csv_that_has_it(bench, tmp_path):
    here = _sitting(
        bench, tmp_path, "curve", [_row(bench, tmp_path / "curve", "optuna:tpe+promote5", 0, "1000", "0.91")]
    )
    newer = _sitting(
        bench, tmp_path, "newer", [_row(bench, tmp_path / "newer", "optuna:tpe+promote5", 0, "5000", "0.92")]
    )
    older = _sitting(
        bench,
        tmp_path,
        "older",
        [
            _row(bench, tmp_path / "older", "optuna:tpe+promote5", 0, "5000", "0.90"),  # newer's cell: not taken
            _row(bench, tmp_path / "older", "optuna:tpe+promote5", 1, "5000", "0.93"),
        ],
    )
    code = bench.main(["--out", str(here), "--runs", str(tmp_path / "curve"), "--merge", f"{newer},{older}"])
    assert code == 0
    rows = list(csv.DictReader(here.open()))
    # the held-out size is part of a cell: the 1,000-image search and the 5,000-image one are both kept
    assert [(r["seed"], r["held_out"], r["test_acc_ft"]) for r in rows] == [
        ("0", "1000", "0.91"),
        ("0", "5000", "0.92"),
        ("1", "5000", "0.93"),
    ]
    assert rows[0]["note"] == "searched" and rows[1]["note"] == "from newer.csv; searched"
    assert rows[2]["note"] == "from older.csv; searched"
    kept = tmp_path / "curve_policies" / "newer" / "fmnist-resnet20" / "flops-20pct"
    assert json.loads((kept / "optuna-tpe+promote5-e150-ft1-s0.json").read_text()) == {"acc": "0.92"}
    assert (tmp_path / "curve_policies" / "older" / "fmnist-resnet20" / "flops-20pct").is_dir()
    # the CSV's own policy, of the same cell name at another held-out size, is untouched
    own = tmp_path / "curve_policies" / "fmnist-resnet20" / "flops-20pct" / "optuna-tpe+promote5-e150-ft1-s0.json"
    assert json.loads(own.read_text()) == {"acc": "0.91"}
    # merging again adds nothing
    assert bench.main(["--out", str(here), "--runs", str(tmp_path / "curve"), "--merge", f"{newer},{older}"]) == 0
    assert len(list(csv.DictReader(here.open()))) == 3


def test_merge_refuses_a_csv_of_other_columns(bench, tmp_path, capsys):
    here = _sitting(bench, tmp_path, "curve", [])
    other = tmp_path / "other.csv"
    other.write_text("model,acc\nresnet,0.9\n")
    assert bench.main(["--out", str(here), "--merge", str(other)]) == 2
    assert "other columns" in capsys.readouterr().err
    assert bench.main(["--out", str(here), "--merge", str(tmp_path / "missing.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
