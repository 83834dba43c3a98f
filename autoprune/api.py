"""The public Python API: each function is what one CLI command calls."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch.nn as nn

from autoprune import atomic
from autoprune.budget import Budget
from autoprune.compute import resolve_for_processes
from autoprune.cost.model import CostModel
from autoprune.data import DataBundle, check_compatible, load_data
from autoprune.errors import UserError
from autoprune.evaluate import accuracy
from autoprune.layers import LayerGraph, analyze
from autoprune.models import (
    build_model,
    input_normalisation,
    require_trusted_factory,
    resolve,
)
from autoprune.pipeline import RunOutcome, run
from autoprune.pipeline.finish import evaluate_pruned, versions
from autoprune.pipeline.policy_jobs import (
    apply_policy,
    checkpoint_path,
    export_policy,
    finetune_policy,
    load_pruned,
    prune_with_policy,
)
from autoprune.pipeline.run_dir import PolicyOutcome, save_outcome
from autoprune.pipeline.setup import load_model
from autoprune.search.optuna_study import study_args
from autoprune.spec import RunSpec, load_spec
from autoprune.training import TrainConfig, train


def train_model(
    model: str,
    data: str,
    out: str | Path,
    *,
    epochs: float = 15,
    lr: float = 0.1,
    batch_size: int = 128,
    schedule: str = "cosine",
    weight_decay: float = 5e-4,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    seed: int = 0,
    on_step: Callable[[int, int, float, int, int], None] | None = None,
    device: str = "auto",
    amp: str = "auto",
    loader_workers: int | None = None,
    resume: bool = False,
) -> dict:
    """Train ``model`` on ``data`` and save ``{"state_dict", "meta"}`` to ``out`` (loadable with weights_only).

    The whole state is saved after every epoch to ``OUT.checkpoint.pt``; ``resume`` continues from it. Started by
    torchrun, each process trains on its shard with DDP and rank 0 writes (the others return ``{}``)."""
    compute, world = resolve_for_processes(device, amp, loader_workers)
    spec = resolve(model, num_classes)
    stats = input_normalisation(model)
    bundle = load_data(data, spec.input_shape[1:], num_classes=spec.num_classes, seed=seed, stats=stats)
    bundle = bundle.to(compute.device, loader_workers=compute.loader_workers)
    net, spec = build_model(
        model,
        weights,
        num_classes=num_classes or bundle.num_classes,
        in_channels=bundle.image_shape[0],
        use_default_weights=False,
    )
    check_compatible(bundle, spec.input_shape, spec.num_classes)
    steps_per_epoch = -(-len(bundle.train) // batch_size)
    n_epochs = int(-(-epochs // 1))

    def step_cb(step: int, total: int, loss: float) -> None:
        if on_step is not None:
            on_step(step, total, loss, (step - 1) // steps_per_epoch + 1, n_epochs)

    config = TrainConfig(
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        schedule=schedule,
        weight_decay=weight_decay,
        seed=seed,
        checkpoint=checkpoint_path(out),
        resume=resume,
    )
    log = train(net, bundle.train, config, on_step=step_cb, compute=compute, world=world)
    if not world.main:
        return {}
    result = {
        "model": model,
        "data": data,
        "epochs": epochs,
        "lr": lr,
        "schedule": schedule,
        "seed": seed,
        "test_accuracy": accuracy(net, bundle.test, compute=compute),
        "held_out_accuracy": accuracy(net, bundle.held_out, compute=compute),
        "seconds": log.seconds,
        "images_per_second": log.images_per_second,
        "nproc": world.size,
        "compute": compute.describe(),
    }
    atomic.torch_save({"state_dict": net.state_dict(), "meta": result}, out)
    return result


# ----------------------------------------------------------------------------------------------------------------
# Models, groups, policies


def analyze_model(
    model: str | nn.Module,
    input_shape: tuple[int, ...] | None = None,
    *,
    weights: str | Path | None = None,
    trust_pickle: bool = False,
    name: str | None = None,
) -> LayerGraph:
    """The prunable groups of a model (by name or instance) and its cost model."""
    if isinstance(model, str):
        net, shape = load_model(model, weights, input_shape, trust_pickle=trust_pickle)
        return analyze(net, shape, model)
    if input_shape is None:
        raise UserError("an nn.Module needs an input_shape to be analysed")
    return analyze(model, tuple(input_shape), name or type(model).__name__)


def make_cost_model(graph: LayerGraph, table=None, force: bool = False) -> CostModel:
    """FLOPs/params always; latency when a device table (a path or a loaded ``LatencyTable``) is given."""
    if table is None:
        return CostModel(graph)
    from autoprune.cost.latency_table import LatencyTable

    lut = table if isinstance(table, LatencyTable) else LatencyTable.load(table)
    lut.check_device(force=force)
    return CostModel(graph, latency=lut.predictor(graph))


def search(
    model: str | nn.Module | None = None,
    data: str | DataBundle | None = None,
    budget: str | Budget = "flops=50%",
    *,
    out: str | Path | None = None,
    resume: bool = False,
    trust_pickle: bool = False,
    callback=None,
    on_phase=None,
    on_table_progress=None,
    **settings,
) -> RunOutcome:
    """Search a policy under ``budget``, prune, fine-tune, export, measure and write the run directory ``out``.

    ``settings`` are the :class:`~autoprune.spec.RunSpec`'s (strategy, episodes, seed, options, input_shape, ...).
    With no ``model`` the embedded default runs: the demo model with its checkpoint on Fashion-MNIST. ``model`` may
    be an ``nn.Module`` and ``data`` a loaded ``DataBundle`` (then the run cannot be resumed: nothing names them).
    ``on_phase(text)`` reports the phases (table build, search, fine-tune, ...); ``callback(SearchEvent)`` each
    evaluation; ``on_table_progress(done, total, text)`` the build of a latency table when this device has none.
    """
    module = model if isinstance(model, nn.Module) else None
    bundle = data if isinstance(data, DataBundle) else None
    spec = RunSpec.create(
        budget,
        type(model).__name__ if module is not None else model,
        bundle.name if bundle is not None else data,
        **settings,
    )
    return run(
        spec,
        out=out,
        resume=resume,
        module=module,
        bundle=bundle,
        trust_pickle=trust_pickle,
        callback=callback,
        on_phase=on_phase,
        on_table_progress=on_table_progress,
    )


def resume(
    run_dir: str | Path, *, trust_pickle: bool = False, callback=None, on_phase=None, on_table_progress=None
) -> RunOutcome:
    """Continue the interrupted search in ``run_dir`` from its ``args.json``: every evaluation already made (in the
    journal, or the Optuna study) is reused, not repeated."""
    return run(
        load_spec(run_dir),
        out=run_dir,
        resume=True,
        trust_pickle=trust_pickle,
        callback=callback,
        on_phase=on_phase,
        on_table_progress=on_table_progress,
    )


def search_from_study(
    storage: str, study: str, out: str | Path, *, trust_pickle: bool = False, callback=None, on_phase=None
) -> RunOutcome:
    """Write the run directory of an Optuna study from the study alone, as its workers do at their end.

    The study stores the spec it was started with; the same finishing path as :func:`search` (prune the best
    complete trial's policy, fine-tune, evaluate, export, measure, report) runs without evaluating any trial.
    """
    spec = RunSpec.from_json(study_args(storage, study))
    require_trusted_factory(spec.model, f"study {study!r}", trust=trust_pickle)
    spec = spec.replace(options={**spec.options, "storage": storage, "study_name": study})
    return run(spec, out=out, resume=True, role="read", trust_pickle=trust_pickle, callback=callback, on_phase=on_phase)


__all__ = [
    "PolicyOutcome",
    "RunOutcome",
    "analyze_model",
    "apply_policy",
    "evaluate_pruned",
    "export_policy",
    "finetune_policy",
    "load_model",
    "load_pruned",
    "make_cost_model",
    "prune_with_policy",
    "resume",
    "save_outcome",
    "search",
    "search_from_study",
    "train_model",
    "versions",
]
