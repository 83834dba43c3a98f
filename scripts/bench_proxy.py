"""Which cheap score predicts a policy's accuracy after the fine-tune? (issue 13: "at aggressive budgets find out by
measurement what does").

A search can only rank policies by something cheaper than the fine-tune every finished policy gets. For one model,
budget and seed this scores a set of policies by each candidate proxy, then gives each the search curve's
fine-tune (``--finetune-epochs`` of distillation from the unpruned model, as ``autoprune search`` finishes) and
scores it on the test split:

* ``acc``: held-out accuracy after BatchNorm recalibration only (the ``acc`` reward);
* ``distill_loss``: the held-out distillation loss against the unpruned model after recalibration (the ``kd``
  reward, lower is better);
* ``acc_ftS``: held-out accuracy after ``S`` distilled SGD steps (``--steps``; the promotion rung's fidelity).

The policies: uniform and global magnitude pruning at the budget, each ``--policies`` file (a policy.json; one a
promoted search wrote adds its promotion candidates), and ``--sample`` policies of a search's ``--history`` at
evenly spaced reward quantiles. One row per policy is appended to ``--out`` at once, and a policy that already has
a row of the same settings is not scored again, so a study can be built across sittings. The summary gives each
proxy's Spearman rank correlation with the fine-tuned test accuracy and what its top-ranked policy reaches.

    .venv/bin/python scripts/bench_proxy.py --model fmnist-mobilenetv2 --budget flops=20% \\
        --policies benchmarks/search_curve_policies/fmnist-mobilenetv2/flops-20pct/*.json \\
        --history runs/search_curve/fmnist-mobilenetv2/flops-20pct/optuna-tpe+promote5-e150-ft1-s0/history.csv
    .venv/bin/python scripts/bench_proxy.py --summary-only
"""

from __future__ import annotations

import argparse
import ast
import csv
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_curve import cpu_isa  # noqa: E402

from autoprune.evaluate import accuracy  # noqa: E402
from autoprune.finetune import DEFAULT_FINETUNE_LR, finetune  # noqa: E402
from autoprune.pipeline import Setup, prepare  # noqa: E402
from autoprune.pipeline.finish import evaluate_pruned  # noqa: E402
from autoprune.policy import Policy  # noqa: E402
from autoprune.search.baselines import magnitude_kept, uniform_kept  # noqa: E402
from autoprune.spec import DEMO_DATA, RunSpec  # noqa: E402

console = Console()
OUT = ROOT / "benchmarks" / "proxy_study.csv"
SETTINGS = ["model", "budget", "seed", "held_out", "steps", "finetune_epochs"]  # with kept: a row's identity
MEASURED = ["flops_share", "acc", "distill_loss", "test_acc_before_ft", "test_acc_ft", "seconds"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="fmnist-mobilenetv2")
    ap.add_argument("--budget", default="flops=20%")
    ap.add_argument("--seed", type=int, default=0, help="the fine-tunes' and the calibration batches' seed")
    ap.add_argument("--held-out", type=int, default=5000, help="held-out images the proxies score (default 5000)")
    ap.add_argument("--steps", default="50,200", help="fine-tune steps of the acc_ftS proxies (comma-separated)")
    ap.add_argument("--finetune-epochs", type=float, default=1.0, help="the final fine-tune (default 1, the curve's)")
    ap.add_argument("--policies", nargs="*", default=[], help="policy.json files to score")
    ap.add_argument("--history", help="a search's history.csv to sample policies from")
    ap.add_argument("--sample", type=int, default=4, help="policies sampled from --history (default 4)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--summary-only", action="store_true", help="print the summary of --out and stop")
    a = ap.parse_args(argv)
    a.steps_list = sorted({int(s) for s in a.steps.split(",") if s.strip()})
    if any(s < 1 for s in a.steps_list):
        ap.error(f"--steps {a.steps!r}: each must be a positive number of steps")
    a.steps = ";".join(map(str, a.steps_list))
    return a


def gather(a: argparse.Namespace, setup: Setup) -> dict[tuple[int, ...], str]:
    """kept -> where it came from, each policy once (the first source named wins)."""
    problem = setup.problem
    found: dict[tuple[int, ...], str] = {}

    def add(kept, source: str) -> None:
        found.setdefault(tuple(int(k) for k in kept), source)

    add(uniform_kept(problem)[0], "uniform")
    add(magnitude_kept(problem, problem.importance), "magnitude")
    names: set[str] = set()
    for path in a.policies:
        policy = Policy.load(path)
        name = Path(path).parent.name if Path(path).name == "policy.json" else Path(path).stem
        name = name if name not in names else str(Path(path).parent)  # two cells of one name: say where each is
        names.add(name)
        add(policy.check_fits(setup.graph), name)
        for cand in policy.search.get("promotion") or []:
            add(cand["kept"], f"{name}: {cand['source']}")
    if a.history:
        rows = pd.read_csv(a.history)
        rows = rows[rows["feasible"].astype(bool) & np.isfinite(rows["reward"].astype(float))]
        rows = rows.sort_values("reward", kind="stable").reset_index(drop=True)
        for q in np.linspace(0, 1, a.sample + 2)[1:-1]:  # inner quantiles: the best is a --policies file already
            row = rows.iloc[int(round(q * (len(rows) - 1)))]
            add(ast.literal_eval(row["kept"]), f"{Path(a.history).parent.name} q{q:.2f}")
    return found


def score(a: argparse.Namespace, setup: Setup, kept: tuple[int, ...]) -> dict:
    """Every proxy of ``kept``, then the final fine-tune's test accuracy (the same path as the search's finish)."""
    started = time.perf_counter()
    ev = setup.evaluator.evaluate(kept)
    row = {"acc": ev.accuracy, "distill_loss": ev.distill_loss}
    for s in a.steps_list:
        row[f"acc_ft{s}"] = setup.evaluator.evaluate(kept, finetune_steps=s).accuracy
    pruned = setup.pruner.apply(list(kept))
    row["test_acc_before_ft"] = evaluate_pruned(pruned, setup.bundle, seed=a.seed)["test_accuracy"]
    finetune(pruned, setup.bundle, epochs=a.finetune_epochs, lr=DEFAULT_FINETUNE_LR, teacher=setup.net, seed=a.seed)
    row["test_acc_ft"] = accuracy(pruned, setup.bundle.test)
    row["flops_share"] = setup.problem.cost_shares(kept)["flops"]
    row["seconds"] = time.perf_counter() - started
    return row


def key(row: dict | pd.Series) -> tuple:
    return (*(str(row[c]) for c in SETTINGS), str(row["kept"]))


def run(a: argparse.Namespace) -> None:
    spec = RunSpec.create(
        a.budget, a.model, DEMO_DATA, strategy="uniform", seed=a.seed, held_out=a.held_out, kd=True, episodes=1
    )
    setup = prepare(spec, on_phase=lambda text: console.print(f"  [dim]{text}[/dim]"))
    done = set()
    if a.out.is_file():
        done = {key(r) for _, r in pd.read_csv(a.out, dtype=str, keep_default_na=False).iterrows()}
    settings = {
        "model": a.model,
        "budget": a.budget,
        "seed": a.seed,
        "held_out": setup.evaluator.held_out_size,
        "steps": a.steps,
        "finetune_epochs": a.finetune_epochs,
    }
    columns = [*SETTINGS, "source", "kept", *MEASURED, *(f"acc_ft{s}" for s in a.steps_list), "cpu_isa", "date"]
    if a.out.is_file() and pd.read_csv(a.out, nrows=0).columns.tolist() != columns:
        raise SystemExit(f"{a.out} has other columns (another --steps): pass another --out")
    policies = gather(a, setup)
    for i, (kept, source) in enumerate(policies.items(), 1):
        row = {**settings, "source": source, "kept": " ".join(map(str, kept))}
        if key({k: str(v) for k, v in row.items()}) in done:
            console.print(f"  [dim]skip (in {a.out}): {source}[/dim]")
            continue
        console.print(f"  {i}/{len(policies)} {source}: {row['kept']}", highlight=False)
        row |= score(a, setup, kept) | {"cpu_isa": cpu_isa(), "date": dt.datetime.now().isoformat(timespec="seconds")}
        console.print(
            f"    acc {row['acc']:.4f} kd {row['distill_loss']:.3f} "
            + " ".join(f"ft{s} {row[f'acc_ft{s}']:.4f}" for s in a.steps_list)
            + f" -> test {row['test_acc_ft']:.4f} ({row['seconds']:.0f}s)",
            highlight=False,
        )
        a.out.parent.mkdir(parents=True, exist_ok=True)
        new = not a.out.is_file()
        with a.out.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            if new:
                w.writeheader()
            w.writerow(row)


def summary(out: Path) -> None:
    """Per settings group: each proxy's Spearman correlation with the fine-tuned accuracy, and its top choice."""
    df = pd.read_csv(out)
    proxies = ["acc", "distill_loss", *(c for c in df.columns if c.startswith("acc_ft"))]
    for settings, g in df.groupby(SETTINGS, sort=True):
        uniform = g.loc[g["source"] == "uniform", "test_acc_ft"]
        base = float(uniform.iloc[0]) if len(uniform) else float("nan")
        t = Table(title=f"{dict(zip(SETTINGS, settings, strict=True))}: {len(g)} policies, uniform {base:.2%}")
        for c in ("proxy", "Spearman ρ vs test after FT", "its top policy", "top's test after FT", "− uniform"):
            t.add_column(c)
        for p in proxies:
            sign = -1 if p == "distill_loss" else 1  # a lower loss ranks higher
            rho = (sign * g[p]).corr(g["test_acc_ft"], method="spearman")
            top = g.loc[(sign * g[p]).idxmax()]
            t.add_row(
                f"{p} (lowest first)" if p == "distill_loss" else p,
                f"{rho:+.2f}",
                str(top["source"]),
                f"{top['test_acc_ft']:.2%}",
                f"{100 * (top['test_acc_ft'] - base):+.2f}",
            )
        best = g.loc[g["test_acc_ft"].idxmax()]
        t.add_row(
            "(oracle)",
            "",
            str(best["source"]),
            f"{best['test_acc_ft']:.2%}",
            f"{100 * (best['test_acc_ft'] - base):+.2f}",
        )
        console.print(t)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if not a.summary_only:
        run(a)
    if a.out.is_file():
        summary(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
