"""``autoprune latency-table build|validate|show|probes|import``: device latency look-up tables.

Thin: parse, call :mod:`autoprune.latency_workflows` / :mod:`autoprune.probe_transfer` /
:mod:`autoprune.cost.latency_table`, print with rich. Mistakes surface as :class:`autoprune.errors.UserError`.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from autoprune.cli_console import console, err_console, shape_option
from autoprune.errors import UserError

latency_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Device latency look-up tables: build on the device, validate, show, ship probes.",
)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )


def _check_backend(backend: str, device: str, threads: int) -> None:
    from autoprune.cost.measure import BACKENDS

    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if device not in ("cpu", "cuda"):
        raise UserError(f"--device {device!r} is not cpu or cuda")
    if threads < 1:
        raise UserError(f"--threads {threads} must be at least 1")


@latency_app.command("build")
def build(
    model: str = typer.Option(..., help="model name (torchvision name, resnet20..56, fmnist-resnet20, pkg.mod:fn)"),
    input_shape: str | None = typer.Option(None, help="NxCxHxW, e.g. 1x3x224x224 (default: the model's)"),
    backend: str = typer.Option("onnxruntime", help="onnxruntime | torch"),
    threads: int = typer.Option(2, help="intra-op threads, as the model will be served"),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    out: Path | None = typer.Option(None, help="table .csv (default latency_tables/<device-id>/<model>-<shape>.csv)"),
    weights: Path | None = typer.Option(None, help="weights to load (timing does not depend on them)"),
    grid: int = typer.Option(6, help="grid points per channel axis and regime"),
    repeats: int = typer.Option(15, help="timed runs per probe (median, p10/p90 recorded)"),
    warmup: int = typer.Option(3, help="untimed runs per probe"),
    e2e_repeats: int = typer.Option(50, help="timed runs per end-to-end calibration network and round"),
    rounds: int = typer.Option(3, help="interleaved rounds of end-to-end calibration (median of round medians)"),
    passes: int = typer.Option(2, help="passes over the probe grid (each probe keeps its fastest pass)"),
    affinity: bool = typer.Option(
        False,
        "--affinity/--no-affinity",
        help="pin the measuring threads to cores (onnxruntime's intra-op thread "
        "affinities); recorded in the table and used whenever it is measured against",
    ),
) -> None:
    """Measure every prunable layer on a (c_in, c_out) grid on this device, calibrate end to end, save CSV + JSON."""
    from autoprune.cost.device_identity import identify
    from autoprune.cost.latency_table import default_table_path
    from autoprune.latency_workflows import build_table

    _check_backend(backend, device, threads)
    shape = shape_option(input_shape)
    with _progress() as progress:
        task = progress.add_task(f"{model} probes", total=None)
        table = build_table(
            model,
            shape,
            backend=backend,
            threads=threads,
            device=device,
            weights=weights,
            grid=grid,
            warmup=warmup,
            repeats=repeats,
            e2e_repeats=e2e_repeats,
            rounds=rounds,
            passes=passes,
            affinity=affinity,
            on_progress=lambda d, n, s: progress.update(task, completed=d, total=n, description=s),
        )
    path = out or default_table_path(model, table.input_shape, identify(backend, threads, device))
    table.save(path)
    m = table.meta
    console.print(
        f"{len(table.df)} rows ({m['probes']} probes) in {m['build_seconds']} s; unpruned "
        f"{m['unpruned_us']['median_us'] / 1000:.3f} ms measured, fixed part {table.fixed_us / 1000:.3f} ms, "
        f"scale {table.scale:.3f} -> {path}",
        soft_wrap=True,
    )


def _validation_table(name: str, s: dict) -> Table:
    """The summary of `validate` (``s``, from ``validate_table``) as a table titled with ``name``
    (model and input shape)."""
    t = Table(title=f"{name}: predicted vs measured ({s['policies']} policies)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("MAPE", f"{s['mape']:.2%}")
    t.add_row("policies within ±5 % / ±10 %", f"{s['within_5pct']:.0%} / {s['within_10pct']:.0%}")
    t.add_row("median APE", f"{s['median_ape']:.2%}")
    t.add_row("bias (mean signed error)", f"{s['bias']:+.2%}")
    t.add_row("worst error", f"{s['worst_error']:+.2%} (policy {s['worst_policy']})")
    t.add_row("Spearman rank correlation", f"{s['spearman']:.4f}")
    if "mape_reanchored" in s:
        t.add_row("MAPE, table re-anchored just before (as `anchor` does)", f"{s['mape_reanchored']:.2%}")
        t.add_row("bias, re-anchored", f"{s['bias_reanchored']:+.2%}")
    t.add_row("machine now vs at build (calibration networks)", f"{s['speed_vs_build']:.3f}x the build's times")
    t.add_row("MAPE, calibration re-fitted on today's timings", f"{s['mape_recalibrated']:.2%}")
    t.add_row(
        "re-fitted: within ±5 % / ±10 %", f"{s['within_5pct_recalibrated']:.0%} / {s['within_10pct_recalibrated']:.0%}"
    )
    t.add_row("worst error, re-fitted", f"{s['worst_recalibrated']:+.2%}")
    if s.get("speed_signature"):
        sig = s["speed_signature"]
        t.add_row(
            "speed signature: reference probes now vs the table's level",
            f"{sig['ratio']:.3f}x (noise allows ±{sig['tolerance']:.0%}{'; OFF' if sig['off'] else ''})",
        )
    t.add_row("measurement noise: retest MAPE", f"{s['retest_mape']:.2%}")
    t.add_row("retest within ±5 % / ±10 %", f"{s['retest_within_5pct']:.0%} / {s['retest_within_10pct']:.0%}")
    t.add_row("measurement noise: retest worst", f"{s['retest_worst']:.2%}")
    t.add_row("measurement noise: retest Spearman", f"{s['retest_spearman']:.4f}")
    t.add_row("measurement spread (p90-p10)/median", f"{s['spread_p90_p10']:.2%}")
    lo, hi = s["measured_range_us"]
    t.add_row("measured range", f"{lo / 1000:.3f} – {hi / 1000:.3f} ms")
    t.add_row("load average (1/5/15 min) at the end", str(s.get("load_average", "-")))
    return t


@latency_app.command("validate")
def validate(
    model: str | None = typer.Option(None, help="model (default: the table's)"),
    table: Path = typer.Option(..., help="table .csv"),
    samples: int = typer.Option(50, help="random policies (the unpruned model is the first)"),
    repeats: int = typer.Option(50, help="timed runs per policy and round"),
    rounds: int = typer.Option(10, help="interleaved rounds per policy: odd rounds measure, even rounds retest"),
    warmup: int = typer.Option(10),
    seed: int = typer.Option(0),
    round_to: int | None = typer.Option(None, help="round kept channels to this (default: the table's block)"),
    weights: Path | None = typer.Option(None),
    plot: Path | None = typer.Option(None, help="scatter plot PNG (default benchmarks/latency_<model>-<shape>.png)"),
    csv: Path | None = typer.Option(None, help="per-policy results CSV (default beside the plot)"),
    budget: str | None = typer.Option(
        None, help="also check a budget, e.g. latency=10ms: uniform search on the table, prune, measure (median of 100)"
    ),
    force: bool = typer.Option(False, help="validate a table from another device anyway"),
    anchor_rounds: int = typer.Option(
        2,
        help="rounds of re-timing the calibration networks before the measurement "
        "(the re-anchored table's error is reported too; 0: skip)",
    ),
) -> None:
    """Prune random policies for real, measure them end to end, and compare with the table's prediction."""
    from autoprune.budget import parse_budget
    from autoprune.cost.latency_table import LatencyTable, shape_text, table_file_name
    from autoprune.cost.latency_validate import scatter_plot
    from autoprune.latency_workflows import budget_check, validate_table

    check = parse_budget(budget) if budget else None  # a malformed budget fails before the minutes of timing
    tab = LatencyTable.load(table)
    tab.check_device(force=force, refuse=True)
    stem = f"latency_{Path(table_file_name(tab.model, tab.input_shape)).stem}"  # a file name, for pkg.mod:fn too
    plot = plot or Path("benchmarks") / f"{stem}.png"
    csv = csv or plot.with_suffix(".csv")
    with _progress() as progress:
        task = progress.add_task("validate", total=samples)
        df, s = validate_table(
            tab,
            model,
            weights=weights,
            samples=samples,
            seed=seed,
            warmup=warmup,
            repeats=repeats,
            rounds=rounds,
            round_to=round_to,
            anchor_rounds=anchor_rounds,
            on_progress=lambda d, n, d2: progress.update(task, completed=d, total=n, description=d2),
        )
    csv.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(csv, index=False, float_format="%.2f")
    scatter_plot(df, s, plot, f"{tab.model} {shape_text(tab.input_shape)} · {tab.backend} {tab.threads}t")
    console.print(_validation_table(f"{tab.model} {shape_text(tab.input_shape)}", s))
    if (s.get("speed_signature") or {}).get("off"):
        err_console.print(
            f"the reference probes ran at {s['speed_signature']['ratio']:.2f}x the table's level: re-fit "
            f"it with `autoprune latency-table anchor --table {table}`",
            highlight=False,
            soft_wrap=True,
        )
    console.print(f"plot -> {plot}   per-policy results -> {csv}")
    summary = {"table": str(table), **s}
    if check is not None:
        with console.status(f"checking budget {budget}"):
            b = budget_check(tab, check, weights=weights, round_to=round_to)
        summary["budget_check"] = b
        console.print(
            f"budget {budget}: limit {b['limit_us'] / 1000:.3f} ms, uniform keep ratio {b['keep_ratio']:.3f}"
            f", predicted {b['predicted_us'] / 1000:.3f} ms, measured {b['measured_us'] / 1000:.3f} ms "
            f"(median of {b['repeats']} runs in each of {len(b['rounds'])} rounds, "
            f"p10 {b['p10_us'] / 1000:.3f}, p90 {b['p90_us'] / 1000:.3f}); "
            f"measured/limit {b['measured_over_limit']:.3f}; unpruned {b['unpruned_us'] / 1000:.3f} ms"
        )
    csv.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")


@latency_app.command("anchor")
def anchor(
    table: Path = typer.Option(..., help="table .csv"),
    out: Path | None = typer.Option(None, help="write the re-anchored table here (default: over --table)"),
    rounds: int = typer.Option(2, help="interleaved rounds of timing the calibration networks"),
    repeats: int = typer.Option(30, help="timed runs per network and round"),
    weights: Path | None = typer.Option(None),
) -> None:
    """Re-time the table's calibration networks now and re-fit its calibration (seconds, not a rebuild): for a
    machine whose speed has drifted since the table was built. The probe grid is kept."""
    from autoprune.cost.latency_table import LatencyTable
    from autoprune.cost.speed_signature import compare_signature
    from autoprune.latency_workflows import reanchor_table

    tab = LatencyTable.load(table)
    with console.status(f"timing {tab.model}'s calibration networks ({rounds} rounds)"):
        new = reanchor_table(tab, weights=weights, rounds=rounds, repeats=repeats)
    dest = new.save(out or table)
    a = new.meta["anchor"]
    stored = tab.meta.get("anchor", {}).get("speed_signature") or tab.meta.get("speed_signature")
    if stored:
        sig = compare_signature(stored, a["speed_signature"])
        console.print(
            f"speed signature: the reference probes ran at {sig.ratio:.3f}x the table's level "
            f"(noise allows ±{sig.tolerance:.0%}); the re-anchored table keeps today's"
        )
    speed = f"{a['speed_vs_build']:.3f}x the build's times" if a["speed_vs_build"] else "no build timings to compare"
    console.print(
        f"machine now: {speed}; fixed part {tab.fixed_us / 1000:.3f} -> {new.fixed_us / 1000:.3f} ms, "
        f"scale {tab.scale:.3f} -> {new.scale:.3f}; unpruned model now "
        f"{a['measured_us'].get('keep-1.00', float('nan')) / 1000:.3f} ms -> {dest}"
    )


@latency_app.command("show")
def show(table: Path = typer.Argument(..., help="table .csv")) -> None:
    """Summary of a table, its device fingerprint, and its calibration."""
    from autoprune.cost.calibration_set import entry_name
    from autoprune.cost.latency_table import LatencyTable, describe

    tab = LatencyTable.load(table)
    summary = Table(title=str(table), show_header=False)
    for k, v in describe(tab).items():
        summary.add_row(k, str(v))
    console.print(summary)
    _print_identity(tab)
    cal = Table(title="end-to-end calibration (uniform prunes keep-R, random non-uniform policies random-NN)")
    for c in ("network", "sum of layers", "measured", "p10", "p90", "predicted"):
        cal.add_column(c, justify="right")
    for c in tab.meta.get("calibration", []):
        pred = tab.fixed_us + tab.scale * c["sum_layers_us"]
        cal.add_row(
            entry_name(c),
            *(f"{v / 1000:.3f} ms" for v in (c["sum_layers_us"], c["median_us"], c["p10_us"], c["p90_us"], pred)),
        )
    console.print(cal)
    per_layer = tab.df.groupby("layer", sort=False).agg(
        op=("op", "first"), group=("group", "first"), points=("median_us", "size"), max_us=("median_us", "max")
    )
    lt = Table(title="layers (max_us: the full-width probe)")
    for c in ("layer", "op", "group", "grid points", "full width"):
        lt.add_column(c)
    for name, r in per_layer.iterrows():
        lt.add_row(str(name), r["op"], r["group"], str(r["points"]), f"{r['max_us']:.1f} µs")
    console.print(lt)


def _print_identity(tab) -> None:
    """The table's device identity beside this machine's, differing fields in red, then the differences in words."""
    from autoprune.cost.device_identity import identify

    here = identify(tab.backend, tab.threads, tab.device)
    differing = {d.field for d in tab.identity_differences(here)}
    differing |= {"cpu_model", "stepping"} if "family" in differing else set()
    differing |= {"backend_version"} if "backend_release" in differing else set()
    fp = Table(title=f"device: {tab.device_name}")
    fp.add_column("field")
    fp.add_column("table")
    fp.add_column("this machine")
    for k in dict.fromkeys([*tab.fingerprint, *here]):
        mark = "[red]" if k in differing else ""
        fp.add_row(k, f"{mark}{tab.fingerprint.get(k, '(not recorded)')}", f"{mark}{here.get(k, '')}")
    console.print(fp)
    for d in tab.identity_differences(here):
        console.print(f"{'note' if d.note else 'another device'}: {d.text}", highlight=False)
    sig = tab.meta.get("speed_signature")
    console.print(
        f"speed signature: {len(sig['probes'])} reference probes, noise {sig['noise']:.1%}"
        if sig
        else "speed signature: none (a table built before autoprune recorded one)",
        highlight=False,
    )


@latency_app.command("probes")
def probes(
    model: str = typer.Option(...),
    input_shape: str | None = typer.Option(None, help="NxCxHxW (default: the model's)"),
    out: Path = typer.Option(..., help="directory for the probe models, the plan and measure_probes.py"),
    threads: int = typer.Option(2, help="intra-op threads the device will serve with"),
    grid: int = typer.Option(6),
    block: int = typer.Option(16, help="the device's channel block (16 for AVX-512 x86, 8 for AVX2; 1 if none)"),
    align: int = typer.Option(4, help="input channel multiple that takes the blocked kernels (1 if none)"),
    weights: Path | None = typer.Option(None),
) -> None:
    """Write ONNX probe models + measure_probes.py to time them on another device (onnxruntime + numpy only)."""
    from autoprune.probe_transfer import export_probes

    n = export_probes(
        model, shape_option(input_shape), out, threads=threads, grid=grid, block=block, align=align, weights=weights
    )
    console.print(
        f"{n['probes']} probe models + {n['networks']} calibration networks -> {out}\n"
        f"on the device: python {out / 'measure_probes.py'} {out}\n"
        f"then here: autoprune latency-table import {out}"
    )


@latency_app.command("import")
def import_(
    probe_dir: Path = typer.Argument(..., help="the directory `probes` wrote, after measure_probes.py ran in it"),
    out: Path | None = typer.Option(None, help="table .csv (default latency_tables/<device-id>/<model>-<shape>.csv)"),
    weights: Path | None = typer.Option(None),
) -> None:
    """Turn the measurements made by measure_probes.py into a table (device fingerprint from that device)."""
    from autoprune.cost.latency_table import default_table_path
    from autoprune.probe_transfer import import_probes

    table = import_probes(probe_dir, weights=weights)
    path = out or default_table_path(table.model, table.input_shape, table.fingerprint)
    table.save(path)
    console.print(f"{len(table.df)} rows from {table.fingerprint.get('cpu')} -> {path}")
