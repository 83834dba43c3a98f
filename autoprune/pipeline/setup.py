"""Stage 1, setup: a :class:`~autoprune.spec.RunSpec` becomes what a search runs on — the model and its input, the
data, the analysed groups, this device's latency table, the cost model, the problem and the evaluator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from autoprune.compute import Compute
from autoprune.cost.latency_table import LatencyTable
from autoprune.cost.model import CostModel
from autoprune.cost.speed_signature import SignatureCheck
from autoprune.cost.table_choice import SHIPPED_TABLES, channel_block, choose_table
from autoprune.data import CACHE_DIR, DataBundle, check_compatible, load_data
from autoprune.errors import UserError
from autoprune.latency_workflows import build_table, reanchor_table
from autoprune.layers import LayerGraph, analyze
from autoprune.models import CIFAR_RESNET_DEPTHS, DEMO_MODEL, build_model, input_normalisation
from autoprune.problem import Problem, coarsest_round_to
from autoprune.prune import ChannelPruner
from autoprune.reward import Evaluator
from autoprune.search import needs_data
from autoprune.spec import RunSpec

Phase = Callable[[str], None]


def load_model(
    model: str,
    weights: str | Path | None = None,
    input_shape: tuple[int, ...] | None = None,
    *,
    trust_pickle: bool = False,
    num_classes: int | None = None,
    in_channels: int | None = None,
) -> tuple[nn.Module, tuple[int, ...]]:
    """Build a named model with its weights; returns the module and the input shape to analyse it at."""
    if input_shape is not None and in_channels is None and ":" not in model and model != DEMO_MODEL:
        in_channels = input_shape[1] if model in CIFAR_RESNET_DEPTHS else None
    net, spec = build_model(model, weights, num_classes=num_classes, in_channels=in_channels, trust_pickle=trust_pickle)
    shape = tuple(input_shape) if input_shape is not None else spec.input_shape
    check_runs(net, shape, model)
    return net, shape


def check_runs(net: nn.Module, shape: tuple[int, ...], name: str) -> None:
    try:
        with torch.no_grad():
            net.eval()(torch.randn(*shape))
    except Exception as e:  # wrong channels, too small an image, ...
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"model {name} does not run on input {'x'.join(map(str, shape))} ({first[:160]}): "
            "pass the --input-shape it expects"
        ) from e


def load_bundle(
    data: str | DataBundle,
    shape: tuple[int, ...],
    net: nn.Module,
    *,
    model: str = "",
) -> DataBundle:
    """The named data for ``net`` (an image folder normalised as ``model`` expects), checked against its input and
    its outputs."""
    if isinstance(data, DataBundle):
        bundle = data
    else:
        stats = input_normalisation(model)
        bundle = load_data(data, tuple(shape[1:]), stats=stats)
    with torch.no_grad():
        n_out = net(torch.randn(1, *shape[1:])).shape[-1]
    check_compatible(bundle, shape, n_out)
    return bundle


def check_table_speed(
    table: LatencyTable, path, on_phase: Phase | None = None, *, warn: bool = True
) -> SignatureCheck | None:
    """Re-time the table's reference probes (about a second) and, with ``warn``, say so when this machine now runs
    them off the table's level by more than its noise: predictions are then off by about that ratio until the table
    is re-anchored. Returns the check (None for a table without a signature)."""
    check = table.check_speed()
    if warn and check is not None and check.off and on_phase is not None:
        on_phase(
            f"WARNING: speed signature: this machine runs the table's reference probes at {check.ratio:.2f}x "
            f"their times when the table was built (its noise allows ±{check.tolerance:.0%}): its predictions are "
            f"off by about that much now; re-fit its level with `autoprune latency-table anchor --table {path}`"
        )
    return check


def reanchor_drifted(
    table: LatencyTable, net: nn.Module, check: SignatureCheck, phase: Phase, *, to: Path
) -> LatencyTable:
    """The table re-anchored here now and saved ``to`` autoprune's cache (over itself for a cached table), for a
    machine whose speed has drifted from it (``check`` off).

    A drift is not one factor on every prediction: ResNet-20's table on a Xeon, built when its reference probes ran
    1.2x faster, had a fixed part of 0.53 ms where the machine's state then measured 0.91. The relative budget
    cancels the level, not the fixed part, so every policy the search chose at ``latency=50%`` measured 2-5 % over
    the limit and the measured check fell back to a uniform policy of 13 % of the FLOPs (88 % after the fine-tune,
    three seeds); on the re-anchored table two seeds' first choices and the third's second measured within it, and
    the default ended 91.6 % (benchmarks/README.md, "A drifted table re-anchored before the search"). Re-timing the
    13 calibration networks costs seconds; the probe grid is kept."""
    phase(
        f"speed signature: this machine runs the table's reference probes at {check.ratio:.2f}x their times when "
        f"the table was built (its noise allows ±{check.tolerance:.0%}): re-anchoring it here (its calibration "
        "networks re-timed)"
    )
    anchored = reanchor_table(table, model=net)
    anchored.save(to)
    moved = "" if Path(to).resolve() == Path(table.path).resolve() else f" into {to}"
    phase(
        f"re-anchored {table.path}{moved}: fixed part {table.fixed_us / 1000:.3f} -> "
        f"{anchored.fixed_us / 1000:.3f} ms, scale {table.scale:.3f} -> {anchored.scale:.3f}"
    )
    return anchored


@dataclass
class Setup:
    """What the search, the measured check and the finish work on."""

    spec: RunSpec  # with the table actually used, when one was chosen or built for this device
    net: nn.Module
    shape: tuple[int, ...]
    bundle: DataBundle | None
    graph: LayerGraph
    table: LatencyTable | None
    problem: Problem
    pruner: ChannelPruner
    evaluator: Evaluator | None
    compute: Compute = Compute()  # where the passes over data run
    elsewhere: bool = False  # the table is another device's: its latency is a prediction for that device
    signature: SignatureCheck | None = None  # the table's speed signature against this machine, before any re-anchor
    reanchored: dict | None = None  # the chosen table re-anchored before the search: its fit before and after


def prepare(
    spec: RunSpec,
    *,
    module: nn.Module | None = None,
    bundle: DataBundle | None = None,
    trust_pickle: bool = False,
    on_phase: Phase | None = None,
    on_table_progress: Callable[[int, int, str], None] | None = None,
) -> Setup:
    """Everything a search needs, checked before any of it runs: ``module`` (a model from a notebook) and ``bundle``
    (data already loaded) stand in for the spec's model and data names."""
    phase = on_phase or (lambda _text: None)
    compute = Compute.resolve(spec.device, spec.amp, spec.loader_workers)
    if compute.cuda:
        phase(f"passes over data on {compute}")
    if module is not None:
        if spec.input_shape is None:
            raise UserError("searching an nn.Module needs input_shape=(N, C, H, W)")
        net, shape = module.eval(), spec.input_shape
        check_runs(net, shape, spec.model)
    else:
        torch.manual_seed(spec.seed)  # a model without weights starts from --seed: every worker builds the same
        net, shape = load_model(spec.model, spec.weights, spec.input_shape, trust_pickle=trust_pickle)
    data = bundle if bundle is not None else spec.data
    if data is None and needs_data(spec.strategy):
        raise UserError(f"strategy {spec.strategy} scores policies on data: pass --data (e.g. --data imagefolder:PATH)")
    bundle = load_bundle(data, shape, net, model=spec.model) if data is not None else None
    if bundle is not None:
        bundle = bundle.to(compute.device, loader_workers=compute.loader_workers)  # once, not per batch
    graph = analyze(net, shape, spec.model)
    path, table = _latency_table(spec, shape, phase, on_table_progress)
    # the table search chose for this device (not a file the user named) is kept at this machine's level:
    # re-anchored when its speed has drifted, before the search prices anything with it; a cached table over
    # itself, a shipped one into the cache (the repository's file stays as shipped, and the cache is looked in first)
    cache = (CACHE_DIR / "latency_tables").resolve()
    chosen = Path(path).resolve() if table is not None and spec.table is None else None
    anchor_to = None  # where its re-anchored copy goes
    if chosen is not None and chosen.is_relative_to(cache):
        anchor_to = Path(path)
    elif chosen is not None and chosen.is_relative_to(SHIPPED_TABLES.resolve()):
        anchor_to = cache / chosen.parent.name / chosen.name
    # a table of another device predicts for that device: nothing measured here can confirm or refute it
    elsewhere = table is not None and bool(table.device_differences())
    reanchor = anchor_to is not None and spec.measure and not elsewhere
    signature = None
    if table is not None and not elsewhere:
        signature = check_table_speed(table, path, phase, warn=not reanchor)
    reanchored = None
    if reanchor and signature is not None and signature.off:
        old, table = table, reanchor_drifted(table, net, signature, phase, to=anchor_to)
        path = str(table.path)
        reanchored = {
            "fixed_us": [old.fixed_us, table.fixed_us],
            "scale": [old.scale, table.scale],
            "date": table.meta["anchor"]["date"],
            "from": str(old.path),
        }
    spec = spec.replace(table=path)
    cost = CostModel(graph) if table is None else CostModel(graph, latency=table.predictor(graph))
    # by default whole blocks of this device's kernels, so that a cut in FLOPs is also a speed-up; finer widths only
    # where the budget is below the cheapest policy in whole blocks
    if spec.round_to is not None:
        block = round_to = spec.round_to
    else:
        block = (
            max(1, table.block)
            if table is not None
            else channel_block(spec.model, shape, CACHE_DIR / "latency_tables", threads=spec.threads)
        )
        round_to = coarsest_round_to(graph, cost, spec.budget, spec.min_keep, block)
    pruner = ChannelPruner(
        net,
        shape,
        graph=graph,
        criterion=spec.criterion,
        data=bundle.train if bundle else None,
        seed=spec.seed,
        compute=compute,
    )
    # after the pruner: its check of layers Torch-Pruning does not know may mark a metric inexact
    problem = Problem(
        graph, cost, spec.budget, min_keep=spec.min_keep, round_to=round_to, importance=list(pruner.scores)
    )
    if round_to < block:
        phase(
            f"round-to {round_to}: {spec.budget} is below the cheapest policy in whole blocks of {block} channels, "
            "so narrower widths are allowed (pass --round-to to choose)"
        )
    evaluator = None
    if bundle is not None:
        evaluator = Evaluator(pruner, bundle, held_out=spec.held_out, seed=spec.seed, kd=spec.kd, compute=compute)
    return Setup(
        spec, net, shape, bundle, graph, table, problem, pruner, evaluator, compute, elsewhere, signature, reanchored
    )


def _latency_table(
    spec: RunSpec, shape: tuple[int, ...], phase: Phase, on_progress: Callable[[int, int, str], None] | None
) -> tuple[str | None, LatencyTable | None]:
    """The table the spec names; for a latency budget without one, this device's (shipped, cached, or built now)."""
    path = spec.table
    if path is None and "latency" in spec.budget.metrics:
        path = choose_table(
            spec.model,
            shape,
            CACHE_DIR / "latency_tables",
            lambda: build_table(spec.model, shape, threads=spec.threads, weights=spec.weights, on_progress=on_progress),
            threads=spec.threads,
            on_phase=phase,
        ).path
        phase(f"latency table of this device: {path}")
    if path is None:
        return None, None
    table = LatencyTable.load(path)
    table.check_device(force=spec.force)
    return str(path), table
