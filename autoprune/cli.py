"""The ``autoprune`` command line: parses, calls the public API, prints with rich.

Every user mistake surfaces as :class:`autoprune.errors.UserError`; :func:`main` prints it as one line on stderr and
exits with code 2.
"""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from autoprune.cli_console import RANK0, console, err_console, shape_option
from autoprune.errors import UserError
from autoprune.prune import CRITERIA
from autoprune.reward import DEFAULT_REWARD, REWARDS
from autoprune.search import SAMPLERS, STRATEGIES
from autoprune.spec import DEFAULT_PROMOTE, DEFAULT_STRATEGY

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Find how much to prune each layer of a CNN under a FLOPs, params or latency budget, then prune it.",
)


def device_option():
    return typer.Option(
        "auto", help="where the passes over data run: auto (a CUDA GPU when PyTorch sees one) | cpu | cuda | cuda:N"
    )


def amp_option():
    return typer.Option(
        "auto", help="mixed precision: auto (bf16 on a GPU with it, else fp16; off on the CPU) | bf16 | fp16 | off"
    )


def loader_workers_option():
    return typer.Option(
        None, help="image-decoding processes for imagefolder data (default: 0 on the CPU, up to 8 on a GPU)"
    )


def nproc_option(what: str):
    return typer.Option(
        1,
        help=f"{what} in N processes with torch.distributed (DDP; gloo on CPUs, NCCL on GPUs), as "
        "torchrun --nproc-per-node N -m autoprune ...",
    )


def _relaunch_if_asked(nproc: int) -> None:
    """``--nproc N``: run this very command as N torchrun processes and exit with their code."""
    if nproc != 1:
        from autoprune.distributed import relaunch, without_flag

        raise typer.Exit(relaunch(nproc, without_flag(sys.argv[1:], "--nproc")))


class _Throughput:
    """images/s for a progress line: the steps done in this run times the batch, over the seconds since the first."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size, self.first, self.t0 = batch_size, None, time.perf_counter()

    def __call__(self, step: int) -> str:
        if self.first is None:
            self.first, self.t0 = step, time.perf_counter()
            return ""
        seconds = time.perf_counter() - self.t0
        return f" {(step - self.first) * self.batch_size / seconds:,.0f} img/s" if seconds > 0 else ""


@app.command()
def train(
    model: str = typer.Option(..., help="model name (see `autoprune info --help`)"),
    data: str = typer.Option(..., help="fashion-mnist | cifar10 | cifar100 | imagefolder:PATH | synthetic"),
    epochs: float = typer.Option(15, help="training epochs"),
    out: Path = typer.Option(..., help="where to write the checkpoint (a state_dict)"),
    lr: float = typer.Option(0.1, help="peak learning rate"),
    batch_size: int = typer.Option(128),
    schedule: str = typer.Option("cosine", help="cosine | onecycle | constant"),
    weight_decay: float = typer.Option(5e-4),
    weights: Path | None = typer.Option(None, help="start from these weights (a state_dict)"),
    num_classes: int | None = typer.Option(None, help="classifier outputs (defaults to the dataset's classes)"),
    seed: int = typer.Option(0),
    device: str = device_option(),
    amp: str = amp_option(),
    loader_workers: int | None = loader_workers_option(),
    nproc: int = nproc_option("train"),
    resume: bool = typer.Option(False, help="continue from OUT.checkpoint.pt (saved after every epoch)"),
) -> None:
    """Train a model from scratch (or from --weights); used to make the demo checkpoint."""
    import torch

    from autoprune.api import train_model

    _relaunch_if_asked(nproc)
    torch.manual_seed(seed)
    last_epoch = [0]
    speed = _Throughput(batch_size)
    with _progress() as progress:
        task = progress.add_task("train", total=None)

        def on_epoch_step(step: int, total: int, loss: float, epoch: int, n_epochs: int) -> None:
            rate = speed(step)
            progress.update(
                task, completed=step, total=total, description=f"epoch {epoch}/{n_epochs} loss {loss:.3f}{rate}"
            )
            if epoch != last_epoch[0] and progress.disable and RANK0:  # one line per epoch in logs
                err_console.print(f"epoch {epoch}/{n_epochs} step {step}/{total} loss {loss:.3f}{rate}")
                last_epoch[0] = epoch

        result = train_model(
            model,
            data,
            out,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            schedule=schedule,
            weight_decay=weight_decay,
            weights=weights,
            num_classes=num_classes,
            seed=seed,
            on_step=on_epoch_step,
            device=device,
            amp=amp,
            loader_workers=loader_workers,
            resume=resume,
        )
    if not result:  # a torchrun rank other than 0
        return
    console.print(
        f"test accuracy {result['test_accuracy']:.2%}  held-out {result['held_out_accuracy']:.2%}  "
        f"({result['seconds']:.0f} s, {result['images_per_second']:,.0f} img/s on {result['compute']['device']}, "
        f"{result['nproc']} process(es)) -> {out}"
    )


MODEL_HELP = "torchvision classifier (resnet18, mobilenet_v2, ...), resnet20/32/44/56, fmnist-resnet20, or pkg.mod:fn"
SHAPE_HELP = "input shape NxCxHxW, e.g. 1x3x224x224 (default: the model's own)"


@app.command()
def info(
    model: str = typer.Option(..., help=MODEL_HELP),
    input_shape: str | None = typer.Option(None, help=SHAPE_HELP),
    weights: Path | None = typer.Option(None, help="a state_dict file"),
    trust_pickle: bool = typer.Option(False, help="allow unpickling a whole saved module (runs code from the file)"),
) -> None:
    """List the prunable channel groups of a model with their FLOPs share."""
    from rich.table import Table

    from autoprune.api import analyze_model
    from autoprune.budget import format_cost

    graph = analyze_model(model, shape_option(input_shape), weights=weights, trust_pickle=trust_pickle)
    table = Table(title=f"{model} @ {'x'.join(map(str, graph.input_shape))}: {len(graph.groups)} prunable groups")
    for col in ("#", "group", "kind", "channels", "c_in", "kernel", "stride", "input", "FLOPs share", "params"):
        table.add_column(col, justify="left" if col in ("group", "kind") else "right", no_wrap=col == "group")
    for g in graph.groups:
        table.add_row(
            str(g.index),
            g.name,
            g.kind,
            str(g.channels),
            str(g.c_in),
            "x".join(map(str, g.kernel)),
            "x".join(map(str, g.stride)),
            "x".join(map(str, g.in_hw)) or "-",
            f"{g.flops / graph.base_flops:.1%}",
            format_cost("params", g.params),
        )
    console.print(table)
    console.print(
        f"total {format_cost('flops', graph.base_flops)} FLOPs (MACs), "
        f"{format_cost('params', graph.base_params)} params; never pruned: {', '.join(graph.ignored)}; "
        f"fingerprint {graph.fingerprint}"
    )


@app.command()
def search(
    budget: str = typer.Option(None, help="e.g. flops=50%, params=2M, latency=10ms, latency=50%"),
    model: str | None = typer.Option(None, help=MODEL_HELP + " (default: the demo model on Fashion-MNIST)"),
    weights: Path | None = typer.Option(None, help="a state_dict file"),
    data: str | None = typer.Option(None, help="fashion-mnist | cifar10 | cifar100 | imagefolder:PATH | synthetic"),
    input_shape: str | None = typer.Option(None, help=SHAPE_HELP),
    strategy: str = typer.Option(DEFAULT_STRATEGY, help=" | ".join(STRATEGIES)),
    episodes: int = typer.Option(300, help="evaluation budget: policies scored by the search"),
    reward: str | None = typer.Option(None, help=" | ".join(REWARDS) + f" (default: {DEFAULT_REWARD})"),
    promote: int | None = typer.Option(
        None,
        help="multi-fidelity: the search's best K policies, uniform and global magnitude (as is and filled to the "
        "budget) each get a short distilled fine-tune, and the best after it wins if it leads uniform by more than two "
        "standard errors on the held-out images, else uniform (0: the "
        f"search's best by its reward; default: {DEFAULT_PROMOTE} when "
        "the winner is fine-tuned and the strategy searches, else 0)",
    ),
    promote_steps: int = typer.Option(200, help="SGD steps of that short fine-tune (at most the final fine-tune's)"),
    sampler: str | None = typer.Option(None, help="optuna sampler: " + " | ".join(SAMPLERS)),
    option: list[str] = typer.Option([], "--option", help="strategy option KEY=VALUE (repeatable)"),
    table: Path | None = typer.Option(None, help="latency table; built for this device when a latency budget has none"),
    force: bool = typer.Option(False, help="use a latency table measured on another device"),
    min_keep: float = typer.Option(0.1, help="smallest keep ratio of any group"),
    round_to: int | None = typer.Option(
        None,
        help="kept channels rounded to a multiple of this (default: this device's channel block, from its latency "
        "table, else 8, for every budget: other widths run on slower kernels; a finer divisor of it where the budget "
        "is below the cheapest policy in whole blocks; 1: any width)",
    ),
    criterion: str = typer.Option("l2", help="channel importance: " + " | ".join(CRITERIA)),
    held_out: int = typer.Option(5000, help="held-out training images each reward is measured on"),
    finetune_epochs: float = typer.Option(1.0, help="fine-tuning epochs for the winner (0: none)"),
    finetune_lr: float | None = typer.Option(None, help="fine-tuning learning rate (default 0.01, a tenth of train's)"),
    kd: bool = typer.Option(True, "--kd/--no-kd", help="distil the fine-tune from the unpruned model's logits"),
    seed: int = typer.Option(0),
    measure: bool = typer.Option(True, help="measure end-to-end latency of the unpruned and pruned model"),
    threads: int = typer.Option(2, help="threads for latency measurement (when no table says otherwise)"),
    out: Path | None = typer.Option(None, help="run directory (default runs/<model>-<budget>)"),
    resume: Path | None = typer.Option(None, help="continue the interrupted search in this run directory"),
    trust_pickle: bool = typer.Option(False, help="allow unpickling a whole saved module"),
    storage: str | None = typer.Option(
        None, help="optuna: shared study storage, an Optuna RDB URL (postgresql://USER@HOST/DB) or journal:PATH"
    ),
    study: str | None = typer.Option(
        None, help="optuna: study name (default autoprune-<sampler>); same --storage and --study: one shared search"
    ),
    workers: int = typer.Option(
        1, help="optuna: local worker processes sharing the study (torch threads split; each GPU its own worker)"
    ),
    device: str = typer.Option(
        "auto",
        help="auto (a CUDA GPU when PyTorch sees one) | cpu | cuda | cuda:N; with --workers a list cuda:0,cuda:1",
    ),
    amp: str = amp_option(),
    loader_workers: int | None = loader_workers_option(),
    nproc: int = nproc_option("fine-tune the winner"),
) -> None:
    """Search per-group keep ratios under a budget, prune, fine-tune, export, measure and report."""
    from autoprune import api
    from autoprune.models import DEMO_MODEL
    from autoprune.spec import RunSpec

    if resume is not None:
        spec = api.load_spec(resume)
        console.print(f"resuming the {spec.strategy} search in {resume}")
        _search_with_progress(partial(api.resume, resume), spec, resume, trust_pickle)
        return
    if budget is None:
        raise UserError("missing --budget: give e.g. --budget flops=50% or --budget latency=10ms")
    options = _strategy_options(strategy, option, sampler=sampler, storage=storage, study_name=study, workers=workers)
    settings = dict(
        weights=weights,
        input_shape=shape_option(input_shape),
        table=table,
        force=force,
        strategy=strategy,
        options=options,
        reward=reward,
        promote=promote,
        promote_steps=promote_steps,
        episodes=episodes,
        seed=seed,
        min_keep=min_keep,
        round_to=round_to,
        criterion=criterion,
        held_out=held_out,
        finetune_epochs=finetune_epochs,
        finetune_lr=finetune_lr,
        kd=kd,
        measure=measure,
        threads=threads,
        device=device,
        amp=amp,
        loader_workers=loader_workers,
        nproc=nproc,
    )
    spec = RunSpec.create(budget, model, data, **settings)  # a malformed budget fails here, before any loading
    run_dir = out or Path("runs") / f"{(model or DEMO_MODEL).replace(':', '_').replace('.', '_')}-{_slug(budget)}"
    _search_with_progress(
        partial(api.search, model, data, spec.budget, out=run_dir, **settings), spec, run_dir, trust_pickle
    )


def _strategy_options(strategy: str, items: list[str], **optuna_flags) -> dict:
    """``--option KEY=VALUE`` and the Optuna flags, checked against the strategy's registered options before any
    model is loaded."""
    from autoprune.search import REWARD_OPTIONS, strategy_class

    cls = strategy_class(strategy)
    options = _parse_options(items)
    given = {k: v for k, v in optuna_flags.items() if v is not None and not (k == "workers" and v == 1)}
    if not set(given) <= set(cls.defaults):  # only the Optuna strategy runs a shared study
        raise UserError("--storage, --study and --workers share an Optuna study: add --strategy optuna")
    if optuna_flags.get("workers", 1) < 1:
        raise UserError(f"--workers {optuna_flags['workers']} must be at least 1")
    options.update(given)
    cls.checked_options({k: v for k, v in options.items() if k not in REWARD_OPTIONS})
    return options


def _search_with_progress(run, spec, run_dir: Path, trust_pickle: bool) -> None:
    with _progress() as progress:
        task = progress.add_task(spec.strategy, total=spec.episodes)

        def on_event(ev) -> None:
            best = f"best {ev.best_reward:.4f}" if ev.best_reward is not None else ""
            text = f"{ev.strategy} {best} {ev.budget_text()}"
            progress.update(task, completed=ev.evaluation, total=ev.episodes, description=text)
            if progress.disable:
                _plain_progress("evaluation", ev.evaluation, ev.episodes, f" {text}", ev.seconds)

        def on_phase(text: str) -> None:
            if text.startswith("WARNING"):
                err_console.print(f"[bold red]{text}[/]", highlight=False, soft_wrap=True)
            else:
                console.print(f"[dim]{text}[/dim]", soft_wrap=True)

        table_task, table_t0 = None, 0.0

        def on_table_progress(done: int, total: int, text: str) -> None:
            nonlocal table_task, table_t0
            if table_task is None:
                table_task, table_t0 = progress.add_task("latency table", total=total), time.perf_counter()
            progress.update(table_task, completed=done, total=total, description=f"latency table: {text}")
            if progress.disable:
                _plain_progress("latency table", done, total, f": {text}", time.perf_counter() - table_t0)

        try:
            outcome = run(
                trust_pickle=trust_pickle, callback=on_event, on_phase=on_phase, on_table_progress=on_table_progress
            )
        except KeyboardInterrupt:
            progress.stop()
            saved = (run_dir / "policy.json").is_file()
            err_console.print(
                f"interrupted: {'best policy so far in ' + str(run_dir / 'policy.json') + '; ' if saved else ''}"
                f"continue with: autoprune search --resume {run_dir}"
            )
            raise typer.Exit(130) from None
    _print_outcome(outcome, run_dir)


def _plain_progress(what: str, done: int, total: int, text: str, seconds: float) -> None:
    """Where no progress bar is drawn (a log, CI): a line at every tenth of ``total`` and at the end, with the
    bar's ETA as text."""
    if done % max(1, total // 10) and done != total:
        return
    eta = f", ~{seconds / done * (total - done):.0f} s left" if 0 < done < total else ""
    console.print(f"{what} {done}/{total}{text} ({seconds:.0f} s{eta})")


BUDGET_NOT_MET_EXIT = 3  # the run directory is complete, but the pruned model is over its budget when measured


def _print_outcome(outcome, run_dir: Path) -> None:
    """The comparison table, the budget verdict and where the run directory is; exit 3 when the budget is not met
    (as measured), so that a script shipping "the model under 10 ms" stops there."""
    from autoprune.report import budget_met, budget_verdict, evaluations_text

    _print_comparison(outcome.policy.metrics["unpruned"], outcome.policy.metrics, outcome.policy.budget)
    verdict = budget_verdict(outcome.policy)
    if verdict:
        console.print(verdict.replace("**", ""), soft_wrap=True)
    console.print(
        f"{evaluations_text(outcome.policy.search)} in "
        f"{outcome.policy.search['search_seconds']:.0f} s; run directory {run_dir}/ "
        "(policy.json, history.csv, pruned.pt, pruned.onnx, report.md)"
    )
    if budget_met(outcome.policy) is False:
        err_console.print(
            f"the pruned model is over its budget {outcome.policy.budget} (see the verdict above and "
            f"{run_dir}/report.md); exit {BUDGET_NOT_MET_EXIT}",
            highlight=False,
        )
        raise typer.Exit(BUDGET_NOT_MET_EXIT)


def _parse_options(items: list[str]) -> dict:
    import json

    options: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--option {item!r} is not KEY=VALUE")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def _slug(budget: str) -> str:
    return budget.replace("=", "").replace("%", "pct").replace(",", "-").replace(".", "p")


def _print_comparison(before: dict, after: dict, budget: str | None) -> None:
    from rich.table import Table

    from autoprune.report import comparison_rows

    t = Table(title=f"unpruned vs pruned ({budget})")
    for col in ("metric", "unpruned", "pruned", "ratio"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for label, key, fmt in comparison_rows(after):
        if key in after:
            b = before.get(key, before.get("test_accuracy") if key.startswith("test_accuracy") else None)
            ratio = f"{after[key] / b:.3f}" if b else ""
            t.add_row(label, fmt(b) if b is not None else "", fmt(after[key]), ratio)
    console.print(t)


@app.command()
def prune(
    model: str = typer.Option(..., help=MODEL_HELP),
    policy: Path = typer.Option(..., help="policy.json written by a search"),
    out: Path = typer.Option(..., help="pruned model file (.pt, the whole module); its state_dict goes beside it"),
    onnx: Path | None = typer.Option(None, help="also export ONNX here"),
    weights: Path | None = typer.Option(None, help="a state_dict file"),
    criterion: str = typer.Option("l2", help="channel importance: " + " | ".join(CRITERIA)),
    data: str | None = typer.Option(None, help="data for taylor / apoz / --reconstruct"),
    reconstruct: bool = typer.Option(False, help="refit the layers after each pruned group by least squares"),
    seed: int = typer.Option(0),
    trust_pickle: bool = typer.Option(False, help="allow unpickling a whole saved module"),
    input_shape: str | None = typer.Option(
        None, help="NxCxHxW to export at (default: the policy's; only the batch may differ from it)"
    ),
    device: str = device_option(),
    amp: str = amp_option(),
) -> None:
    """Apply a policy: write a physically smaller model."""
    from autoprune.api import prune_with_policy
    from autoprune.budget import format_cost

    pruned, pol = prune_with_policy(
        model,
        policy,
        out,
        onnx=onnx,
        weights=weights,
        trust_pickle=trust_pickle,
        criterion=criterion,
        data=data,
        reconstruct=reconstruct,
        seed=seed,
        input_shape=shape_option(input_shape),
        device=device,
        amp=amp,
    )
    n = sum(p.numel() for p in pruned.parameters())
    console.print(f"pruned {pol.model}: {format_cost('params', n)} params -> {out}" + (f", {onnx}" if onnx else ""))


@app.command()
def finetune(
    model: str = typer.Option(..., help=MODEL_HELP),
    policy: Path = typer.Option(..., help="policy.json written by a search"),
    data: str = typer.Option(..., help="fashion-mnist | cifar10 | cifar100 | imagefolder:PATH | synthetic"),
    epochs: float = typer.Option(1.0, help="fine-tuning epochs"),
    lr: float | None = typer.Option(None, help="learning rate (default 0.01, a tenth of train's)"),
    batch_size: int = typer.Option(128, help="the global batch (each of N processes takes batch/N)"),
    weights: Path | None = typer.Option(None, help="the unpruned model's state_dict"),
    kd: bool = typer.Option(False, "--kd/--no-kd", help="distil from the unpruned model's logits"),
    criterion: str = typer.Option("l2", help="channel importance the policy is applied with: " + " | ".join(CRITERIA)),
    out: Path | None = typer.Option(None, help="write the fine-tuned pruned model here (.pt; state_dict beside)"),
    seed: int = typer.Option(0),
    trust_pickle: bool = typer.Option(False, help="allow unpickling a whole saved module"),
    device: str = device_option(),
    amp: str = amp_option(),
    loader_workers: int | None = loader_workers_option(),
    nproc: int = nproc_option("fine-tune"),
    checkpoint: Path | None = typer.Option(None, help="per-epoch checkpoint (default: OUT.checkpoint.pt beside --out)"),
    resume: bool = typer.Option(False, help="continue from the checkpoint after a kill"),
) -> None:
    """Prune a trained model by a policy and fine-tune it (optionally distilled; on a GPU; in N processes)."""
    from autoprune.api import finetune_policy

    _relaunch_if_asked(nproc)
    speed = _Throughput(batch_size)
    with _progress() as progress:
        task = progress.add_task("fine-tune", total=None)

        def on_step(step: int, total: int, loss: float) -> None:
            progress.update(task, completed=step, total=total, description=f"fine-tune loss {loss:.3f}{speed(step)}")

        _, metrics = finetune_policy(
            model,
            policy,
            data,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            weights=weights,
            kd=kd,
            out=out,
            seed=seed,
            criterion=criterion,
            trust_pickle=trust_pickle,
            on_step=on_step,
            device=device,
            amp=amp,
            loader_workers=loader_workers,
            checkpoint=checkpoint,
            resume=resume,
        )
    if not metrics:  # a torchrun rank other than 0
        return
    resumed = f", resumed at step {metrics['resumed_at_step']}" if metrics["resumed_at_step"] else ""
    console.print(
        f"test accuracy {metrics['test_accuracy_before_finetune']:.2%} -> {metrics['test_accuracy']:.2%} "
        f"after {epochs} epoch(s) ({metrics['seconds']:.0f} s, {metrics['images_per_second']:,.0f} img/s on "
        f"{metrics['compute']['device']}, {metrics['nproc']} process(es){resumed})" + (f"; saved {out}" if out else "")
    )


@app.command()
def export(
    policy: Path = typer.Argument(..., help="policy.json of a run (pruned_state.pt beside it holds the weights)"),
    format: str = typer.Option("onnx", "--format", help="onnx | pt"),
    weights: Path | None = typer.Option(None, help="the pruned model's state_dict (default: pruned_state.pt beside)"),
    out: Path | None = typer.Option(None, help="output file (default: pruned.onnx / pruned.pt beside the policy)"),
    model: str | None = typer.Option(None, help="model name, when it differs from the one in the policy"),
    trust_pickle: bool = typer.Option(
        False, help="trust the files: unpickle a whole module as --weights, import a model factory the policy names"
    ),
) -> None:
    """Re-create the pruned model from a policy and its weights, and export it."""
    from autoprune.api import export_policy

    path = export_policy(policy, format, out, weights=weights, trust_pickle=trust_pickle, model=model)
    console.print(f"exported {path}")


@app.command()
def report(
    run: Path | None = typer.Argument(None, help="a run directory written by `autoprune search`"),
    storage: str | None = typer.Option(None, help="write the run directory of the Optuna study in this storage"),
    study: str | None = typer.Option(None, help="the study's name (with --storage)"),
    out: Path | None = typer.Option(None, help="with --storage: the run directory to write (default runs/<study>)"),
    trust_pickle: bool = typer.Option(
        False, help="trust the study: unpickle a whole saved module, import a model factory the study names"
    ),
) -> None:
    """Re-render a run's report.md and plots; or, with --storage and --study, write a whole run directory (best
    policy pruned, fine-tuned, exported, report) from a shared Optuna study alone."""
    if storage is not None:
        from autoprune.api import search_from_study

        if not study:
            raise UserError("--storage needs --study NAME: the study whose run directory to write")
        run_dir = out or run or Path("runs") / study
        outcome = search_from_study(
            storage, study, run_dir, trust_pickle=trust_pickle, on_phase=lambda t: console.print(f"[dim]{t}[/dim]")
        )
        _print_outcome(outcome, run_dir)
        return
    if run is None:
        raise UserError("pass a run directory (autoprune report RUN), or --storage URL --study NAME")
    from autoprune.report import render

    console.print(f"wrote {render(run)}")


def _progress() -> Progress:
    # Off a terminal a live bar would only garble logs: callers print plain progress lines instead.
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
        disable=not err_console.is_terminal or not RANK0,
    )


from autoprune.cli_latency import latency_app  # noqa: E402

app.add_typer(latency_app, name="latency-table")


def main() -> None:
    try:
        app()
    except UserError as e:
        err_console.print(f"error: {e}", highlight=False, soft_wrap=True, markup=False)  # [x] in a message is text
        sys.exit(2)


@app.callback()
def _root() -> None:
    """autoprune: AMC/NetAdapt-style automatic channel pruning."""


if __name__ == "__main__":
    main()
