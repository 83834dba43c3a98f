"""The search curve (issue 13): accuracy after the same fine-tune vs budget, per model, strategy and seed.

For each model (``fmnist-resnet20``, the demo ResNet-20; ``fmnist-mobilenetv2``, the compact model), each budget
(``flops=50%,30%,20%,10%`` and ``latency=70%,50%,35%`` of the unpruned model measured here; a budget below the
model's floor, the cheapest policy ``--min-keep`` and the channel block allow, is searched at the floor) and each
seed, every strategy is one cell: ``uniform``, ``reference`` (Torch-Pruning's global magnitude pruning at the same
FLOPs; at a latency budget at the FLOPs share of the cell's uniform policy), ``magnitude`` (autoprune's own global
magnitude allocation, at the budget and the channel block), ``ddpg``, ``optuna`` (TPE), ``netadapt`` and the
default search of ``autoprune search`` (``optuna+promote5``: TPE, then the promotion rung). A search
cell is one ``autoprune.api.search`` call (``kd=True``, ``measure=True``, the cell's seed for the search and the
fine-tune); the reference cell prunes with Torch-Pruning and then scores, fine-tunes and measures
as the search's finish does. Every cell gets the same distilled fine-tune (``--finetune-epochs``).

One row per finished cell is appended to ``--out`` at once; a cell whose (model, budget, strategy, seed,
finetune_epochs, episodes, held_out) already has a row is skipped, so the curve is built across sittings (Ctrl-C
loses at most the cell in flight; an interrupted search cell resumes from its run directory's journal). Then the plot
(``--out`` with ``.png``) is drawn and the summary printed: mean ± std over seeds per (model, budget, strategy), each
strategy minus uniform, and per (model, strategy) the lowest measured latency whose fine-tuned accuracy stays
within 1 point of the unpruned model's (the axis NetAdapt argues on), and issue 13's targets checked on the cells
as they are (``target_checks``).

    .venv/bin/python scripts/bench_curve.py                      # the whole curve (resumes what is done)
    .venv/bin/python scripts/bench_curve.py --models fmnist-resnet20 --budgets flops=50%,30% --seeds 0
    .venv/bin/python scripts/bench_curve.py --plot-only          # redraw the png, print the summary
    .venv/bin/python scripts/bench_curve.py --smoke --models fmnist-resnet20 --strategies uniform,reference,ddpg

Each search cell's ``policy.json`` is kept beside ``--out`` (``search_curve_policies/MODEL/BUDGET/CELL.json``,
committed with the CSV: the run directories under ``runs/`` are not), so a cell can be re-created and re-timed in
a later sitting: ``--retime`` times every selected row that has one again (the pruned model built from the
unpruned one by the policy, timed with the unpruned model in the same interleaved rounds, on this machine's ISA
only) and rewrites its latency columns, the timing it replaces kept in ``note``. Use it for cells timed on a
busy machine.

    .venv/bin/python scripts/bench_curve.py --retime --models fmnist-resnet20 --budgets flops=20%

``--merge A.csv,B.csv`` appends the rows of other CSVs this script wrote (other sittings' ``--out``) whose cells
``--out`` lacks, in the order given (the first CSV that has a cell gives it), each row's ``note`` naming its CSV, and
keeps their policies beside ``--out`` (under the other sitting's runs folder's name), so one CSV and one plot hold the
curve built across sittings:

    .venv/bin/python scripts/bench_curve.py --merge benchmarks/search_curve_rung_margin.csv,benchmarks/other.csv

``--smoke`` is tiny (4 episodes, 200 held-out images, 0.02 fine-tune epochs, seed 0, ``flops=50%``) and writes to
``/tmp/bench_curve_smoke.csv`` and ``/tmp/bench_curve_smoke_runs/``, never to ``benchmarks/``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import fcntl
import hashlib
import itertools
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch_pruning as tp
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark's own modules beside it

from reference_pruning import global_magnitude_at_flops  # noqa: E402

from autoprune import api  # noqa: E402
from autoprune.budget import parse_budget  # noqa: E402
from autoprune.data import DataBundle, load_data  # noqa: E402
from autoprune.errors import UserError  # noqa: E402
from autoprune.evaluate import accuracy  # noqa: E402
from autoprune.finetune import DEFAULT_FINETUNE_LR, finetune  # noqa: E402
from autoprune.models import COMPACT_MODEL, DEMO_MODEL, parse_input_shape  # noqa: E402
from autoprune.pipeline import Setup, prepare  # noqa: E402
from autoprune.pipeline.finish import evaluate_pruned  # noqa: E402
from autoprune.pipeline.policy_jobs import apply_policy  # noqa: E402
from autoprune.pipeline.verify import time_pair  # noqa: E402
from autoprune.policy import Policy  # noqa: E402
from autoprune.problem import floor_counts  # noqa: E402
from autoprune.reward import DEFAULT_REWARD, REWARDS  # noqa: E402
from autoprune.search import SAMPLERS, STRATEGIES, SearchEvent  # noqa: E402
from autoprune.spec import DEMO_DATA, DEMO_INPUT_SHAPE, RunSpec, load_spec  # noqa: E402

console = Console(width=None if sys.stdout.isatty() else 160)
ONE_SHOT = ("uniform", "magnitude")  # strategies of one evaluation: no search, no held-out scoring to choose by

FULL = {
    "models": f"{DEMO_MODEL},{COMPACT_MODEL}",
    "budgets": "flops=50%,30%,20%,10%,latency=70%,50%,35%",
    "strategies": "uniform,reference,magnitude,ddpg,optuna,netadapt,optuna+promote5",
    "seeds": "0,1,2",
    "episodes": 150,
    "finetune_epochs": 1.0,
    "held_out": 5000,  # autoprune search's default (cells before 2026-12-03 searched at 1000: other cells)
    "out": str(ROOT / "benchmarks" / "search_curve.csv"),
    "runs": str(ROOT / "runs" / "search_curve"),  # runs/ is gitignored
}
SMOKE = FULL | {
    "budgets": "flops=50%",
    "seeds": "0",
    "episodes": 4,
    "finetune_epochs": 0.02,
    "held_out": 200,
    "out": "/tmp/bench_curve_smoke.csv",
    "runs": "/tmp/bench_curve_smoke_runs",
}
CELL = ["model", "budget", "strategy", "seed", "finetune_epochs", "episodes"]
KEY = [*CELL, "held_out"]  # a cell: its row is never recomputed (one-shot and reference rows: no held_out)
COLUMNS = [
    *CELL,
    "budget_searched",  # the budget searched: ``budget``, or the model's floor when ``budget`` is below it
    "held_out",
    "input_shape",
    "flops_share",
    "params_share",
    "latency_measured_us",
    "latency_unpruned_us",  # the unpruned model, measured in the same interleaved rounds
    "speedup",  # latency_unpruned_us / latency_measured_us
    "latency_budget_met",  # latency budgets: the pruned model measured within the share of the unpruned one
    "test_acc_unpruned",
    "test_acc_before_ft",
    "test_acc_ft",
    "held_out_acc",  # before the fine-tune, all 5,000 held-out images
    "search_seconds",
    "cell_seconds",
    "evaluations",
    "round_to",
    "threads",
    "cpu_isa",
    "run_dir",
    "note",
    "date",
]
DEFAULT_STRATEGY = "optuna:tpe+promote5"  # autoprune search's default: TPE, then the promotion rung
TARGET_GAIN = 1.0  # issue 13: at the tightest FLOPs budget the default's mean is at least uniform's + this
TARGET_SE = 2.0  # and at no budget under uniform's by more than this many standard errors of the difference
TARGET_SPEEDUP_SHARE = 0.5  # at flops=20% every policy runs at least this x the FLOPs reduction faster
TARGET_SEEDS = 3  # seeds per fine-tuned cell
WITHIN_POINTS = 1.0  # the latency axis: fine-tuned accuracy at most this many points under the unpruned model's


class FlagError(Exception):
    """A bad flag or input file: printed as one line."""


@dataclass(frozen=True)
class Settings:
    models: list[str]
    budgets: list[str]  # normalised single-metric relative budgets, e.g. "flops=50%"
    strategies: list[str]  # labels: uniform, reference, ddpg, optuna:tpe, netadapt, ...
    seeds: list[int]
    episodes: int
    finetune_epochs: float
    held_out: int
    input_shape: tuple[int, ...]
    threads: int
    min_keep: float
    out: Path
    runs: Path
    plot_only: bool
    retime: bool = False
    merge: tuple[Path, ...] = ()

    @property
    def png(self) -> Path:
        return self.out.with_suffix(".png")

    @property
    def policies(self) -> Path:
        """Where each search cell's policy.json is kept (beside --out, committed with it)."""
        return self.out.with_name(f"{self.out.stem}_policies")


@dataclass
class ModelContext:
    """A model's unpruned network and input, prepared once per budget metric (its floor, its latency table)."""

    name: str
    setups: dict[str, Setup]  # per metric, prepared at ``metric=100%``
    bundle: DataBundle | None = None  # the data, loaded for the reference cells only
    searched: dict[str, str] = field(default_factory=dict)  # searched budget -> the requested budget it stands for

    @property
    def any(self) -> Setup:
        return next(iter(self.setups.values()))

    def floor_share(self, metric: str) -> float:
        """The cheapest policy's share at any width: below the channel block's floor the default ``--round-to``
        falls back to finer widths (:func:`autoprune.problem.coarsest_round_to`)."""
        problem = self.setups[metric].problem
        floor = floor_counts(problem.graph, problem.min_keep, 1)
        return float(problem.cost(floor)[metric] / problem.cost.baseline[metric])

    def data(self) -> DataBundle:
        if self.bundle is None:
            self.bundle = load_data(DEMO_DATA, tuple(self.any.shape[1:]))
        return self.bundle


# ----------------------------------------------------------------------------------------------------------------
# Flags


def parse_budgets(text: str) -> list[str]:
    """``flops=50%,30%,latency=70%`` -> ["flops=50%", "flops=30%", "latency=70%"]: a bare share takes the metric
    before it; only shares of the unpruned model (the curve's x axis)."""
    budgets: list[str] = []
    metric = None
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        if "=" in token:
            metric, _, value = token.partition("=")
        elif metric is None:
            raise FlagError(f"--budgets {text!r}: {token!r} needs a metric before it, e.g. flops={token}")
        else:
            value = token
        try:
            (constraint,) = parse_budget(f"{metric}={value}").constraints
        except UserError as e:
            raise FlagError(f"--budgets: {e}") from e
        if not constraint.relative:
            raise FlagError(f"--budgets: {constraint.text} is not a share: give shares of the unpruned model (50%)")
        if constraint.text not in budgets:
            budgets.append(constraint.text)
    if not budgets:
        raise FlagError("--budgets is empty: give e.g. flops=50%,30%,latency=70%")
    return budgets


@dataclass(frozen=True)
class Label:
    """A strategy label ``NAME[:SAMPLER][+REWARD][+promoteK]``: e.g. ``optuna:tpe+kd+promote5`` is an Optuna TPE
    search ranking by the ``kd`` reward whose best 5 policies are promoted. Without ``+REWARD``, ``acc``;
    ``+acc-ftN`` is the ``acc-ft`` reward after N distilled steps (``acc-ft`` alone: its default, 200); ``+warm``
    starts an Optuna study from the uniform policy and global magnitude's allocation (``warm_start``); ``+fill``
    grows uniform's or magnitude's policy into the budget its whole blocks leave (``fill``); ``+rtN`` searches with
    ``--round-to N`` instead of the default (the device's block)."""

    name: str
    sampler: str = ""
    reward: str | None = None
    promote: int = 0
    reward_steps: int | None = None  # the acc-ft reward's fine-tune steps; None: the reward's default
    warm: bool = False
    round_to: int | None = None  # --round-to; None: search's default
    fill: bool = False

    @classmethod
    def parse(cls, token: str) -> Label:
        base, *extras = token.split("+")
        name, _, sampler = base.partition(":")
        reward, promote, steps, warm, round_to, fill = None, 0, None, False, None, False
        for extra in extras:
            if extra == "warm" and name == "optuna":
                warm = True
            elif extra == "fill" and name in ONE_SHOT:
                fill = True
            elif re.fullmatch(r"rt[1-9]\d*", extra):
                round_to = int(extra.removeprefix("rt"))
            elif re.fullmatch(r"promote\d+", extra):
                promote = int(extra.removeprefix("promote"))
            elif extra in REWARDS and extra != DEFAULT_REWARD:
                reward = extra
            elif re.fullmatch(r"acc-ft[1-9]\d*", extra):
                reward, steps = "acc-ft", int(extra.removeprefix("acc-ft"))
            else:
                rewards = ", ".join(r for r in REWARDS if r != DEFAULT_REWARD)
                raise FlagError(
                    f"--strategies: {token!r}: after a + give promoteK (e.g. ddpg+promote5) or a reward ({rewards}, "
                    "or acc-ftN for N fine-tune steps), warm (optuna), fill (uniform, magnitude), or rtN (--round-to N)"
                )
        if name == "optuna":
            sampler = sampler or "tpe"
        return cls(name, sampler, reward, promote, steps, warm, round_to, fill)

    def __str__(self) -> str:
        base = f"{self.name}:{self.sampler}" if self.sampler else self.name
        reward = f"+{self.reward}{self.reward_steps or ''}" if self.reward else ""
        rt = f"+rt{self.round_to}" if self.round_to else ""
        flags = ("+warm" if self.warm else "") + ("+fill" if self.fill else "")
        return base + reward + flags + rt + (f"+promote{self.promote}" if self.promote else "")

    @property
    def options(self) -> dict:
        """The strategy and reward options the label names."""
        options: dict = {"sampler": self.sampler} if self.sampler else {}
        if self.reward_steps is not None:
            options["finetune_steps"] = self.reward_steps
        if self.warm:
            options["warm_start"] = True
        if self.fill:
            options["fill"] = True
        return options


def parse_strategies(text: str) -> list[str]:
    """Strategy labels, uniform first and reference second (the reference at a latency budget needs uniform's row)."""
    labels: list[str] = []
    for token in (t.strip() for t in text.split(",") if t.strip()):
        label = Label.parse(token)
        name, sampler = label.name, label.sampler
        if name == "optuna":
            if sampler not in SAMPLERS:
                raise FlagError(f"--strategies: unknown Optuna sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
        elif sampler or (name not in STRATEGIES and name != "reference"):
            raise FlagError(
                f"--strategies: unknown {token!r}: use reference, {', '.join(STRATEGIES)}, optuna:<sampler>"
            )
        if (label.reward or label.promote or label.round_to) and name == "reference":
            raise FlagError(f"--strategies: {token!r}: the reference makes no search to rank, promote or round")
        if (label.reward or label.promote) and name in ONE_SHOT:
            raise FlagError(f"--strategies: {token!r}: {name} makes no search to rank or promote")
        token = str(label)
        if token not in labels:
            labels.append(token)
    if not labels:
        raise FlagError("--strategies is empty: give e.g. uniform,reference,ddpg")
    return sorted(labels, key=lambda s: {"uniform": 0, "reference": 1}.get(s, 2))


def parse_args(argv: list[str] | None = None) -> Settings:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help=f"comma-separated (default {FULL['models']})")
    ap.add_argument("--budgets", help=f"comma-separated shares (default {FULL['budgets']})".replace("%", "%%"))
    ap.add_argument("--strategies", help=f"comma-separated (default {FULL['strategies']})")
    ap.add_argument("--seeds", help="comma-separated (default 0,1,2)")
    ap.add_argument("--episodes", type=int, help="evaluations per search (default 150; uniform makes 1)")
    ap.add_argument("--finetune-epochs", type=float, help="the same distilled fine-tune for every cell (default 1)")
    ap.add_argument(
        "--held-out", type=int, help=f"held-out images the search's reward scores (default {FULL['held_out']})"
    )
    ap.add_argument(
        "--input-shape",
        default="x".join(map(str, DEMO_INPUT_SHAPE)),
        help="NxCxHxW, searched and timed (default: the demo's batch of 64)",
    )
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime threads for the latency (default 2)")
    ap.add_argument("--min-keep", type=float, default=0.1, help="the smallest keep ratio of a group (default 0.1)")
    ap.add_argument("--out", help=f"the CSV appended to (default {FULL['out']}); the plot is beside it (.png)")
    ap.add_argument("--runs", help=f"where the cells' run directories go (default {FULL['runs']})")
    ap.add_argument("--plot-only", action="store_true", help="redraw the png and print the summary from --out")
    ap.add_argument(
        "--retime",
        action="store_true",
        help="time the selected rows' kept policies again on this machine and rewrite their latency columns",
    )
    ap.add_argument(
        "--merge",
        help="comma-separated CSVs of other sittings: append their rows whose cells --out lacks (the first given wins)",
    )
    ap.add_argument("--smoke", action="store_true", help="tiny settings; CSV and runs under /tmp")
    a = ap.parse_args(argv)
    d = SMOKE if a.smoke else FULL
    pick = {k: getattr(a, k) if getattr(a, k) is not None else d[k] for k in d}
    try:
        seeds = [int(s) for s in pick["seeds"].split(",") if s.strip()]
    except ValueError as e:
        raise FlagError(f"--seeds {pick['seeds']!r} is not a comma-separated list of integers") from e
    try:
        shape = parse_input_shape(a.input_shape)
    except UserError as e:
        raise FlagError(f"--input-shape: {e}") from e
    if sum(map(bool, (a.plot_only, a.retime, a.merge))) > 1:
        raise FlagError("--plot-only, --retime and --merge: give one (each also redraws the plot)")
    merge = tuple(Path(m.strip()) for m in (a.merge or "").split(",") if m.strip())
    for m in merge:
        if not m.is_file():
            raise FlagError(f"--merge: {m} does not exist: give CSVs this script wrote")
        if m.resolve() == Path(pick["out"]).resolve():
            raise FlagError(f"--merge: {m} is --out itself: give the other sittings' CSVs")
    if not seeds or pick["episodes"] < 1 or pick["held_out"] < 1 or pick["finetune_epochs"] < 0 or a.threads < 1:
        raise FlagError("--seeds needs a seed; --episodes, --held-out, --threads at least 1; --finetune-epochs >= 0")
    return Settings(
        models=[m.strip() for m in pick["models"].split(",") if m.strip()],
        budgets=parse_budgets(pick["budgets"]),
        strategies=parse_strategies(pick["strategies"]),
        seeds=seeds,
        episodes=pick["episodes"],
        finetune_epochs=pick["finetune_epochs"],
        held_out=pick["held_out"],
        input_shape=shape,
        threads=a.threads,
        min_keep=a.min_keep,
        out=Path(pick["out"]),
        runs=Path(pick["runs"]),
        plot_only=a.plot_only,
        retime=a.retime,
        merge=merge,
    )


# ----------------------------------------------------------------------------------------------------------------
# The CSV


def cpu_isa() -> str:
    """The vector ISA of this CPU (``grep -o 'avx512[a-z]*\\|avx2' /proc/cpuinfo | sort -u``, joined)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    return " ".join(sorted(set(re.findall(r"avx512[a-z]*|avx2", text)))) or "none"


def read_rows(out: Path) -> pd.DataFrame:
    """The CSV's rows (empty with the columns when there is none); one with other columns is refused."""
    if not out.is_file() or out.stat().st_size == 0:
        return pd.DataFrame(columns=COLUMNS)
    with out.open(newline="") as f:
        header = next(csv.reader(f), [])
    if header != COLUMNS:
        raise FlagError(f"{out} has other columns than this script writes: pass another --out")
    return pd.read_csv(out)


def cell_key(model: str, budget: str, strategy: str, seed: int, ft: float, episodes: int, held_out: object) -> tuple:
    """A row's cell; ``held_out`` 0 for a cell that scores no held-out images (a blank in the CSV)."""
    held = 0 if held_out == "" or pd.isna(held_out) else int(float(held_out))  # pd.isna: None and NaN
    return (model, budget, strategy, int(seed), float(ft), int(episodes), held)


def row_key(r) -> tuple:
    return cell_key(*(getattr(r, k) for k in KEY))


def done_keys(out: Path) -> set[tuple]:
    return {row_key(r) for r in read_rows(out).itertuples(index=False)}


@contextmanager
def csv_lock(out: Path) -> Iterator[None]:
    """Held while --out is appended to or rewritten, so a --retime beside a running curve loses no row."""
    key = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"bench_curve-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def append_row(out: Path, row: dict) -> None:
    """One finished cell, appended at once (a fixed header: parallel sittings never overwrite each other's rows)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with csv_lock(out):
        new = not out.is_file() or out.stat().st_size == 0
        with out.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="raise", lineterminator="\n")
            if new:
                w.writeheader()
            w.writerow(row)


def rewrite_rows(out: Path, update: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    """``--out`` replaced, under the lock, by ``update`` of its rows as they are then (a temporary file renamed
    over it: an interrupted rewrite leaves the old CSV whole)."""
    with csv_lock(out):
        rows = update(pd.read_csv(out, keep_default_na=False, dtype=str))
        tmp = out.with_name(f".{out.name}.tmp")
        rows[COLUMNS].to_csv(tmp, index=False)
        os.replace(tmp, out)


# ----------------------------------------------------------------------------------------------------------------
# Cells


def phase_printer(label: str) -> Callable[[str], None]:
    return lambda text: console.print(f"    [dim]{label}: {text}[/dim]", highlight=False, soft_wrap=True)


def prepare_model(name: str, s: Settings) -> ModelContext | None:
    """The model at ``metric=100%`` for each metric of the budgets (the latency table is chosen or built here,
    once); None, said in one line, when the model cannot be built (e.g. its checkpoint is not trained yet)."""
    setups: dict[str, Setup] = {}
    for metric in dict.fromkeys(b.partition("=")[0] for b in s.budgets):
        spec = RunSpec.create(
            f"{metric}=100%",
            name,
            None,
            strategy="uniform",
            input_shape=s.input_shape,
            threads=s.threads,
            min_keep=s.min_keep,
        )
        try:
            setups[metric] = prepare(spec, on_phase=phase_printer(name), on_table_progress=None)
        except UserError as e:
            console.print(f"[yellow]skipping model {name}: {e}[/yellow]", highlight=False, soft_wrap=True)
            return None
    return ModelContext(name, setups)


def searched_budget(ctx: ModelContext, budget: str) -> tuple[str, str] | None:
    """The budget to search for ``budget`` (itself, or the model's floor when it is below it) and a note; None when
    that floor was searched already for another budget."""
    metric, _, value = budget.partition("=")
    share, floor = float(value.rstrip("%")) / 100, ctx.floor_share(metric)
    searched, note = budget, ""
    if share < floor:
        searched = f"{metric}={math.ceil(floor * 1000) / 10:g}%"  # the floor, rounded up to a tenth of a percent
        note = f"{budget} is below the floor ({floor:.2%}, round-to 1): searched at {searched}"
    if searched in ctx.searched and ctx.searched[searched] != budget:
        console.print(f"  {ctx.name} {budget}: the floor {searched} is searched already as {ctx.searched[searched]}")
        return None
    ctx.searched[searched] = budget
    return searched, note


def run_dir_for(s: Settings, model: str, budget: str, strategy: str, seed: int, episodes: int) -> Path:
    """A cell's run directory; a search's held-out size is in the name unless it is 1,000 (the cells searched before
    the held-out size was part of a cell were all at 1,000 and keep their names)."""
    safe = budget.replace("=", "-").replace("%", "pct")
    held_out = held_out_of(s, strategy)
    held = f"-h{held_out}" if held_out not in (0, 1000) else ""
    return s.runs / model / safe / f"{strategy.replace(':', '-')}-e{episodes}{held}-ft{s.finetune_epochs:g}-s{seed}"


def kept_policy_path(s: Settings, run_dir: object) -> Path | None:
    """Where a row's policy.json is kept beside --out: named as the row's run directory is (model, budget, cell),
    under its runs folder's name when that is not --runs (a row merged from another sitting); None for a row without
    one (the reference's)."""
    if not isinstance(run_dir, str) or not run_dir:
        return None
    root, model, budget, cell = Path(run_dir).parts[-4:]
    sitting = () if root == s.runs.name else (root,)
    return s.policies.joinpath(*sitting, model, budget, f"{cell}.json")  # not with_suffix: "ft0.5" has a dot


def keep_policies(s: Settings) -> None:
    """Copy the policy.json of every row's finished run directory beside --out where it is not there yet or is
    another (cells finished before policies were kept, by another sitting, or re-run after their row was removed);
    a row whose run directory is gone keeps the copy it has."""
    for r in read_rows(s.out).itertuples(index=False):
        path = kept_policy_path(s, r.run_dir)
        if path is None or finished_policy(Path(r.run_dir)) is None:
            continue
        source = Path(r.run_dir) / "policy.json"
        if not path.is_file() or path.read_bytes() != source.read_bytes():
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, path)


def finished_policy(run_dir: Path) -> Policy | None:
    """The policy of a run directory whose search finished (an interrupted one's policy has no test accuracy)."""
    path = run_dir / "policy.json"
    if not path.is_file():
        return None
    policy = Policy.load(path)
    done = "test_accuracy" in policy.metrics and not policy.search.get("interrupted")
    return policy if done and "latency_measured_us" in policy.metrics else None


def same_search(run_dir: Path, spec: RunSpec) -> bool:
    """Whether ``run_dir`` holds (or held, interrupted) this very search; False when it holds none."""
    if not (run_dir / "args.json").is_file():
        return False
    old = {k: v for k, v in load_spec(run_dir).to_json().items() if k != "table"}
    if old != {k: v for k, v in spec.to_json().items() if k != "table"}:
        raise FlagError(f"{run_dir} holds a search with other settings: remove it or pass another --runs")
    return True


def kept_policy_met(policy: Policy) -> bool | str:
    """Whether the policy kept measured within its latency budget: its own last check. A larger uniform policy tried
    after it and measured over the limit is the last check, not the policy kept (the measured check's grow step)."""
    mine = [ch for ch in policy.metrics.get("latency_checks") or () if list(ch["kept"]) == policy.kept]
    return mine[-1]["met"] if mine else ""


def search_cell(ctx: ModelContext, s: Settings, budget: str, searched: str, strategy: str, seed: int) -> dict:
    """One ``api.search`` cell: search, prune, score, the distilled fine-tune, measure; its CSV row. A label
    ``STRATEGY+promoteK`` promotes the search's best K policies, uniform and global magnitude to 200 distilled
    fine-tune steps (without it ``promote=0``: the search's best by its reward, not ``search``'s default rung);
    ``STRATEGY+REWARD`` ranks the search's policies by that reward (:class:`Label`)."""
    label = Label.parse(strategy)
    name = label.name
    episodes = 1 if name in ONE_SHOT else s.episodes
    settings = dict(
        strategy=name,
        promote=label.promote,
        reward=label.reward,
        options=label.options,
        episodes=episodes,
        seed=seed,
        held_out=s.held_out,
        finetune_epochs=s.finetune_epochs,
        kd=True,
        measure=True,
        threads=s.threads,
        input_shape=s.input_shape,
        min_keep=s.min_keep,
        round_to=label.round_to,
    )
    run_dir = run_dir_for(s, ctx.name, budget, strategy, seed, episodes)
    resume = same_search(run_dir, RunSpec.create(searched, ctx.name, DEMO_DATA, **settings))
    started = time.perf_counter()
    policy = finished_policy(run_dir) if resume else None
    note = "read from its finished run directory" if policy is not None else ""
    if policy is None:
        label = f"{strategy} s{seed}"
        outcome = api.search(
            ctx.name,
            DEMO_DATA,
            searched,
            out=run_dir,
            resume=resume,
            callback=progress_printer(label, episodes),
            on_phase=phase_printer(label),
            **settings,
        )
        policy = outcome.policy
    m, search = policy.metrics, policy.search
    return {
        "episodes": episodes,
        "flops_share": m["flops_share"],
        "params_share": m["params_share"],
        "latency_measured_us": m["latency_measured_us"],
        "latency_unpruned_us": m["unpruned"]["latency_measured_us"],
        "latency_budget_met": kept_policy_met(policy),
        "test_acc_unpruned": m["unpruned"]["test_accuracy"],
        "test_acc_before_ft": m["test_accuracy_before_finetune"],
        "test_acc_ft": m["test_accuracy"],
        "held_out_acc": m["held_out_accuracy"],
        "search_seconds": search["search_seconds"],
        "cell_seconds": time.perf_counter() - started,
        "evaluations": search["evaluations"],
        "round_to": search["round_to"],
        "run_dir": str(run_dir),
        "note": note,
    }


def progress_printer(label: str, episodes: int) -> Callable[[SearchEvent], None]:
    every = max(1, episodes // 10)

    def show(ev: SearchEvent) -> None:
        if ev.evaluation % every == 0 or ev.evaluation == ev.episodes:
            best = "-" if ev.best_reward is None else f"{ev.best_reward:.4f}"
            console.print(
                f"    {label}: {ev.evaluation}/{ev.episodes} best {best} t={ev.seconds:.0f}s", highlight=False
            )

    return show


def classifier(net: nn.Module) -> list[nn.Module]:
    """The last linear layer, left whole as autoprune leaves it."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def reference_target(ctx: ModelContext, s: Settings, budget: str, searched: str, seed: int) -> tuple[float, str]:
    """The FLOPs share the reference prunes to: the budget's at a FLOPs budget; at a latency (or params) budget
    the share of the uniform policy of the same cell group (its row in --out)."""
    metric, _, value = searched.partition("=")
    if metric == "flops":
        return float(value.rstrip("%")) / 100, ""
    rows = read_rows(s.out)
    rows = rows[(rows["model"] == ctx.name) & (rows["budget"] == budget) & (rows["strategy"] == "uniform")]
    rows = rows[np.isclose(rows["finetune_epochs"].astype(float), s.finetune_epochs)]
    if rows.empty:
        raise FlagError(f"{ctx.name} {budget}: the reference needs the uniform row first: add uniform to --strategies")
    same = rows[rows["seed"].astype(int) == seed]
    share = float((same if not same.empty else rows)["flops_share"].iloc[-1])
    return share, f"flops target = uniform's flops_share {share:.4f} at {searched}"


def latency_met(searched: str, unpruned_us: float, pruned_us: float) -> bool:
    """A relative latency budget (``latency=50%``) judged on the pruned and unpruned models timed in the same rounds."""
    return pruned_us <= float(searched.partition("=")[2].rstrip("%")) / 100 * unpruned_us


def reference_cell(ctx: ModelContext, s: Settings, budget: str, searched: str, strategy: str, seed: int) -> dict:
    """Torch-Pruning's global magnitude pruning at a FLOPs share, then the search's scoring, distilled fine-tune
    (same lr, seed, epochs) and interleaved measurement."""
    share, note = reference_target(ctx, s, budget, searched, seed)
    setup, data = ctx.any, ctx.data()
    net, shape = setup.net, setup.shape
    one = (1, *shape[1:])
    started = time.perf_counter()
    base_flops, base_params = tp.utils.count_ops_and_params(net, torch.randn(*one))
    round_to = ctx.any.problem.round_to  # the device's channel block, as the searched policies use
    try:
        pruned, _, flops = global_magnitude_at_flops(
            net, one, share * base_flops, ignored=classifier(net), round_to=round_to
        )
    except ValueError as e:  # Torch-Pruning cannot go that low in whole blocks: any width, and say so
        note = "; ".join(filter(None, [note, f"{e}; pruned with round_to 1"]))
        round_to = 1
        pruned, _, flops = global_magnitude_at_flops(net, one, share * base_flops, ignored=classifier(net))
    search_seconds = time.perf_counter() - started
    params = tp.utils.count_ops_and_params(pruned, torch.randn(*one))[1]
    before = evaluate_pruned(pruned, data, seed=seed)
    if s.finetune_epochs > 0:
        finetune(pruned, data, epochs=s.finetune_epochs, lr=DEFAULT_FINETUNE_LR, teacher=net, seed=seed)
    table = ctx.setups["latency"].table if searched.startswith("latency") else None
    unpruned_t, pruned_t = time_pair(net, pruned, shape, table, s.threads)
    met = latency_met(searched, unpruned_t.median_us, pruned_t.median_us) if searched.startswith("latency") else ""
    return {
        "episodes": 0,
        "flops_share": flops / base_flops,
        "params_share": params / base_params,
        "latency_measured_us": pruned_t.median_us,
        "latency_unpruned_us": unpruned_t.median_us,
        "latency_budget_met": met,
        "test_acc_unpruned": accuracy(net, data.test),
        "test_acc_before_ft": before["test_accuracy"],
        "test_acc_ft": accuracy(pruned, data.test),
        "held_out_acc": before["held_out_accuracy"],
        "search_seconds": search_seconds,
        "cell_seconds": time.perf_counter() - started,
        "evaluations": 0,
        "round_to": round_to,
        "run_dir": "",
        "note": note,
    }


def run_cells(s: Settings) -> None:
    """Every missing cell, in order model > budget > strategy > seed; a row appended as each finishes."""
    done, isa = done_keys(s.out), cpu_isa()
    keep_policies(s)
    for model in s.models:
        ctx = prepare_model(model, s)
        if ctx is None:
            continue
        for budget in s.budgets:
            target = searched_budget(ctx, budget)
            if target is None:
                continue
            for strategy in s.strategies:
                name = Label.parse(strategy).name
                episodes = 1 if name in ONE_SHOT else 0 if name == "reference" else s.episodes
                held = held_out_of(s, strategy)
                for seed in s.seeds:
                    key = cell_key(model, budget, strategy, seed, s.finetune_epochs, episodes, held)
                    if key in done:
                        console.print(f"  [dim]skip (in {s.out}): {model} {budget} {strategy} seed {seed}[/dim]")
                        continue
                    append_row(s.out, run_cell(ctx, s, budget, target, strategy, seed, isa))
                    done.add(key)
                    keep_policies(s)


def held_out_of(s: Settings, strategy: str) -> int:
    """The held-out images a cell's search scores: none (0) for the one-shot strategies and the reference."""
    return 0 if Label.parse(strategy).name in (*ONE_SHOT, "reference") else s.held_out


def run_cell(
    ctx: ModelContext, s: Settings, budget: str, target: tuple[str, str], strategy: str, seed: int, isa: str
) -> dict:
    """One cell's CSV row."""
    searched, floor_note = target
    console.print(
        f"[bold]cell[/bold] {ctx.name} {budget} {strategy} seed {seed}"
        + (f" (at {searched})" if searched != budget else "")
    )
    cell = reference_cell if strategy == "reference" else search_cell
    row = cell(ctx, s, budget, searched, strategy, seed)
    row.update(
        model=ctx.name,
        budget=budget,
        budget_searched=searched,
        strategy=strategy,
        seed=seed,
        finetune_epochs=s.finetune_epochs,
        held_out=held_out_of(s, strategy) or "",
        input_shape="x".join(map(str, s.input_shape)),
        speedup=row["latency_unpruned_us"] / row["latency_measured_us"],
        threads=s.threads,
        cpu_isa=isa,
        note="; ".join(n for n in (floor_note, row["note"], reanchor_note(ctx, searched)) if n),
        date=dt.datetime.now().isoformat(timespec="seconds"),
    )
    console.print(f"  done: {describe(row)}", highlight=False)
    return row


def reanchor_note(ctx: ModelContext, searched: str) -> str:
    """For a latency cell whose table this sitting re-anchored (its speed had drifted): the fit before and after,
    so that rows priced by a stale table and by a re-anchored one can be told apart."""
    setup = ctx.setups.get(searched.partition("=")[0])
    moved = setup.reanchored if setup is not None and setup.table is not None else None
    if not moved:
        return ""
    (f0, f1), (s0, s1) = moved["fixed_us"], moved["scale"]
    return f"table re-anchored {moved['date']}: fixed {f0 / 1000:.3f} -> {f1 / 1000:.3f} ms, scale {s0:.3f} -> {s1:.3f}"


def describe(row: dict) -> str:
    return (
        f"flops {row['flops_share']:.1%}, {row['latency_measured_us'] / 1000:.2f} ms (x{row['speedup']:.2f}), "
        f"test {row['test_acc_before_ft']:.2%} -> {row['test_acc_ft']:.2%} (unpruned {row['test_acc_unpruned']:.2%}), "
        f"search {row['search_seconds']:.0f}s, cell {row['cell_seconds']:.0f}s"
    )


# ----------------------------------------------------------------------------------------------------------------
# Merging other sittings' CSVs


def merge_rows(s: Settings) -> None:
    """Append to --out the rows of each ``--merge`` CSV whose cells it lacks (the CSVs in the order given, so the
    first that has a cell gives it), the source named in ``note``, and keep their policies beside --out."""
    done = done_keys(s.out)
    for source in s.merge:
        read_rows(source)  # refuses a CSV with other columns
        with source.open(newline="") as f:
            rows = list(csv.DictReader(f))
        kept_by_source = source.with_name(f"{source.stem}_policies")
        added = 0
        for row in rows:
            key = cell_key(*(row[k] for k in KEY))
            if key in done:
                continue
            row["note"] = "; ".join(n for n in (f"from {source.name}", row["note"]) if n)
            append_row(s.out, row)
            done.add(key)
            added += 1
            dest = kept_policy_path(s, row["run_dir"])
            if dest is None:
                continue
            root, model, budget, cell = Path(row["run_dir"]).parts[-4:]
            # kept under the source's own runs folder, or under another's when the source merged it in turn
            places = (kept_by_source / model / budget, kept_by_source / root / model / budget)
            found = [p / f"{cell}.json" for p in places if (p / f"{cell}.json").is_file()]
            if found:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(found[0], dest)
            else:
                console.print(f"  [dim]no kept policy for {row['run_dir']} beside {source}[/dim]")
        console.print(f"merged {added} of {len(rows)} row(s) of {source} into {s.out}")


# ----------------------------------------------------------------------------------------------------------------
# Re-timing


def retime(s: Settings) -> None:
    """Time each selected row's kept policy again with the unpruned model, in the same interleaved rounds as a
    search's finish does, and rewrite its latency columns (the timing it replaces said in ``note``). Rows of another ISA
    and rows without a kept policy (the reference's, cells from before policies were kept) are listed and left."""
    keep_policies(s)
    rows, isa = read_rows(s.out), cpu_isa()
    chosen = rows[
        rows["model"].isin(s.models)
        & rows["budget"].isin(s.budgets)
        & rows["strategy"].isin(s.strategies)
        & rows["seed"].astype(int).isin(s.seeds)
    ]
    timed: dict[tuple, dict] = {}
    for model, group in chosen.groupby("model", sort=False):
        ctx = prepare_model(model, replace(s, budgets=list(dict.fromkeys(group["budget"]))))
        if ctx is None:
            continue
        for r in group.itertuples(index=False):
            path = kept_policy_path(s, r.run_dir)
            label = f"{r.model} {r.budget} {r.strategy} seed {r.seed}"
            if str(r.cpu_isa) != isa or path is None or not path.is_file():
                why = f"timed on {r.cpu_isa}, this machine is {isa}" if str(r.cpu_isa) != isa else "no kept policy"
                console.print(f"  [dim]not re-timed ({why}): {label}[/dim]")
                continue
            metric = r.budget_searched.partition("=")[0]
            setup = ctx.setups[metric]
            policy = Policy.load(path)
            pruned = apply_policy(setup.net, policy, setup.shape)
            unpruned_t, pruned_t = time_pair(setup.net, pruned, setup.shape, setup.table, int(r.threads))
            new = {
                "latency_measured_us": pruned_t.median_us,
                "latency_unpruned_us": unpruned_t.median_us,
                "speedup": unpruned_t.median_us / pruned_t.median_us,
            }
            if metric == "latency":
                new["latency_budget_met"] = latency_met(r.budget_searched, unpruned_t.median_us, pruned_t.median_us)
            was = (
                f"retimed {dt.date.today().isoformat()}; timed before {r.latency_measured_us / 1000:.2f} ms "
                f"(unpruned {r.latency_unpruned_us / 1000:.2f} ms, x{r.speedup:.2f})"
            )
            new["note"] = "; ".join(n for n in (str(r.note) if isinstance(r.note, str) else "", was) if n)
            timed[row_key(r)] = new
            console.print(
                f"  re-timed {label}: {new['latency_measured_us'] / 1000:.2f} ms (x{new['speedup']:.2f}; "
                f"was x{r.speedup:.2f})",
                highlight=False,
            )

    def update(df: pd.DataFrame) -> pd.DataFrame:
        for i, r in df.iterrows():
            new = timed.get(row_key(r))
            for column, value in (new or {}).items():
                df.at[i, column] = str(value)
        return df

    if timed:
        rewrite_rows(s.out, update)
        console.print(f"re-timed {len(timed)} row(s) of {s.out}")


# ----------------------------------------------------------------------------------------------------------------
# Summary and plot


def short_isa(isa: str) -> str:
    """``cpu_isa`` as its widest vector ISA (``avx512``, ``avx2``): a cell whose seeds ran on two says both."""
    return next((name for name in ("avx512", "avx2") if name in isa.split(" ") or f"{name}f" in isa), isa)


def usual_widths(df: pd.DataFrame) -> pd.Series:
    """Per (model, budget): the commonest ``round_to`` of the rows that search in blocks (not the reference's)."""
    rt = pd.to_numeric(df["round_to"], errors="coerce").fillna(0).astype(int)
    blocks = df["strategy"] != "reference"
    return rt[blocks].groupby([df["model"], df["budget"]]).agg(lambda x: int(x.mode().iloc[0]))


def width_labels(df: pd.DataFrame) -> pd.Series:
    """Each row's strategy named by the widths it ran at, not by how its flag was spelled: a cell's usual widths are
    the commonest ``round_to`` of its (model, budget) among the rows that search in blocks (the reference prunes at
    any width by definition), and a row at other widths says so (``+rtN``). The default ``--round-to`` is the
    device's block, so ``uniform`` run where the table's block is 16 and ``uniform+rt8`` run where it is 8 are not
    one cell, while ``uniform`` and ``uniform+rt8`` both run in blocks of 8 are."""
    rt = pd.to_numeric(df["round_to"], errors="coerce").fillna(0).astype(int)
    usual = usual_widths(df)

    def label(strategy: str, model: str, budget: str, widths: int) -> str:
        parsed = replace(Label.parse(strategy), round_to=None)
        if strategy != "reference" and widths and widths != usual.get((model, budget), widths):
            parsed = replace(parsed, round_to=widths)
        return str(parsed)

    return pd.Series(
        [label(*r) for r in zip(df["strategy"], df["model"], df["budget"], rt, strict=True)], index=df.index
    )


def cell_means(df: pd.DataFrame) -> pd.DataFrame:
    """Per (model, budget, strategy): mean and std over seeds (accuracies in points), one fine-tune length only.
    Strategies are named by the widths they ran at (:func:`width_labels`); a seed with several rows (the same cell
    run in several sittings, or under two spellings) counts once, by its newest row: the code as it now is."""
    df = df[df["test_acc_ft"].notna()].copy()
    fts = sorted(df["finetune_epochs"].unique())
    if len(fts) > 1:
        console.print(f"[yellow]--out mixes fine-tunes {fts}: the summary shows {fts[-1]} epoch(s) only[/yellow]")
        df = df[df["finetune_epochs"] == fts[-1]]
    if df.empty:
        return pd.DataFrame()
    df["strategy"] = width_labels(df)
    df["held"] = pd.to_numeric(df["held_out"], errors="coerce").fillna(0).astype(int)
    counts = df.groupby(["model", "strategy"])["episodes"].transform("nunique")
    df["label"] = np.where(counts > 1, df["strategy"] + " (" + df["episodes"].astype(str) + " ep)", df["strategy"])
    helds = df.groupby(["model", "strategy"])["held"].transform("nunique")
    df["label"] = np.where(helds > 1, df["label"] + " (held-out " + df["held"].astype(str) + ")", df["label"])
    df = df.sort_values("date", kind="stable", na_position="first").drop_duplicates(
        ["model", "budget", "label", "seed"], keep="last"
    )
    for c in ("test_acc_ft", "test_acc_before_ft", "test_acc_unpruned"):
        df[c] = 100 * df[c]
    df["metric"] = df["budget_searched"].str.partition("=")[0]
    df["share"] = df["budget_searched"].str.partition("=")[2].str.rstrip("%").astype(float)
    keys = ["model", "metric", "share", "budget", "label", "strategy", "held"]
    g = df.groupby(keys, sort=True)
    out = g.agg(
        n=("seed", "nunique"),
        seeds=("seed", lambda x: tuple(sorted({int(v) for v in x}))),
        acc=("test_acc_ft", "mean"),
        acc_std=("test_acc_ft", "std"),
        before=("test_acc_before_ft", "mean"),
        unpruned=("test_acc_unpruned", "mean"),
        flops=("flops_share", "mean"),
        latency_us=("latency_measured_us", "mean"),
        speedup=("speedup", "mean"),
        min_speedup=("speedup", "min"),
        search_s=("search_seconds", "mean"),
        isa=("cpu_isa", lambda x: "+".join(sorted({short_isa(str(v)) for v in x}))),
    )
    out = out.reset_index().fillna({"acc_std": 0.0})
    # the display name is the label; "strategy" keeps the name without the episode or held-out count
    return out.rename(columns={"strategy": "base", "label": "strategy"})


def standard_error(a: pd.Series, b: pd.Series) -> float:
    """The standard error of the difference of two cells' means over their seeds (independent seeds)."""
    return math.hypot(a["acc_std"] / math.sqrt(a["n"]), b["acc_std"] / math.sqrt(b["n"]))


def print_summary(means: pd.DataFrame) -> None:
    t = Table(title="test accuracy after the fine-tune, mean ± std over seeds (points)")
    columns = (
        "model",
        "budget",
        "strategy",
        "n",
        "flops",
        "latency",
        "speedup",
        "ISA",
        "before FT",
        "after FT",
        "− uniform",
    )
    for c in columns:
        t.add_column(c, justify="left" if c in ("model", "budget", "strategy", "ISA") else "right")
    for _, r in means.iterrows():
        u = cell_of(means, r["model"], r["budget"], "uniform")
        diff = ""
        if r["strategy"] != "uniform" and u is not None:
            diff = f"{r['acc'] - u['acc']:+.2f} ± {standard_error(r, u):.2f}"
        t.add_row(
            r["model"],
            r["budget"],
            r["strategy"],
            str(r["n"]),
            f"{100 * r['flops']:.1f}%",
            f"{r['latency_us'] / 1000:.2f} ms",
            f"x{r['speedup']:.2f}",
            r["isa"],
            f"{r['before']:.2f}",
            f"{r['acc']:.2f} ± {r['acc_std']:.2f}",
            diff,
        )
    console.print(t)
    print_latency_axis(means)
    print_targets(means)


def cell_of(means: pd.DataFrame, model: str, budget: str, strategy: str, held: int | None = None) -> pd.Series | None:
    """The cell of ``strategy`` (its name without episode or held-out counts) at (model, budget), at ``held``
    held-out images when given; of several (episode counts), the one with the most seeds; None when there is none."""
    rows = means[(means["model"] == model) & (means["budget"] == budget) & (means["base"] == strategy)]
    if held is not None:
        rows = rows[rows["held"] == held]
    return None if rows.empty else rows.loc[rows["n"].idxmax()]


def target_checks(means: pd.DataFrame) -> pd.DataFrame:
    """Issue 13's targets, checked on the cells as they are: per model, at the tightest FLOPs budget where the
    default search (:data:`DEFAULT_STRATEGY` on ``search``'s held-out size) and uniform both have a cell, the default's
    mean is at least uniform's + :data:`TARGET_GAIN` and at least the reference's; at every budget it is not below
    uniform's by more than :data:`TARGET_SE` standard errors of the difference; at ``flops=20%`` every strategy's
    slowest measured policy runs at least :data:`TARGET_SPEEDUP_SHARE` x the FLOPs reduction faster (the reference,
    Torch-Pruning's at any width, is shown but is no policy of autoprune's). A cell with fewer than
    :data:`TARGET_SEEDS` seeds says so: its verdict is not final."""
    checks: list[dict] = []

    def check(model: str, budget: str, target: str, measured: str, met: bool, n: int) -> None:
        verdict = "met" if met else "not met"
        if n < TARGET_SEEDS:
            verdict += f" ({n} of {TARGET_SEEDS} seeds)"
        checks.append({"model": model, "budget": budget, "target": target, "measured": measured, "verdict": verdict})

    held = int(FULL["held_out"])
    for model, sub in means.groupby("model", sort=True):
        budgets = sub.sort_values(["metric", "share"], ascending=[True, False])["budget"].unique()
        pairs = {
            b: (d, u)
            for b in budgets
            if (d := cell_of(sub, model, b, DEFAULT_STRATEGY, held)) is not None
            and (u := cell_of(sub, model, b, "uniform")) is not None
        }
        flops = [b for b in pairs if b.startswith("flops=")]
        if flops:
            tightest = min(flops, key=lambda b: float(b.partition("=")[2].rstrip("%")))
            d, u = pairs[tightest]
            gain, se = d["acc"] - u["acc"], standard_error(d, u)
            check(
                model,
                tightest,
                f"default >= uniform + {TARGET_GAIN:g} (tightest FLOPs budget)",
                f"{d['acc']:.2f} vs {u['acc']:.2f}: {gain:+.2f} ± {se:.2f}",
                gain >= TARGET_GAIN,
                min(d["n"], u["n"]),
            )
            ref = cell_of(sub, model, tightest, "reference")
            if ref is not None:
                check(
                    model,
                    tightest,
                    "default >= reference (tightest FLOPs budget)",
                    f"{d['acc']:.2f} vs {ref['acc']:.2f}: {d['acc'] - ref['acc']:+.2f}",
                    d["acc"] >= ref["acc"],
                    min(d["n"], ref["n"]),
                )
        for budget, (d, u) in pairs.items():
            gain, se = d["acc"] - u["acc"], standard_error(d, u)
            check(
                model,
                budget,
                f"default not under uniform by > {TARGET_SE:g} s.e.",
                f"{gain:+.2f} ± {se:.2f}",
                gain >= -TARGET_SE * se,
                min(d["n"], u["n"]),
            )
        for _, r in sub[sub["budget"] == "flops=20%"].iterrows():
            needed = TARGET_SPEEDUP_SHARE / r["flops"]
            check(
                model,
                r["budget"],
                f"speed-up >= {TARGET_SPEEDUP_SHARE:g} x FLOPs reduction: {r['strategy']}",
                f"slowest x{r['min_speedup']:.2f}, needs x{needed:.2f} ({r['isa']})",
                r["min_speedup"] >= needed,
                int(r["n"]),
            )
    return pd.DataFrame(checks, columns=["model", "budget", "target", "measured", "verdict"])


def grid_status(means: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """Issue 13's full grid against the cells as they are: per model and strategy of :data:`FULL` (the default
    search on ``search``'s held-out size, the others on any), the seeds each of :data:`FULL`'s budgets has, the
    seed-cells missing to :data:`TARGET_SEEDS` each, and the hours those would take at the median wall time of the
    model's finished cells of that strategy (NaN where none has finished). ``means``: :func:`cell_means` of
    ``rows``."""
    seconds = median_cell_seconds(rows)
    budgets = parse_budgets(str(FULL["budgets"]))
    out = []
    for model in str(FULL["models"]).split(","):
        for strategy in parse_strategies(str(FULL["strategies"])):
            seeds = {b: len(grid_seeds(means, model, b, strategy)) for b in budgets}
            missing = sum(max(TARGET_SEEDS - n, 0) for n in seeds.values())
            each = seconds.get((model, strategy))
            hours = float("nan") if each is None or pd.isna(each) else missing * float(each) / 3600
            out.append({"model": model, "strategy": strategy, **seeds, "missing": missing, "hours": hours})
    return pd.DataFrame(out, columns=["model", "strategy", *budgets, "missing", "hours"])


def median_cell_seconds(rows: pd.DataFrame) -> pd.Series:
    """Per (model, strategy named by its widths): the median wall time of its finished cells."""
    timed = rows[rows["test_acc_ft"].notna()].copy()
    timed["base"] = width_labels(timed) if len(timed) else pd.Series(dtype=str)
    return pd.to_numeric(timed["cell_seconds"], errors="coerce").groupby([timed["model"], timed["base"]]).median()


def grid_seeds(means: pd.DataFrame, model: str, budget: str, strategy: str) -> tuple[int, ...]:
    """The seeds of :data:`FULL`'s cell (the default search counted on ``search``'s held-out size only)."""
    held = int(FULL["held_out"]) if strategy == DEFAULT_STRATEGY else None
    cell = cell_of(means, model, budget, strategy, held) if len(means) else None
    return () if cell is None else tuple(cell["seeds"])


def fill_commands(means: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """The ``bench_curve.py`` commands that fill :func:`grid_status`'s missing seed-cells, cheapest first: per model,
    strategy and set of missing seeds, the budgets that lack them. Each strategy is spelled with its cell's usual
    widths (``+rtN``, :func:`usual_widths`) where the cell has rows, so a sitting on a machine with another channel
    block (whose default ``--round-to`` differs) adds to the cell instead of starting a ``+rtN`` one beside it;
    ``hours`` is at the median wall time of the model's finished cells of the strategy (NaN: none finished)."""
    usual = usual_widths(rows[rows["test_acc_ft"].notna()]) if len(rows) else pd.Series(dtype=int)
    seconds = median_cell_seconds(rows)
    groups: dict[tuple[str, str, str, tuple[int, ...]], list[str]] = {}
    for model in str(FULL["models"]).split(","):
        for strategy in parse_strategies(str(FULL["strategies"])):
            for budget in parse_budgets(str(FULL["budgets"])):
                have = grid_seeds(means, model, budget, strategy)
                free = (s for s in itertools.count() if s not in have)
                seeds = tuple(itertools.islice(free, max(TARGET_SEEDS - len(have), 0)))
                if not seeds:
                    continue
                widths = usual.get((model, budget)) if strategy != "reference" else None  # any width, always
                spelled = str(replace(Label.parse(strategy), round_to=int(widths) if widths else None))
                groups.setdefault((model, strategy, spelled, seeds), []).append(budget)
    out = []
    for (model, strategy, spelled, seeds), budgets in groups.items():
        each = seconds.get((model, strategy))
        hours = float("nan") if each is None or pd.isna(each) else len(seeds) * len(budgets) * float(each) / 3600
        command = (
            f"--models {model} --budgets {','.join(budgets)} --strategies {spelled} --seeds {','.join(map(str, seeds))}"
        )
        out.append({"model": model, "strategy": spelled, "hours": hours, "command": command})
    frame = pd.DataFrame(out, columns=["model", "strategy", "hours", "command"])
    return frame.sort_values("hours", kind="stable", na_position="last").reset_index(drop=True)


def print_grid(means: pd.DataFrame, rows: pd.DataFrame) -> None:
    grid = grid_status(means, rows)
    budgets = [c for c in grid.columns if "=" in c]
    left = int(grid["missing"].sum())
    t = Table(title=f"issue 13's full grid: seeds per cell ({TARGET_SEEDS} needed); {left} seed-cells missing")
    for c in ("model", "strategy", *budgets, "missing", "hours"):
        t.add_column(c, justify="left" if c in ("model", "strategy") else "right")
    for r in grid.to_dict("records"):
        hours = "?" if pd.isna(r["hours"]) else f"{r['hours']:.1f}"
        t.add_row(r["model"], r["strategy"], *(str(r[b]) for b in budgets), str(r["missing"]), hours)
    console.print(t)
    commands = fill_commands(means, rows)
    if len(commands):
        console.print("to fill it, cheapest first (hours at the median cell time; +rtN keeps a cell's widths):")
        for r in commands.itertuples(index=False):
            hours = "?" if pd.isna(r.hours) else f"{r.hours:.1f} h"
            console.print(f"  {hours:>6}  python scripts/bench_curve.py {r.command}", soft_wrap=True, highlight=False)


def print_targets(means: pd.DataFrame) -> None:
    checks = target_checks(means)
    t = Table(title=f"issue 13's targets on these cells (default: {DEFAULT_STRATEGY}, held-out {FULL['held_out']})")
    for c in checks.columns:
        t.add_column(c)
    for r in checks.itertuples(index=False):
        t.add_row(*(str(v) for v in r))
    console.print(t)


def print_latency_axis(means: pd.DataFrame) -> None:
    """Per (model, strategy): the lowest measured latency whose mean fine-tuned accuracy is within 1 point."""
    t = Table(
        title=f"lowest measured latency within {WITHIN_POINTS:g} point of unpruned (cell means over seeds; ranked by "
        "the speedup over the unpruned model timed in the same rounds, which a busy machine's drift cancels out of)"
    )
    for c in ("model", "strategy", "budget", "latency", "speedup", "after FT", "unpruned", "CPU ISA"):
        t.add_column(c, justify="left" if c in ("model", "strategy", "budget", "CPU ISA") else "right")
    for (model, strategy), g in means.groupby(["model", "strategy"], sort=True):
        ok = g[g["acc"] >= g["unpruned"] - WITHIN_POINTS]
        if ok.empty:
            t.add_row(
                model, strategy, "none within", "", "", f"best {g['acc'].max():.2f}", f"{g['unpruned'].mean():.2f}"
            )
            continue
        r = ok.loc[ok["speedup"].idxmax()]
        t.add_row(
            model,
            strategy,
            r["budget"],
            f"{r['latency_us'] / 1000:.2f} ms",
            f"x{r['speedup']:.2f}",
            f"{r['acc']:.2f}",
            f"{r['unpruned']:.2f}",
            r["isa"],
        )
    console.print(t)


def plot(means: pd.DataFrame, png: Path) -> None:
    """One row of panels per model, one panel per budget metric: accuracy after fine-tuning vs budget share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted(dict.fromkeys(means["model"]), key=lambda m: (m != DEMO_MODEL, m != COMPACT_MODEL, m))
    metrics = sorted(dict.fromkeys(means["metric"]), key=lambda m: (m != "flops", m))
    strategies = sorted(dict.fromkeys(means["strategy"]), key=lambda x: {"uniform": 0, "reference": 1}.get(x, 2))
    fig, axes = plt.subplots(
        len(models), len(metrics), figsize=(8 * len(metrics), 4.5 * len(models)), squeeze=False, sharey="row"
    )
    markers = "osD^v<>ph*Xd"  # with the 10 colours, 17+ strategies stay apart
    spread = min(0.3, 2.0 / max(len(strategies), 1))  # side by side, within a point of the budget's share
    for i, model in enumerate(models):
        for j, metric in enumerate(metrics):
            ax, sub = axes[i][j], means[(means["model"] == model) & (means["metric"] == metric)]
            if sub.empty:  # this model has no cell at this metric's budgets yet
                ax.set_title(f"{model}, {metric} budgets: no cell yet")
                ax.axis("off")
                continue
            for k, strategy in enumerate(strategies):
                r = sub[sub["strategy"] == strategy].sort_values("share")
                if r.empty:
                    continue
                dx = (k - (len(strategies) - 1) / 2) * spread  # so the error bars do not hide each other
                ax.errorbar(
                    r["share"] + dx,
                    r["acc"],
                    yerr=r["acc_std"],
                    marker=markers[k % len(markers)],
                    color=f"C{k % 10}",
                    capsize=3,
                    label=strategy,
                )
            unpruned = sub["unpruned"].mean()
            ax.axhline(unpruned, color="black", linestyle="--", linewidth=1, label=f"unpruned {unpruned:.2f}")
            ax.axhline(unpruned - WITHIN_POINTS, color="grey", linestyle=":", linewidth=1, label="unpruned − 1")
            ax.set_title(f"{model}, {metric} budgets")
            ax.set_xlabel(
                f"{metric} budget (% of the unpruned model{', measured here' if metric == 'latency' else ''})"
            )
            ax.set_ylabel("test accuracy after fine-tune (%)")
            ax.tick_params(labelleft=True)  # a shared y axis labels only the first panel, which may be empty
            ax.set_xticks(sorted(sub["share"].unique()))
            ax.set_xlim(sub["share"].max() + 3, sub["share"].min() - 3)  # tighter budgets to the right
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    isa = ",".join(sorted(set(",".join(means["isa"]).split(","))))
    fig.suptitle(f"search curve: mean ± std over seeds\n(CPU ISA {isa})", fontsize="medium")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)
    console.print(f"wrote {png}")


def report(s: Settings) -> None:
    """The summary tables and the plot, from every row of --out."""
    if not s.out.is_file() and s.plot_only:
        raise FlagError(f"{s.out} does not exist: run the curve first (or pass --out)")
    if not s.out.is_file():
        console.print(f"no cell has finished: {s.out} was not written")
        return
    rows = read_rows(s.out)
    means = cell_means(rows)
    if means.empty:
        console.print(f"{s.out} has no finished cell yet")
        return
    print_summary(means)
    print_grid(means, rows)
    plot(means, s.png)


def main(argv: list[str] | None = None) -> int:
    try:
        s = parse_args(argv)
        if s.retime:
            retime(s)
        elif s.merge:
            merge_rows(s)
        elif not s.plot_only:
            run_cells(s)
        report(s)
    except (FlagError, UserError) as e:
        print(f"bench_curve: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "bench_curve: interrupted; the finished cells are in --out: run the same command to resume", file=sys.stderr
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
