"""The ``autoprune`` command line: parses, calls the public API, prints with rich.

Every user mistake surfaces as :class:`autoprune.errors.UserError`; :func:`main` prints it as one line on stderr and
exits with code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from autoprune.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find how much to prune each layer of a CNN under a FLOPs, params or latency budget, then prune it.")
console = Console()
err_console = Console(stderr=True)


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
) -> None:
    """Train a model from scratch (or from --weights); used to make the demo checkpoint."""
    import torch

    from autoprune.api import train_model

    torch.manual_seed(seed)
    with _progress() as progress:
        task = progress.add_task("train", total=None)

        def on_epoch_step(step: int, total: int, loss: float, epoch: int, n_epochs: int) -> None:
            progress.update(task, completed=step, total=total,
                            description=f"epoch {epoch}/{n_epochs} loss {loss:.3f}")

        result = train_model(model, data, out, epochs=epochs, lr=lr, batch_size=batch_size, schedule=schedule,
                             weight_decay=weight_decay, weights=weights, num_classes=num_classes, seed=seed,
                             on_step=on_epoch_step)
    console.print(f"test accuracy {result['test_accuracy']:.2%}  held-out {result['held_out_accuracy']:.2%}  "
                  f"({result['seconds']:.0f} s) -> {out}")


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeRemainingColumn(), console=err_console, transient=False)


def main() -> None:
    try:
        app()
    except UserError as e:
        err_console.print(f"error: {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


@app.callback()
def _root() -> None:
    """autoprune: AMC/NetAdapt-style automatic channel pruning."""


if __name__ == "__main__":
    main()
