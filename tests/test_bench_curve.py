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


def _cell(bench, strategy: str, seed: int, acc: float, **fields) -> dict:
    """A finished cell's row, as read back from the CSV (numbers as numbers)."""
    row = dict.fromkeys(bench.COLUMNS, float("nan"))
    row.update(
        model="fmnist-resnet20",
        budget="flops=10%",
        budget_searched="flops=10%",
        strategy=strategy,
        seed=seed,
        finetune_epochs=1.0,
        episodes=1 if strategy.startswith("uniform") else 150,
        held_out=float("nan") if strategy.startswith(("uniform", "reference")) else 5000.0,
        round_to=1 if strategy == "reference" else 8,
        flops_share=0.1,
        speedup=3.0,
        test_acc_unpruned=0.938,
        test_acc_before_ft=0.2,
        test_acc_ft=acc,
        latency_measured_us=5000.0,
        search_seconds=1.0,
        cpu_isa="avx2",
        date=f"2026-12-0{seed + 1}T00:00:00",
    )
    row.update(fields)
    return row


def _means(bench, rows: list[dict]):
    return bench.cell_means(bench.pd.DataFrame(rows, columns=bench.COLUMNS))


def test_a_cell_is_named_by_the_widths_it_ran_at_and_a_seed_counts_once(bench):
    means = _means(
        bench,
        [
            _cell(bench, "uniform", 0, 0.85),  # the default --round-to was 8 on that machine
            _cell(bench, "uniform+rt8", 1, 0.86),  # spelled out where the table's block is 16
            _cell(bench, "uniform+rt8", 2, 0.87),
            _cell(bench, "uniform", 1, 0.80, round_to=16),  # the default was 16 here: other widths, another cell
            _cell(bench, "reference", 0, 0.88),  # any width by definition: not "+rt1"
            _cell(bench, "optuna:tpe+promote5", 0, 0.84, date="2026-12-01T00:00:00"),
            _cell(bench, "optuna:tpe+rt8+promote5", 0, 0.89, date="2026-12-03T00:00:00"),  # the same cell, newer
        ],
    )
    cells = {r.strategy: (r.n, round(r.acc, 2)) for r in means.itertuples()}
    assert cells == {
        "uniform": (3, 86.0),
        "uniform+rt16": (1, 80.0),
        "reference": (1, 88.0),
        "optuna:tpe+promote5": (1, 89.0),
    }


def test_the_targets_are_checked_on_the_cells(bench):
    rows = [_cell(bench, "uniform", s, a) for s, a in enumerate((0.850, 0.852, 0.854))]
    rows += [_cell(bench, "optuna:tpe+promote5", s, a) for s, a in enumerate((0.862, 0.864, 0.866))]
    rows += [_cell(bench, "reference", s, a) for s, a in enumerate((0.870, 0.871, 0.872))]
    # a milder budget where the default is under uniform by far more than the seed noise, one seed
    mild = {"budget": "flops=50%", "budget_searched": "flops=50%", "flops_share": 0.5, "speedup": 1.2}
    rows += [_cell(bench, "uniform", 0, 0.93, **mild), _cell(bench, "optuna:tpe+promote5", 0, 0.91, **mild)]
    # flops=20%: 5x fewer FLOPs, so 2.5x faster is needed; one seed of the default runs 2.4x
    tight = {"budget": "flops=20%", "budget_searched": "flops=20%", "flops_share": 0.2}
    rows += [_cell(bench, "uniform", s, 0.9, speedup=3.0, **tight) for s in range(3)]
    rows += [_cell(bench, "optuna:tpe+promote5", s, 0.9, speedup=x, **tight) for s, x in enumerate((3.0, 2.4, 3.0))]
    checks = bench.target_checks(_means(bench, rows))
    verdict = {(r.budget, r.target): r.verdict for r in checks.itertuples()}
    tightest = "(tightest FLOPs budget)"
    assert verdict[("flops=10%", f"default >= uniform + 1 {tightest}")] == "met"  # +1.2
    assert verdict[("flops=10%", f"default >= reference {tightest}")] == "not met"  # 86.4 against 87.1
    assert verdict[("flops=10%", "default not under uniform by > 2 s.e.")] == "met"
    assert verdict[("flops=50%", "default not under uniform by > 2 s.e.")] == "not met (1 of 3 seeds)"
    speed = "speed-up >= 0.5 x FLOPs reduction"
    assert verdict[("flops=20%", f"{speed}: uniform")] == "met"
    assert verdict[("flops=20%", f"{speed}: optuna:tpe+promote5")] == "not met"  # its slowest policy counts


def test_a_cell_is_met_by_the_policy_it_kept_not_by_the_last_one_measured(bench):
    """Compact latency=50% uniform seed 1: its policy met the budget (6.44 of 15.67 ms); a larger uniform policy
    tried after it measured over the limit and was not kept. The cell is met."""
    from autoprune.policy import Policy

    policies = SCRIPT.parents[1] / "benchmarks" / "search_curve_policies"
    path = policies / "fmnist-mobilenetv2" / "latency-50pct" / "uniform-e1-ft1-s1.json"
    policy = Policy.load(path)
    checks = policy.metrics["latency_checks"]
    assert checks[-1]["met"] is False and list(checks[-1]["kept"]) != policy.kept
    assert bench.kept_policy_met(policy) is True


def test_the_full_grid_counts_the_seeds_each_cell_lacks(bench):
    rows = [_cell(bench, "uniform", s, 0.85, cell_seconds=100.0) for s in range(3)]
    rows += [_cell(bench, "ddpg", 0, 0.86, cell_seconds=300.0)]
    # the default counts on search's held-out size only: a seed searched on 1,000 images is another cell
    rows += [_cell(bench, "optuna:tpe+promote5", s, 0.86, cell_seconds=600.0) for s in range(2)]
    rows += [_cell(bench, "optuna:tpe+promote5", 2, 0.86, held_out=1000.0, cell_seconds=600.0)]
    rows = bench.pd.DataFrame(rows, columns=bench.COLUMNS)
    grid = bench.grid_status(bench.cell_means(rows), rows)
    budgets = bench.parse_budgets(bench.FULL["budgets"])
    demo = grid[grid["model"] == "fmnist-resnet20"].set_index("strategy")
    assert demo.loc["uniform", "flops=10%"] == 3 and demo.loc["ddpg", "flops=10%"] == 1
    assert demo.loc["optuna:tpe+promote5", "flops=10%"] == 2
    assert demo.loc["uniform", "missing"] == 3 * (len(budgets) - 1)
    assert demo.loc["ddpg", "missing"] == 3 * len(budgets) - 1
    assert demo.loc["ddpg", "hours"] == pytest.approx((3 * len(budgets) - 1) * 300 / 3600)
    assert demo.loc["netadapt", "missing"] == 3 * len(budgets) and bench.pd.isna(demo.loc["netadapt", "hours"])
    compact = grid[grid["model"] == "fmnist-mobilenetv2"]
    assert (compact["missing"] == 3 * len(budgets)).all()


def test_the_fill_commands_name_the_missing_seeds_at_each_cells_widths(bench):
    """A sitting on a machine whose channel block is 16 fills a cell whose seeds ran in blocks of 8 with ``+rt8``;
    a seed it ran in blocks of 16 is another cell and fills nothing."""
    rows = [_cell(bench, "uniform", s, 0.85, cell_seconds=100.0) for s in range(3)]
    rows += [_cell(bench, "ddpg", 0, 0.86, cell_seconds=300.0)]
    rows += [_cell(bench, "ddpg", 1, 0.86, round_to=16, cell_seconds=300.0)]
    rows = bench.pd.DataFrame(rows, columns=bench.COLUMNS)
    commands = bench.fill_commands(bench.cell_means(rows), rows)
    demo = commands[commands["model"] == "fmnist-resnet20"]
    ddpg = demo[demo["strategy"].str.startswith("ddpg")].set_index("strategy")
    assert ddpg.loc["ddpg+rt8", "command"] == (
        "--models fmnist-resnet20 --budgets flops=10% --strategies ddpg+rt8 --seeds 1,2"
    )
    assert ddpg.loc["ddpg+rt8", "hours"] == pytest.approx(2 * 300 / 3600)
    others = [b for b in bench.parse_budgets(bench.FULL["budgets"]) if b != "flops=10%"]
    assert ddpg.loc["ddpg", "command"].endswith(f"--budgets {','.join(others)} --strategies ddpg --seeds 0,1,2")
    assert not demo["command"].str.contains("--budgets flops=10% --strategies uniform").any()  # uniform's is full
    known = int(demo["hours"].notna().sum())  # cheapest first, those with no finished cell to go by last
    assert demo["hours"].iloc[:known].is_monotonic_increasing and demo["hours"].iloc[known:].isna().all()


def test_a_latency_row_says_when_its_table_was_re_anchored_before_the_cells(bench):
    """The sitting's table had drifted and ``prepare`` re-anchored it: every latency row says so with the fit before
    and after (rows priced by a stale table look otherwise alike); FLOPs rows and a level table say nothing."""
    from types import SimpleNamespace

    moved = {"fixed_us": [531.0, 907.0], "scale": [1.059, 1.102], "date": "2026-12-05T10:00:00"}
    setups = {
        "latency": SimpleNamespace(table=object(), reanchored=moved),
        "flops": SimpleNamespace(table=None, reanchored=None),
    }
    ctx = bench.ModelContext("fmnist-resnet20", setups)
    note = bench.reanchor_note(ctx, "latency=50%")
    assert note == "table re-anchored 2026-12-05T10:00:00: fixed 0.531 -> 0.907 ms, scale 1.059 -> 1.102"
    assert bench.reanchor_note(ctx, "flops=20%") == ""
    level = bench.ModelContext("fmnist-resnet20", {"latency": SimpleNamespace(table=object(), reanchored=None)})
    assert bench.reanchor_note(level, "latency=50%") == ""
