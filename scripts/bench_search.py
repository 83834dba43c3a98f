"""Benchmark the search strategies on the demo model (ResNet-20, Fashion-MNIST) at one budget.

Each strategy runs with the same evaluation budget and seed through ``autoprune.search.run_search``; its best
policy is then scored the same way for every row — apply, BN recalibration on the same training batches, accuracy
on the whole held-out split and on the test split — and optionally after the same fine-tune. Torch-Pruning's global
magnitude pruning at the same FLOPs is the reference row. One CSV row per run is appended to ``--out``; the
evaluation history of each run goes to ``benchmarks/search_history/``.

    .venv/bin/python scripts/bench_search.py --strategies uniform,reference --episodes 300
    .venv/bin/python scripts/bench_search.py --strategies ddpg --episodes 300 --held-out 2000
    .venv/bin/python scripts/bench_search.py --measure-evaluator      # per-phase seconds vs held-out size
    .venv/bin/python scripts/bench_search.py --refinetune uniform,ddpg --ft-seeds 0,1 --kd   # FT rows of found policies

``--refinetune`` takes the best policy of each named row already in ``--out`` and fine-tunes it again for
``--finetune-epochs`` with each seed of ``--ft-seeds`` (plain, or distilled from the unpruned model with ``--kd``),
appending one row per seed to ``benchmarks/search_finetune.csv``: one fine-tune is too noisy to separate
policies that differ by a few tenths of a point.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoprune.budget import parse_budget  # noqa: E402
from autoprune.cost.model import CostModel  # noqa: E402
from autoprune.data import load_data  # noqa: E402
from autoprune.layers import analyze  # noqa: E402
from autoprune.models import build_model  # noqa: E402
from autoprune.problem import Problem  # noqa: E402
from autoprune.prune import ChannelPruner  # noqa: E402
from autoprune.report import read_history  # noqa: E402
from autoprune.reward import Evaluator  # noqa: E402
from autoprune.search import STRATEGIES, run_search  # noqa: E402
from autoprune.training import TrainConfig, train  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark's own modules beside it

from reference_pruning import evaluate_model, global_magnitude_at_flops  # noqa: E402

SHAPE = (1, 1, 28, 28)
COLUMNS = [
    "strategy",
    "budget",
    "reward",
    "episodes",
    "evaluations",
    "seed",
    "search_held_out",
    "flops_share",
    "best_reward",
    "held_out_acc",
    "test_acc",
    "test_acc_ft",
    "finetune_epochs",
    "wall_s",
    "mean_episode_s",
    "mean_apply_s",
    "mean_finetune_s",
    "mean_recalibrate_s",
    "mean_evaluate_s",
    "mean_update_s",
    "mean_eval_s",
    "warmup",
    "warmup_mean_reward",
    "last50_mean_reward",
    "tolerance",
    "iterations",
    "kept",
    "command",
]


def setup(args):
    if args.smoke:  # a random-weight model on synthetic data: checks the script runs, measures nothing
        model, _ = build_model("resnet20", in_channels=1, num_classes=10)
        data = load_data("synthetic:512", SHAPE[1:], held_out=128)
    elif args.random_weights:  # the demo architecture and data without its checkpoint: timing only
        model, _ = build_model("resnet20", in_channels=1, num_classes=10)
        data = load_data("fashion-mnist")
    else:
        model, _ = build_model("fmnist-resnet20")
        data = load_data("fashion-mnist")
    graph = analyze(model, SHAPE, "fmnist-resnet20")
    pruner = ChannelPruner(model, SHAPE, graph=graph, criterion="l2")
    problem = Problem(graph, CostModel(graph), parse_budget(args.budget), min_keep=args.min_keep)
    return model, data, graph, pruner, problem


def finetune_and_test(model, data, test_eval: Evaluator, epochs: float, seed: int, teacher=None) -> float:
    """The same fine-tune for every row: SGD, lr 0.01 cosine, augmentation, ``epochs`` epochs (distilled from
    ``teacher``'s logits when given)."""
    model = copy.deepcopy(model)
    train(model, data.train, TrainConfig(epochs=epochs, lr=0.01, seed=seed), teacher=teacher)
    return evaluate_model(test_eval, model, recalibrate=False)


def refinetune(args) -> None:
    """Fine-tune the best policy of earlier rows again, with several seeds and optionally distillation."""
    model, data, graph, pruner, problem = setup(args)
    test_data = dataclasses.replace(data, held_out=data.test)
    final_test = Evaluator(pruner, test_data, held_out=None, calib_batches=args.calib_batches, seed=0)
    df = pd.read_csv(args.out).drop_duplicates(["strategy", "reward", "budget", "search_held_out"], keep="last")
    out = ROOT / "benchmarks" / "search_finetune.csv"
    for spec in args.refinetune.split(","):
        name, _, reward = spec.partition("@")
        rows = df[(df["strategy"] == name) & (df["budget"] == args.budget)]
        if name not in ("uniform", "reference"):  # the search run with this --held-out
            rows = rows[rows["search_held_out"] == args.held_out]
        if reward:
            rows = rows[rows["reward"] == reward]
        if rows.empty:
            raise SystemExit(f"no row {spec!r} at {args.budget} in {args.out}")
        r = rows.iloc[-1]
        kept = json.loads(r["kept"])
        label = r["reward"]
        if args.rerank and not isinstance(kept, dict) and name != "uniform":
            kept = rerank(args, name, r["reward"], pruner, data)
            label = f"{r['reward']}+rerank{args.rerank}x{args.rerank_steps}"
        if isinstance(kept, dict):  # the reference row: Torch-Pruning's global pruning at its ratio
            pruned, _, _ = global_magnitude_at_flops(model, SHAPE, problem.limits["flops"], ignored=[model.fc])
        else:
            pruned = pruner.apply(kept)
        final_test.recalibrate(pruned)
        for seed in (int(x) for x in args.ft_seeds.split(",")):
            t0 = time.perf_counter()
            acc = finetune_and_test(
                pruned, data, final_test, args.finetune_epochs, seed, teacher=model if args.kd else None
            )
            row = {
                "strategy": name,
                "reward": label,
                "budget": args.budget,
                "test_acc": r["test_acc"],
                "kd": args.kd,
                "ft_seed": seed,
                "finetune_epochs": args.finetune_epochs,
                "test_acc_ft": acc,
                "seconds": round(time.perf_counter() - t0, 1),
            }
            print(row, flush=True)
            pd.DataFrame([row]).to_csv(out, mode="a", header=not out.is_file(), index=False)


def history_name(strategy: str, reward: str, seed: int, held_out: int) -> str:
    """The file of a run's evaluation history (2,000 held-out images, the first runs' size, carries no suffix)."""
    suffix = "" if held_out == 2000 else f"-heldout{held_out}"
    return f"{strategy.replace(':', '-')}-{reward}-seed{seed}{suffix}.csv"


def rerank(args, name: str, reward: str, pruner, data) -> list[int]:
    """NetAdapt's short-term fine-tune as a tie-break: the ``--rerank`` best distinct policies of the run's history,
    each fine-tuned ``--rerank-steps`` steps (distilled with ``--kd``) and scored on the held-out split; the best."""
    hist = ROOT / "benchmarks" / "search_history" / history_name(name, reward, args.seed, args.held_out)
    h = read_history(hist)
    h = h[h["feasible"].astype(bool) & h["reward"].notna()].drop_duplicates("kept").nlargest(args.rerank, "reward")
    ev = Evaluator(
        pruner,
        data,
        held_out=args.held_out,
        calib_batches=args.calib_batches,
        seed=0,
        finetune_steps=args.rerank_steps,
        kd=args.kd,
    )
    scored = []
    for kept_tuple, rew in zip(h["kept"], h["reward"], strict=True):
        kept = list(kept_tuple)
        acc = ev.evaluate(kept).accuracy
        print(
            f"rerank {name}@{reward}: reward {rew:.4f} -> {acc:.4f} after {args.rerank_steps} steps {kept}", flush=True
        )
        scored.append((acc, kept))
    return max(scored, key=lambda t: t[0])[1]


def measure_evaluator(args) -> None:
    model, data, graph, pruner, problem = setup(args)
    rng = np.random.default_rng(0)
    policies = [problem.project(rng.uniform(args.min_keep, 1, len(problem.channels))) for _ in range(args.repeats)]
    rows = []
    configs = [(False, 5000, 10), (True, 5000, 10), (True, 2000, 10), (True, 2000, 5), (True, 1000, 5)]
    for fast, held, calib in configs:
        ev = Evaluator(pruner, data, held_out=held, calib_batches=calib, fast=fast)
        ev.evaluate(policies[0])  # warm-up
        ev._cache.clear()
        phases = [ev.evaluate(k).phases for k in policies]
        row = {"fast": fast, "held_out": held, "calib_batches": calib, "threads": torch.get_num_threads()}
        for p in ("apply", "recalibrate", "evaluate"):
            row[p + "_s"] = float(np.mean([ph[p] for ph in phases]))
        row["total_s"] = row["apply_s"] + row["recalibrate_s"] + row["evaluate_s"]
        row["accuracy_mean"] = float(np.mean([ev._cache[(tuple(int(x) for x in k), 0)].accuracy for k in policies]))
        rows.append(row)
        print(row, flush=True)
    ft = Evaluator(pruner, data, held_out=args.held_out, finetune_steps=args.finetune_steps)
    t = time.perf_counter()
    e = ft.evaluate(policies[0])
    rows.append(
        {
            "fast": True,
            "held_out": args.held_out,
            "calib_batches": 0,
            "threads": torch.get_num_threads(),
            "reward": f"acc-ft ({args.finetune_steps} steps)",
            "total_s": time.perf_counter() - t,
            **{k + "_s": v for k, v in e.phases.items()},
        }
    )
    print(rows[-1], flush=True)
    out = ROOT / "benchmarks" / "search_evaluator_timing.csv"
    pd.DataFrame(rows).to_csv(out, index=False)
    print(f"wrote {out}")


def print_table(path: Path) -> None:
    """The comparison table of README's "Search strategies" section, from the CSV (latest row per strategy)."""
    df = pd.read_csv(path).drop_duplicates(["strategy", "reward", "budget", "search_held_out"], keep="last")
    cols = [
        "strategy",
        "reward",
        "evaluations",
        "flops_share",
        "held_out_acc",
        "test_acc",
        "test_acc_ft",
        "wall_s",
        "warmup_mean_reward",
        "last50_mean_reward",
    ]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            v = r.get(c)
            if v is None or (isinstance(v, float) and np.isnan(v)):
                cells.append("")
            elif c in ("held_out_acc", "test_acc", "test_acc_ft", "flops_share"):
                cells.append(f"{100 * v:.2f}")
            elif isinstance(v, float):
                cells.append(f"{v:.4g}")
            else:
                cells.append(str(v))
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--strategies",
        default="uniform,reference",
        help=f"comma-separated: {', '.join(STRATEGIES)}, reference, optuna:<sampler>",
    )
    ap.add_argument("--episodes", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", default="flops=50%")
    ap.add_argument("--min-keep", type=float, default=0.1)
    ap.add_argument("--reward", default="acc")
    ap.add_argument("--held-out", type=int, default=2000, help="held-out images the search's reward scores")
    ap.add_argument("--calib-batches", type=int, default=10)
    ap.add_argument("--finetune-steps", type=int, default=200, help="the acc-ft reward's fine-tune length")
    ap.add_argument("--finetune-epochs", type=float, default=0.0, help="fine-tune each best policy, then test")
    ap.add_argument("--options", default="{}", help="JSON strategy options")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "search_strategies.csv"))
    ap.add_argument("--measure-evaluator", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="random weights + synthetic data; output to /tmp")
    ap.add_argument("--table", action="store_true", help="print --out as a markdown table and exit")
    ap.add_argument("--random-weights", action="store_true", help="the demo architecture untrained (timing only)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument(
        "--refinetune",
        default="",
        help="comma-separated rows of --out (strategy or strategy@reward) whose best policy is fine-tuned again",
    )
    ap.add_argument("--ft-seeds", default="0", help="fine-tune seeds for --refinetune")
    ap.add_argument("--kd", action="store_true", help="--refinetune distils from the unpruned model")
    ap.add_argument(
        "--rerank",
        type=int,
        default=0,
        help="--refinetune: pick among this many best policies of the run's history by a short fine-tune first",
    )
    ap.add_argument("--rerank-steps", type=int, default=200)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure_evaluator:
        measure_evaluator(args)
        return
    if args.table:
        print_table(Path(args.out))
        return
    if args.refinetune:
        refinetune(args)
        return
    command = "python scripts/bench_search.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    model, data, graph, pruner, problem = setup(args)
    search_eval = Evaluator(pruner, data, held_out=args.held_out, calib_batches=args.calib_batches, seed=args.seed)
    final_held = Evaluator(pruner, data, held_out=None, calib_batches=args.calib_batches, seed=args.seed)
    test_data = dataclasses.replace(data, held_out=data.test)
    final_test = Evaluator(pruner, test_data, held_out=None, calib_batches=args.calib_batches, seed=args.seed)
    if args.smoke:
        args.out = "/tmp/bench_search_smoke.csv"
    hist_dir = Path("/tmp/bench_search_history") if args.smoke else ROOT / "benchmarks" / "search_history"
    hist_dir.mkdir(parents=True, exist_ok=True)
    for spec in args.strategies.split(","):
        name, _, sampler = spec.partition(":")
        t0 = time.perf_counter()
        row: dict = {
            "strategy": spec,
            "budget": args.budget,
            "episodes": args.episodes,
            "seed": args.seed,
            "reward": args.reward if name not in ("uniform", "reference") else None,
            "search_held_out": args.held_out,
        }
        if name == "reference":
            limit = problem.limits["flops"]
            pruned, ratio, flops = global_magnitude_at_flops(model, SHAPE, limit, ignored=[model.fc])
            row.update(
                evaluations=0,
                wall_s=time.perf_counter() - t0,
                flops_share=flops / problem.cost.baseline["flops"],
                held_out_acc=evaluate_model(final_held, pruned),
                test_acc=evaluate_model(final_test, pruned),
                kept=json.dumps({"tp_pruning_ratio": round(ratio, 4)}),
            )
            if args.finetune_epochs:
                final_test.recalibrate(pruned)
                row["test_acc_ft"] = finetune_and_test(pruned, data, final_test, args.finetune_epochs, args.seed)
        else:
            options = json.loads(args.options)
            if sampler:
                options["sampler"] = sampler
            if name != "uniform":
                options["reward"] = args.reward
                options["finetune_steps"] = args.finetune_steps

            def progress(ev, _every=max(1, args.episodes // 20), _spec=spec):
                if ev.evaluation % _every == 0 or ev.evaluation == ev.episodes:
                    print(
                        f"  {_spec} {ev.evaluation}/{ev.episodes} best={ev.best_reward} "
                        f"flops={ev.best_costs.get('flops', float('nan')):.3f} t={ev.seconds:.0f}s",
                        flush=True,
                    )

            result = run_search(
                name,
                problem,
                search_eval if name != "uniform" else None,
                episodes=args.episodes,
                seed=args.seed,
                options=options,
                callback=progress,
                workdir=Path(tempfile.mkdtemp(prefix="bench-search-")),
            )
            h = result.history
            kept = result.best_kept
            row.update(
                evaluations=result.evaluations,
                wall_s=result.seconds,
                flops_share=problem.cost_shares(kept)["flops"],
                best_reward=result.best_reward,
                held_out_acc=final_held.evaluate(kept).accuracy,
                test_acc=final_test.evaluate(kept).accuracy,
                kept=json.dumps([int(k) for k in kept]),
            )
            for phase in ("apply_s", "finetune_s", "recalibrate_s", "evaluate_s", "update_s", "eval_s"):
                if phase in h:
                    row["mean_" + phase] = float(h[phase].mean())
            row["mean_episode_s"] = result.seconds / max(result.evaluations, 1)
            for k in ("warmup_mean_reward", "last50_mean_reward", "warmup", "tolerance", "iterations"):
                if k in result.extra:
                    row[k] = result.extra[k]
            h.to_csv(hist_dir / history_name(spec, args.reward, args.seed, args.held_out), index=False)
            if args.finetune_epochs:
                pruned = pruner.apply(kept)
                final_test.recalibrate(pruned)
                row["test_acc_ft"] = finetune_and_test(pruned, data, final_test, args.finetune_epochs, args.seed)
        row["finetune_epochs"] = args.finetune_epochs
        row["command"] = command
        print({k: v for k, v in row.items() if k not in ("command", "kept")}, flush=True)
        out = Path(args.out)
        # appended with a fixed header, so that runs in parallel processes never overwrite each other's rows
        pd.DataFrame([row]).reindex(columns=COLUMNS).to_csv(out, mode="a", header=not out.is_file(), index=False)


if __name__ == "__main__":
    main()
