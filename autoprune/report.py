"""The run report: ``report.md`` and its plots, rendered from the run directory's own files.

Everything is read back from ``policy.json`` and ``history.csv`` so ``autoprune report RUN`` can re-render a report
of any finished (or interrupted) run without the model.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from autoprune import atomic  # noqa: E402
from autoprune.budget import format_cost, within  # noqa: E402
from autoprune.cost.measure import device_slowdown  # noqa: E402
from autoprune.errors import UserError  # noqa: E402
from autoprune.pareto import pareto_front  # noqa: E402
from autoprune.policy import Policy  # noqa: E402

METRIC_ROWS = [  # (label, policy.metrics key, format): the report's and the CLI's comparison table
    ("FLOPs (MACs)", "flops", lambda v: format_cost("flops", v)),
    ("params", "params", lambda v: format_cost("params", v)),
    ("latency, predicted by the table", "latency_predicted_us", lambda v: format_cost("latency", v)),
    ("latency, measured end to end", "latency_measured_us", lambda v: format_cost("latency", v)),
    ("held-out accuracy (search reward split)", "held_out_accuracy", lambda v: f"{v:.2%}"),
    ("test accuracy before fine-tuning", "test_accuracy_before_finetune", lambda v: f"{v:.2%}"),
    ("test accuracy", "test_accuracy", lambda v: f"{v:.2%}"),
]


def comparison_rows(metrics: dict) -> list[tuple[str, str, object]]:
    """:data:`METRIC_ROWS` with the latency rows saying which device each figure is for: when the table is another
    device's, its prediction is for that device and the end-to-end time is this machine's."""
    device = metrics.get("latency_predicted_for")
    if not device:
        return METRIC_ROWS
    labels = {
        "latency_predicted_us": f"latency, predicted for {device}, not measured there",
        "latency_measured_us": "latency, measured end to end on this machine (another device than the budget's)",
    }
    return [(labels.get(key, label), key, fmt) for label, key, fmt in METRIC_ROWS]


def load_history(run_dir: Path) -> pd.DataFrame:
    path = run_dir / "history.csv"
    return read_history(path) if path.is_file() else pd.DataFrame()


def read_history(path: Path) -> pd.DataFrame:
    """An evaluation history CSV with its ``kept`` column back as tuples of ints."""
    h = pd.read_csv(path)
    if "kept" in h:
        h["kept"] = h["kept"].map(lambda s: tuple(ast.literal_eval(s)) if isinstance(s, str) else s)
    return h


def _save(fig, path: Path) -> None:
    atomic.write_with(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def plot_kept(policy: Policy, uniform: list[int] | None, path: Path) -> None:
    names = [g["name"] for g in policy.groups]
    ratios = [g["kept"] / g["channels"] for g in policy.groups]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 4))
    width = 0.4 if uniform else 0.8
    ax.bar(x - (width / 2 if uniform else 0), ratios, width, label=policy.search.get("strategy", "policy"))
    if uniform:
        ax.bar(
            x + width / 2,
            [k / g["channels"] for k, g in zip(uniform, policy.groups, strict=True)],
            width,
            label="uniform",
            alpha=0.7,
        )
    ax.set_xticks(x, names, rotation=90, fontsize=7)
    ax.set_ylabel("kept channels / channels")
    ax.set_ylim(0, 1.05)
    ax.set_title("Kept channels per group")
    ax.legend()
    _save(fig, path)


def plot_rewards(history: pd.DataFrame, path: Path) -> bool:
    if history.empty or "reward" not in history or history["reward"].isna().all():
        return False
    r = history["reward"].astype(float)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(np.arange(1, len(r) + 1), r, ".", ms=3, alpha=0.6, label="reward")
    ax.plot(np.arange(1, len(r) + 1), r.cummax(), "-", label="best so far")
    ax.set_xlabel("evaluation")
    ax.set_ylabel("reward")
    ax.set_title("Reward over the search")
    ax.legend()
    _save(fig, path)
    return True


def plot_pareto(history: pd.DataFrame, policy: Policy, cost: str, path: Path) -> bool:
    share = f"{cost}_share"
    if history.empty or "accuracy" not in history or history["accuracy"].isna().all() or share not in history:
        return False
    h = history.dropna(subset=["accuracy"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(h[share], h["accuracy"], s=8, alpha=0.5, label="evaluated policies")
    front = pareto_front(h, share, "accuracy")
    ax.plot(front[share], front["accuracy"], "r-o", ms=3, label="Pareto front")
    limit = next((c for c in policy.budget.constraints if c.metric == cost), None) if policy.budget else None
    if limit is not None:
        base = policy.metrics.get("unpruned", {}).get(cost if cost != "latency" else "latency_predicted_us")
        x = limit.value if limit.relative else (limit.value / base if base else None)
        if x is not None:
            ax.axvline(x, color="k", ls="--", label=f"budget {limit.text}")
    ax.set_xlabel(f"{cost} / unpruned")
    ax.set_ylabel("held-out accuracy (reward split)")
    ax.set_title(f"Accuracy vs {cost} of every evaluated policy")
    ax.legend()
    _save(fig, path)
    return True


def plot_latency(policy: Policy, path: Path) -> bool:
    pairs = []
    for label, m in (("unpruned", policy.metrics.get("unpruned", {})), ("pruned", policy.metrics)):
        if "latency_predicted_us" in m and "latency_measured_us" in m:
            pairs.append((label, m["latency_predicted_us"] / 1e3, m["latency_measured_us"] / 1e3))
    if not pairs:
        return False
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, p, m in pairs:
        ax.scatter([p], [m], s=40, label=label)
    hi = max(max(p, m) for _, p, m in pairs) * 1.1
    ax.plot([0, hi], [0, hi], "k--", lw=1, label="measured = predicted")
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("measured latency (ms)")
    ax.set_title("Latency table vs measurement")
    ax.legend()
    _save(fig, path)
    return True


def render(run_dir: str | Path, policy: Policy | None = None, history: pd.DataFrame | None = None) -> Path:
    """Write ``report.md`` and its PNG plots into ``run_dir``; returns the report's path.

    ``policy`` and ``history`` default to the run directory's files; a search passes its own, so that it can write
    the whole run directory in one :func:`autoprune.atomic.batch`.
    """
    run_dir = Path(run_dir)
    if policy is None:
        policy_path = run_dir / "policy.json"
        if not policy_path.is_file():
            raise UserError(f"{run_dir} has no policy.json: pass a run directory written by `autoprune search`")
        policy = Policy.load(policy_path)
    if history is None:
        history = load_history(run_dir)
    uniform = policy.search.get("uniform_kept")
    cost = next((c.metric for c in policy.budget.constraints), "flops") if policy.budget else "flops"

    plot_kept(policy, uniform, run_dir / "kept_channels.png")
    plots = [("Kept channels per group (vs uniform)", "kept_channels.png")]
    if plot_rewards(history, run_dir / "rewards.png"):
        plots.append(("Reward over episodes", "rewards.png"))
    if plot_pareto(history, policy, cost, run_dir / "pareto.png"):
        plots.append(("Accuracy vs cost, Pareto front and budget", "pareto.png"))
    if plot_latency(policy, run_dir / "latency.png"):
        plots.append(("Predicted vs measured latency", "latency.png"))

    m, base = policy.metrics, policy.metrics.get("unpruned", {})
    lines = [f"# autoprune run: {policy.model} under {policy.budget}", ""]
    lines += [
        f"Input {'x'.join(map(str, policy.input_shape))}; strategy **{policy.search.get('strategy')}**, "
        f"{evaluations_text(policy.search)} in "
        f"{policy.search.get('search_seconds', policy.search.get('seconds', 0)):.0f} s "
        f"(reward {policy.search.get('reward')}, seed {policy.search.get('seed')}); the whole run "
        f"{policy.search.get('seconds', 0):.0f} s.",
        "",
    ]
    verdict = budget_verdict(policy)
    if verdict:
        lines += [verdict, ""]
    lines += ["| metric | unpruned | pruned | ratio |", "|---|---:|---:|---:|"]
    for label, key, fmt in comparison_rows(m):
        if key in m:
            b = base.get(key)
            ratio = f"{m[key] / b:.3f}" if b else ""
            lines.append(f"| {label} | {fmt(b) if b is not None else ''} | {fmt(m[key])} | {ratio} |")
    ft = policy.search.get("finetune")
    if ft:
        lines += [
            "",
            f"Fine-tuned {ft.get('epochs')} epoch(s) at lr {ft.get('lr')}"
            f"{' with distillation from the unpruned model' if ft.get('kd') else ''}.",
        ]
    lines += promotion_lines(
        policy.search.get("promotion"), policy.search.get("promotion_margin_se"), policy.search.get("promotion_steps")
    )
    lines += ["", "## Plots", ""]
    lines += [f"### {title}\n\n![{title}]({name})\n" for title, name in plots]
    lines += ["## Kept channels", "", "| group | channels | kept | ratio |", "|---|---:|---:|---:|"]
    lines += [
        f"| {g['name']} | {g['channels']} | {g['kept']} | {g['kept'] / g['channels']:.2f} |" for g in policy.groups
    ]
    out = run_dir / "report.md"
    atomic.write_text(out, "\n".join(lines) + "\n")
    return out


def promotion_lines(rung: list[dict] | None, margin_se: float | None = None, steps: int | None = None) -> list[str]:
    """The promotion rung's candidates, winner first, as a section: where the winner came from and why it won
    (``margin_se``: the lead over uniform, in standard errors, the winner needed; None: a policy written before the
    rung asked for one, whose winner was the best; ``steps``: the short fine-tune's length, when recorded)."""
    if not rung:
        return []
    rule = (
        f"The best after it won if it led the uniform policy by more than {margin_se:g} standard errors of the "
        "difference on the held-out images, else uniform won"
        if margin_se is not None
        else "The best after it won"
    )
    lines = [
        "",
        "## How the winner was chosen",
        "",
        "The search's best policies and the baselines it must beat each got a short distilled fine-tune"
        + (f" ({steps} step{'s' if steps != 1 else ''}). " if steps else ". ")
        + f"{rule} (a baseline on a tie). `filled`: grown into the budget whole channel blocks leave unspent.",
        "",
        "| candidate | held-out accuracy, recalibrated | after the short fine-tune | − uniform (s.e.) |",
        "|---|---:|---:|---:|",
    ]
    uniform = next((c["accuracy_ft"] for c in rung if c["source"] == "uniform"), None)
    for i, c in enumerate(rung):
        name = c["source"].replace("+fill", ", filled")
        name = f"**{name}** (winner)" if i == 0 else name
        se = c.get("se_vs_uniform", float("nan"))
        lead = "" if uniform is None or c["source"] == "uniform" else f"{c['accuracy_ft'] - uniform:+.2%}"
        lead += f" ({se:.2%})" if lead and math.isfinite(se) else ""
        lines.append(f"| {name} | {c['accuracy']:.2%} | {c['accuracy_ft']:.2%} | {lead} |")
    return lines


def evaluations_text(search: dict) -> str:
    """ "150 evaluations", and how many distinct policies they were when the sampler repeated itself."""
    n, distinct = search.get("evaluations", 0), search.get("distinct_policies")
    repeats = f" ({distinct} distinct policies; the repeats came from the cache)" if distinct and distinct < n else ""
    early = f" (stopped early: {search['converged']})" if search.get("converged") else ""
    return f"{n} evaluations{repeats}{early}"


def budget_checks(policy: Policy) -> list[tuple[str, float, float, str]]:
    """Per budget constraint the policy's metrics can answer: (metric, value, limit, how it was known) — latency
    as measured end to end when it was, else as predicted (``how`` names the device the prediction is for); FLOPs
    and params as counted."""
    if not policy.budget:
        return []
    m, base = policy.metrics, policy.metrics.get("unpruned", {})
    out = []
    for c in policy.budget.constraints:
        key = {"flops": "flops", "params": "params", "latency": "latency_measured_us"}[c.metric]
        elsewhere = c.metric == "latency" and bool(m.get("latency_measured_elsewhere"))
        if c.metric == "latency" and (key not in m or elsewhere):
            key = "latency_predicted_us"  # not measured, or measured here while the table is another device's
        if key not in m:
            continue
        ref = base.get(key)
        limit = c.limit(ref) if c.relative and ref else (None if c.relative else c.value)
        if limit is None:
            continue
        how = (
            "measured"
            if key == "latency_measured_us"
            else (
                "counted"
                if c.metric != "latency"
                else f"{predicted_for(policy)}, not measured" + (" there" if elsewhere else "")
            )
        )
        out.append((c.metric, float(m[key]), float(limit), how))
    return out


def predicted_for(policy: Policy) -> str:
    """ "predicted for <device>": the device whose table priced the policy."""
    device = policy.metrics.get("latency_predicted_for") or (policy.search or {}).get("table_device")
    return f"predicted for {device}" if device else "predicted by the table"


def budget_met(policy: Policy) -> bool | None:
    """Whether the pruned model meets every constraint of its budget (None: nothing to check it against)."""
    checks = budget_checks(policy)
    return all(within(value, limit) for _, value, limit, _ in checks) if checks else None


_PREDICTED = {True: "**within the budget as predicted**", False: "**over the budget as predicted**"}


def budget_verdict(policy: Policy) -> str | None:
    """One sentence: does the pruned model meet its budget, measured where the budget is latency? "met" is said
    only of what was measured on this machine (or counted); a prediction is called one, with its device."""
    m = policy.metrics
    parts = [
        f"{metric} {format_cost(metric, value)} {how} vs budget {format_cost(metric, limit)}: "
        + (
            f"{'**met**' if within(value, limit) else '**NOT met**'}"
            if how in ("measured", "counted")
            else f"{_PREDICTED[within(value, limit)]} (a prediction, not a measurement)"
        )
        for metric, value, limit, how in budget_checks(policy)
    ]
    checks = m.get("latency_checks") or []
    measured_policies = len({tuple(ch["kept"]) for ch in checks})
    if measured_policies > 1 and checks[0]["met"]:
        first = checks[0]
        grew = tuple(first["kept"]) != tuple(policy.kept)
        parts.append(
            f"the chosen policy (uniform) measured {format_cost('latency', first['measured_us'])} where the table "
            f"predicted {format_cost('latency', first['predicted_us'])}, well under the budget, so larger uniform "
            "policies were tried under a limit set by the table's error on it; "
            + ("the largest that met the budget" if grew else "they measured over it, and the chosen one")
            + f" was kept ({measured_policies} policies measured, in `policy.json` `latency_checks`)"
        )
    elif measured_policies > 1:
        parts.append(
            f"the searched policy measured {format_cost('latency', checks[0]['measured_us'])} (over the "
            f"budget), so another was taken (the rung's next candidate that measured within it, else the search's "
            f"best, else uniform, under a limit set by the table's error; {measured_policies} policies measured, in "
            "`policy.json` `latency_checks`)"
        )
    slow = [
        device_slowdown(ch["unpruned_measured_us"], ch["unpruned_predicted_us"])
        for ch in checks
        if "unpruned_measured_us" in ch and not ch["met"]
    ]
    slow = [1 + r for r in slow if r is not None]
    if slow:
        table = (policy.search or {}).get("table") or "TABLE"
        parts.append(
            f"{len(slow)} of {len(checks)} measurements over the budget found the device slow (the unpruned model "
            f"up to {max(slow):.2f}x its table's prediction)"
            + (
                ", so they were repeated"
                if any(ch["met"] for ch in checks)  # the policy kept is the last that met
                else f" and it stayed so: re-check when it is quiet (`autoprune latency-table validate --table {table} "
                f"--budget {policy.budget}`), or re-fit the table to it (`autoprune latency-table anchor --table "
                f"{table}`) and search again"
            )
        )
    return "; ".join(parts) + "." if parts else None
