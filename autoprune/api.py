"""The public Python API: each function is what one CLI command calls."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from autoprune import atomic
from autoprune.budget import Budget, parse_budget
from autoprune.cost.measure import device_slowdown, measure_interleaved
from autoprune.cost.model import CostModel
from autoprune.data import CACHE_DIR, DataBundle, Split, check_compatible, load_data
from autoprune.errors import UserError
from autoprune.evaluate import accuracy, recalibrate_bn
from autoprune.export import export_onnx, save_pytorch
from autoprune.layers import LayerGraph, analyze
from autoprune.models import (
    CIFAR_RESNET_DEPTHS,
    DEMO_MODEL,
    build_model,
    load_weights,
    require_trusted_factory,
    resolve,
)
from autoprune.policy import Policy
from autoprune.problem import Problem
from autoprune.prune import ChannelPruner, kept_from_mapping
from autoprune.search.baselines import uniform_kept
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
) -> dict:
    """Train ``model`` on ``data`` and save ``{"state_dict", "meta"}`` to ``out`` (loadable with weights_only)."""
    spec = resolve(model, num_classes)
    bundle = load_data(data, spec.input_shape[1:], num_classes=spec.num_classes, seed=seed)
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

    log = train(
        net,
        bundle.train,
        TrainConfig(
            epochs=epochs, lr=lr, batch_size=batch_size, schedule=schedule, weight_decay=weight_decay, seed=seed
        ),
        on_step=step_cb,
    )
    result = {
        "model": model,
        "data": data,
        "epochs": epochs,
        "lr": lr,
        "schedule": schedule,
        "seed": seed,
        "test_accuracy": accuracy(net, bundle.test),
        "held_out_accuracy": accuracy(net, bundle.held_out),
        "seconds": log.seconds,
    }
    atomic.torch_save({"state_dict": net.state_dict(), "meta": result}, out)
    return result


# ----------------------------------------------------------------------------------------------------------------
# Models, groups, policies


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
    _check_runs(net, shape, model)
    return net, shape


def _check_runs(net: nn.Module, shape: tuple[int, ...], name: str) -> None:
    try:
        with torch.no_grad():
            net.eval()(torch.randn(*shape))
    except Exception as e:  # wrong channels, too small an image, ...
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"model {name} does not run on input {'x'.join(map(str, shape))} ({first[:160]}): "
            "pass the --input-shape it expects"
        ) from e


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


def apply_policy(
    model: nn.Module,
    policy: Policy | dict[str, int],
    input_shape: tuple[int, ...] | None = None,
    *,
    criterion: str = "l2",
    data: Split | None = None,
    reconstruct: bool = False,
    seed: int = 0,
    graph: LayerGraph | None = None,
    model_name: str | None = None,
) -> nn.Module:
    """A physically smaller copy of ``model`` keeping what ``policy`` says (a Policy or {group name: kept})."""
    if isinstance(policy, Policy):
        shape = tuple(input_shape or policy.input_shape)
        pruner = ChannelPruner(
            model,
            shape,
            graph=graph,
            criterion=criterion,
            data=data,
            seed=seed,
            model_name=model_name or type(model).__name__,
        )
        kept = policy.check_fits(pruner.graph)
    else:
        if input_shape is None and graph is None:
            raise UserError("apply_policy with a {group: kept} mapping needs input_shape")
        pruner = ChannelPruner(model, input_shape, graph=graph, criterion=criterion, data=data, seed=seed)
        unknown = sorted(set(policy) - {g.name for g in pruner.graph.groups})
        if unknown:
            raise UserError(f"no prunable group named {', '.join(unknown[:4])}: see `autoprune info`")
        kept = kept_from_mapping(pruner.graph, policy)
    return pruner.apply(kept, reconstruct=reconstruct)


@dataclass
class PolicyOutcome:
    """A policy and the pruned model it gives, with the measured costs and accuracies."""

    policy: Policy
    pruned: nn.Module
    baseline: dict = field(default_factory=dict)  # the unpruned model's metrics, same keys as policy.metrics


def evaluate_pruned(pruned: nn.Module, data: DataBundle, recalibrate: bool = True, seed: int = 0) -> dict[str, float]:
    """Held-out and test accuracy, after BatchNorm recalibration on training batches."""
    if recalibrate:
        recalibrate_bn(pruned, data.train, seed=seed)
    return {"held_out_accuracy": accuracy(pruned, data.held_out), "test_accuracy": accuracy(pruned, data.test)}


def _cost_metrics(problem: Problem, kept) -> dict[str, float]:
    c = problem.cost(kept)
    out = {
        "flops": c["flops"],
        "params": c["params"],
        "flops_share": c["flops"] / problem.cost.baseline["flops"],
        "params_share": c["params"] / problem.cost.baseline["params"],
    }
    if "latency" in c:
        out["latency_predicted_us"] = c["latency"]
    return out


def _load_bundle(data: str | DataBundle, shape: tuple[int, ...], net: nn.Module) -> DataBundle:
    bundle = data if isinstance(data, DataBundle) else load_data(data, tuple(shape[1:]))
    with torch.no_grad():
        n_out = net(torch.randn(1, *shape[1:])).shape[-1]
    check_compatible(bundle, shape, n_out)
    return bundle


def save_outcome(outcome: PolicyOutcome, out_dir: str | Path, onnx: bool = True) -> Path:
    """Write ``policy.json``, ``pruned.pt`` (+ ``pruned_state.pt``) and ``pruned.onnx`` into a run directory.

    Each file is replaced atomically and policy.json is written last, so a directory holding a policy.json always
    holds the model files that go with it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_pytorch(outcome.pruned, out / "pruned.pt", out / "pruned_state.pt")
    if onnx:
        export_onnx(outcome.pruned, outcome.policy.input_shape, out / "pruned.onnx")
    outcome.policy.save(out / "policy.json")
    return out / "policy.json"


def prune_with_policy(
    model: str,
    policy_path: str | Path,
    out: str | Path,
    *,
    onnx: str | Path | None = None,
    weights: str | Path | None = None,
    trust_pickle: bool = False,
    criterion: str = "l2",
    data: str | None = None,
    reconstruct: bool = False,
    seed: int = 0,
    input_shape: tuple[int, ...] | None = None,
) -> tuple[nn.Module, Policy]:
    """Apply a policy file to a model and save the pruned module (and its state_dict, and ONNX if asked).
    ``input_shape`` may change the batch the ONNX file is exported at, not the image the policy was searched on."""
    policy = Policy.load(policy_path)
    if input_shape is not None and tuple(input_shape)[1:] != tuple(policy.input_shape)[1:]:
        given, searched = "x".join(map(str, input_shape)), "x".join(map(str, policy.input_shape))
        raise UserError(f"--input-shape {given} is not the input {policy_path} was searched at ({searched}): only "
                        f"the batch may differ; pass --input-shape {input_shape[0]}x{searched.partition('x')[2]}")
    net, shape = load_model(model, weights, tuple(input_shape or policy.input_shape), trust_pickle=trust_pickle)
    bundle = _load_bundle(data, shape, net) if data is not None else None
    pruned = apply_policy(
        net,
        policy,
        shape,
        criterion=criterion,
        data=bundle.train if bundle else None,
        reconstruct=reconstruct,
        seed=seed,
        model_name=model,
    )
    out = Path(out)
    save_pytorch(pruned, out, out.with_name(out.stem + "_state.pt"))
    if onnx is not None:
        export_onnx(pruned, shape, onnx)
    return pruned, policy


def versions() -> dict[str, str]:
    import onnxruntime
    import torch_pruning

    import autoprune

    return {
        "autoprune": autoprune.__version__,
        "torch": torch.__version__,
        "torch_pruning": torch_pruning.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


# ----------------------------------------------------------------------------------------------------------------
# The main job: search -> prune -> fine-tune -> export -> measure -> report

DEMO_DATA = "fashion-mnist"
# A batch of 64, served as one request. The demo's budget is relative (`make demo`: latency=70% of the unpruned model
# as timed on the machine it runs on), so it means the same on a faster or slower CPU; the shapes' timings on the
# machines seen so far are in benchmarks/README.md.
DEMO_INPUT_SHAPE = (64, 1, 28, 28)


@dataclass
class RunOutcome:
    """What ``search`` leaves behind: the search result, the policy (with every metric) and the pruned model."""

    result: object  # autoprune.search.SearchResult
    policy: Policy | None  # None from a search(finish=False): a --workers child, whose parent finishes
    pruned: nn.Module | None
    run_dir: Path | None


def search(
    model: str | nn.Module | None = None,
    data: str | DataBundle | None = None,
    budget: str | Budget = "flops=50%",
    *,
    strategy: str = "ddpg",
    weights: str | Path | None = None,
    input_shape: tuple[int, ...] | None = None,
    table: str | Path | None = None,
    force: bool = False,
    episodes: int = 300,
    seed: int = 0,
    reward: str | None = None,
    options: dict | None = None,
    min_keep: float = 0.1,
    round_to: int | None = None,
    criterion: str = "l2",
    held_out: int | None = 5000,
    finetune_epochs: float = 1.0,
    finetune_lr: float | None = None,
    kd: bool = True,
    out: str | Path | None = None,
    resume: bool = False,
    measure: bool = True,
    threads: int = 2,
    trust_pickle: bool = False,
    callback=None,
    on_phase=None,
    on_table_progress=None,
    finish: bool = True,
    from_study: bool = False,
) -> RunOutcome:
    """Search a policy under ``budget``, prune, fine-tune, export, measure and write the run directory ``out``.

    With no ``model`` the embedded default runs: the demo model with its checkpoint on Fashion-MNIST.
    ``on_phase(text)`` reports the phases (table build, search, fine-tune, ...); ``callback(SearchEvent)`` each
    evaluation; ``on_table_progress(done, total, text)`` the build of a latency table when this device has none.
    ``finish=False`` stops after the search (a ``--workers`` child); ``from_study=True`` runs no
    trial and finishes from the Optuna study in ``options['storage']`` (``autoprune report --storage``).
    """
    from autoprune.finetune import DEFAULT_FINETUNE_LR, finetune
    from autoprune.reward import Evaluator
    from autoprune.search import run_search

    def phase(text: str) -> None:
        if on_phase is not None:
            on_phase(text)

    t0 = time.perf_counter()
    call = {k: v for k, v in locals().items() if k in _RESUMABLE}  # what --resume needs to re-run this call
    model_arg = model
    if input_shape is not None:  # from JSON (args.json, a study's description, a worker's spec) it is a list
        input_shape = tuple(input_shape)
    if strategy == "optuna" and (options or {}).get("storage"):
        from autoprune.search.optuna_study import check_storage

        check_storage(options["storage"])  # an unreachable database fails now, before any model work
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"--out {out} is a file, not a run directory: pass a new or existing directory")
    if model is None:
        model, data = DEMO_MODEL, data or DEMO_DATA
        input_shape = input_shape or DEMO_INPUT_SHAPE
    bud = parse_budget(budget) if isinstance(budget, str) else budget
    if isinstance(model, nn.Module):  # a model from a notebook: no name to rebuild it by, so no resume or export
        if input_shape is None:
            raise UserError("searching an nn.Module needs input_shape=(N, C, H, W)")
        net, shape = model.eval(), tuple(input_shape)
        model = type(model).__name__
        _check_runs(net, shape, model)
    else:
        torch.manual_seed(seed)  # a model without weights starts from --seed: every worker of a study builds the same
        net, shape = load_model(model, weights, input_shape, trust_pickle=trust_pickle)
    if data is None and strategy != "uniform":
        raise UserError(f"strategy {strategy} scores policies on data: pass --data (e.g. --data imagefolder:PATH)")
    bundle = _load_bundle(data, shape, net) if data is not None else None
    graph = analyze(net, shape, model)
    if "latency" in bud.metrics and table is None:
        from autoprune.cost.table_choice import choose_table
        from autoprune.latency_workflows import build_table

        table = choose_table(
            model, shape, CACHE_DIR / "latency_tables",
            lambda: build_table(model, shape, threads=threads, weights=weights, on_progress=on_table_progress),
            threads=threads, on_phase=phase,
        ).path
        phase(f"latency table of this device: {table}")
    lut = signature = None
    if table is not None:
        from autoprune.cost.latency_table import LatencyTable

        lut = LatencyTable.load(table)
    cost = make_cost_model(graph, lut, force)
    # a table of another device predicts for that device: nothing measured here can confirm or refute it
    elsewhere = lut is not None and bool(lut.device_differences())
    if lut is not None and not elsewhere:
        signature = check_table_speed(lut, table, phase)
    if round_to is None:  # a latency budget keeps whole blocks of the table's kernels: other widths run slower
        round_to = max(1, lut.block) if lut is not None and "latency" in bud.metrics else 1
    problem = Problem(graph, cost, bud, min_keep=min_keep, round_to=round_to)
    run_dir = Path(out) if out is not None else None
    # the arguments that re-run this search (args.json; a shared Optuna study's description and its workers' call)
    described = None
    if isinstance(data, (str, type(None))) and not isinstance(model_arg, nn.Module):
        described = {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in call.items()},
            "model": model,
            "data": data,
            "input_shape": input_shape,
            "budget": bud.text,
            "table": str(table) if table else None,
        }
    # the run directory appears only once every input has been checked
    if out is not None and described is not None:
        _save_args(Path(out), described, resume)

    pruner = ChannelPruner(
        net, shape, graph=graph, criterion=criterion, data=bundle.train if bundle else None, seed=seed
    )
    evaluator = Evaluator(pruner, bundle, held_out=held_out, seed=seed, kd=kd) if bundle is not None else None
    opts = dict(options or {})
    if reward is not None:
        opts["reward"] = reward
    if strategy == "optuna":  # its workers and its study's description repeat this call
        opts["call"] = {"args": described, "trust_pickle": trust_pickle}
        if from_study:
            opts["role"] = "read"
    phase(f"searching with {strategy}")
    try:
        result = run_search(
            strategy,
            problem,
            evaluator,
            episodes=episodes,
            seed=seed,
            options=opts,
            callback=callback,
            workdir=run_dir,
            resume=resume,
        )
    except KeyboardInterrupt as e:
        if run_dir is not None:  # Ctrl-C: keep the best policy so far; the journal or the study resumes the rest
            save_interrupted(run_dir, problem, bud, getattr(e, "rows", None))
        raise
    if not finish:
        return RunOutcome(result, None, None, run_dir)

    kept = [int(k) for k in result.best_kept]
    uniform, _ = uniform_kept(problem)
    timings = None
    if measure and lut is not None and "latency" in bud.metrics and not elsewhere:
        phase("measuring the chosen policy against the latency budget")
        kept, timings, checks = meet_measured_latency(problem, result.history, kept, pruner, net, shape, lut,
                                                      on_phase=phase)
    pruned = pruner.apply(kept)
    metrics = _cost_metrics(problem, kept)
    if timings is not None:
        metrics["latency_checks"] = checks
    unpruned = _cost_metrics(problem, graph.channels)
    finetune_info = None
    if bundle is not None:
        phase("scoring the pruned model")
        unpruned.update(evaluate_pruned(net, bundle, recalibrate=False))
        before = evaluate_pruned(pruned, bundle, seed=seed)
        metrics["held_out_accuracy"] = before["held_out_accuracy"]
        metrics["test_accuracy_before_finetune"] = before["test_accuracy"]
        if finetune_epochs > 0:
            lr = finetune_lr or DEFAULT_FINETUNE_LR
            phase(f"fine-tuning {finetune_epochs} epoch(s){' with distillation' if kd else ''}")
            log = finetune(pruned, bundle, epochs=finetune_epochs, lr=lr, teacher=net if kd else None, seed=seed)
            finetune_info = {"epochs": finetune_epochs, "lr": lr, "kd": kd, "seconds": log.seconds}
            metrics["held_out_accuracy_after_finetune"] = accuracy(pruned, bundle.held_out)
        metrics["test_accuracy"] = accuracy(pruned, bundle.test)
    if measure:
        if timings is None:
            phase("measuring end-to-end latency")
            backend, n_threads = (lut.backend, lut.threads) if lut is not None else ("onnxruntime", threads)
            # interleaved rounds (median of 100 runs in each of 3), so a slow spell of the machine hits both models
            with lut.measuring() if lut is not None else contextlib.nullcontext():
                timings = measure_interleaved([net, pruned], shape, backend, n_threads, 10, 100, 3)
        unpruned["latency_measured_us"], metrics["latency_measured_us"] = (t.median_us for t in timings)
        if elsewhere:  # timed here; the budget is the table's device's
            metrics["latency_measured_elsewhere"] = True
            metrics["latency_predicted_for"] = lut.device_name
    metrics["unpruned"] = unpruned
    policy = Policy.from_kept(
        graph,
        kept,
        budget=bud.text,
        metrics=metrics,
        search={
            "strategy": strategy,
            "evaluations": result.evaluations,
            # on a coarse space (a 16-channel block on a small model) DDPG's episodes repeat policies: the cache
            # answers them, the episode counts (Optuna prunes its repeats and counts none)
            "distinct_policies": int(result.history["kept"].map(tuple).nunique()) if len(result.history) else 0,
            "converged": result.extra.get("converged"),  # an Optuna study that ran out of new policies to propose
            "seed": seed,
            "reward": result.extra.get("reward"),
            "episodes": episodes,
            "criterion": criterion,
            "min_keep": min_keep,
            "round_to": round_to,
            "data": bundle.name if bundle else None,
            "table": str(table) if table is not None else None,
            "table_device": lut.device_name if lut is not None else None,
            "speed_signature": signature.to_dict() if signature is not None else None,
            "search_seconds": result.seconds,
            "seconds": time.perf_counter() - t0,
            "uniform_kept": [int(k) for k in uniform],
            "finetune": finetune_info,
            "versions": versions(),
        },
    )
    if run_dir is not None:
        phase("writing the run directory")
        write_run_dir(run_dir, result.history, PolicyOutcome(policy, pruned, unpruned))
    return RunOutcome(result, policy, pruned, run_dir)


def check_table_speed(table, path, on_phase: Callable[[str], None] | None = None):
    """Re-time the table's reference probes (about a second) and say so when this machine now runs them off the
    table's level by more than its noise: predictions are then off by about that ratio until the table is
    re-anchored. Returns the check (None for a table without a signature)."""
    check = table.check_speed()
    if check is not None and check.off and on_phase is not None:
        on_phase(f"WARNING: speed signature: this machine runs the table's reference probes at {check.ratio:.2f}x "
                 f"their times when the table was built (its noise allows ±{check.tolerance:.0%}): its predictions are "
                 f"off by about that much now; re-fit its level with `autoprune latency-table anchor --table {path}`")
    return check


def meet_measured_latency(
    problem: Problem, history, kept: list[int], pruner: ChannelPruner, net: nn.Module, shape: tuple[int, ...],
    table, tries: int = 3, settle: int = 2, pause_s: float = 20.0, on_phase: Callable[[str], None] | None = None,
) -> tuple[list[int], list, list[dict]]:
    """A latency budget is met when the pruned model *measures* within it, not when the table says so.

    A search ends at the edge of the predicted budget, where the table's few-percent error decides. So the chosen
    policy is pruned and timed here (interleaved with the unpruned model: 3 rounds of 100 runs); if it measures
    over the limit, the table's error on this very policy becomes the margin — the best evaluated policy predicted
    under ``limit * predicted / measured`` is tried next — up to ``tries`` times. Returns the policy, the last
    (unpruned, pruned) timings and every check made.

    Before a measurement over an absolute limit counts, the device must be in its table's state: when the unpruned
    model measured more than ``DEVICE_SLOWDOWN_TOLERANCE`` over the table's prediction in the same rounds
    (:func:`~autoprune.cost.measure.device_slowdown`), the
    pair is measured again after ``pause_s`` seconds, up to ``settle`` times (a slow spell of a shared machine
    passes; a device that stays slower is a device whose policy must shrink, and then it does). Every measurement
    is recorded, with the unpruned model's time beside it.
    """
    c = next(c for c in problem.budget.constraints if c.metric == "latency")
    reference = float(problem.cost(problem.channels)["latency"])
    checks: list[dict] = []
    for _ in range(tries):
        predicted = float(problem.cost(kept)["latency"])
        model = pruner.apply(kept)
        for attempt in range(settle + 1):
            with table.measuring():
                timings = measure_interleaved([net, model], shape, table.backend, table.threads, 10, 100, 3)
            unpruned, measured = timings[0].median_us, timings[1].median_us
            # a relative budget (latency=50%) is a share of the unpruned model as measured in the same rounds
            limit = c.limit(unpruned) if c.relative else problem.limits["latency"]
            slowdown = device_slowdown(unpruned, reference)
            checks.append({"kept": list(kept), "predicted_us": predicted, "measured_us": measured,
                           "unpruned_measured_us": unpruned, "unpruned_predicted_us": reference,
                           "met": bool(measured <= limit)})
            if measured <= limit or c.relative or slowdown is None or attempt >= settle:
                break
            if on_phase is not None:
                on_phase(f"the unpruned model measured {unpruned / 1000:.2f} ms, {slowdown:.0%} over its table's "
                         f"{reference / 1000:.2f} ms: the device is busy or throttled; measuring again in "
                         f"{pause_s:.0f} s")
            time.sleep(pause_s)
        if measured <= limit:
            break
        if slowdown is not None:  # it stayed slow through the pauses: time the next policy once
            settle = 0
        tighter = limit * predicted / measured
        rows = history[history["feasible"].astype(bool) & history["reward"].notna() & (history["latency"] <= tighter)]
        if rows.empty:
            break
        kept = [int(k) for k in rows.loc[rows["reward"].idxmax(), "kept"]]
    return kept, timings, checks


def write_history(history, path: Path) -> None:
    atomic.write_text(path, history.to_csv(index=False))


def write_run_dir(run_dir: Path, history, outcome: PolicyOutcome) -> None:
    """Write a finished search's files — history.csv, the model files, policy.json, report.md and its plots — all
    or nothing: each goes to a temporary file beside its target, and only once every one is written are they
    renamed into place. A full disk (or any failed write) leaves the run directory as it was and is one line."""
    from autoprune.report import render

    try:
        with atomic.batch():
            write_history(history, run_dir / "history.csv")
            save_outcome(outcome, run_dir)
            render(run_dir, policy=outcome.policy, history=history)
    except OSError as e:
        where = e.filename or run_dir
        raise UserError(
            f"could not write the run directory {run_dir}: {e.strerror or e} ({where}); its previous files are "
            "unchanged: free space (or fix the permissions) and run the same command again (a --resume or a "
            "study reuses every evaluation)"
        ) from e


def load_pruned(
    policy_path: str | Path, state: str | Path | None = None, *, trust_pickle: bool = False, model: str | None = None
) -> tuple[nn.Module, Policy]:
    """Re-create a pruned model from its policy and load its weights safely.

    The architecture comes from applying ``policy.json`` to a fresh model of the policy's name; the weights from
    ``state`` (default: ``pruned_state.pt`` beside the policy), loaded with ``weights_only=True``. A whole pickled
    module (``pruned.pt``) is only unpickled when ``trust_pickle`` is set.
    """
    policy = Policy.load(policy_path)
    require_trusted_factory(policy.model, f"policy {policy_path}", named_by_user=model, trust=trust_pickle)
    name = model or policy.model
    state = Path(state) if state is not None else Path(policy_path).with_name("pruned_state.pt")
    if not state.is_file():
        raise UserError(f"no weights at {state}: pass --weights with the pruned model's state_dict")
    net, shape = load_model(name, None, policy.input_shape)
    skeleton = apply_policy(net, policy, shape, model_name=name)
    pruned = load_weights(skeleton, state, trust_pickle=trust_pickle)
    return pruned.eval(), policy


def export_policy(
    policy_path: str | Path,
    fmt: str = "onnx",
    out: str | Path | None = None,
    *,
    weights: str | Path | None = None,
    trust_pickle: bool = False,
    model: str | None = None,
) -> Path:
    """Export the pruned model a policy describes, as ONNX (``pruned.onnx``) or PyTorch (``pruned.pt``)."""
    if fmt not in ("onnx", "pt"):
        raise UserError(f"unknown export format {fmt!r}: use onnx or pt")
    pruned, policy = load_pruned(policy_path, weights, trust_pickle=trust_pickle, model=model)
    out = Path(out) if out is not None else Path(policy_path).with_name(f"pruned.{fmt}")
    if fmt == "onnx":
        export_onnx(pruned, policy.input_shape, out)
    else:
        save_pytorch(pruned, out)
    return out


def finetune_policy(
    model: str,
    policy_path: str | Path,
    data: str,
    *,
    epochs: float = 1.0,
    lr: float | None = None,
    weights: str | Path | None = None,
    kd: bool = False,
    out: str | Path | None = None,
    seed: int = 0,
    trust_pickle: bool = False,
    on_step=None,
) -> tuple[nn.Module, dict]:
    """Prune ``model`` (with its trained ``weights``) by a policy and fine-tune it; save the result if ``out``."""
    from autoprune.finetune import DEFAULT_FINETUNE_LR, finetune

    policy = Policy.load(policy_path)
    net, shape = load_model(model, weights, policy.input_shape, trust_pickle=trust_pickle)
    bundle = _load_bundle(data, shape, net)
    pruned = apply_policy(net, policy, shape, data=bundle.train, seed=seed, model_name=model)
    before = evaluate_pruned(pruned, bundle, seed=seed)
    log = finetune(
        pruned,
        bundle,
        epochs=epochs,
        lr=lr or DEFAULT_FINETUNE_LR,
        teacher=net if kd else None,
        seed=seed,
        on_step=on_step,
    )
    metrics = {
        "test_accuracy_before_finetune": before["test_accuracy"],
        "test_accuracy": accuracy(pruned, bundle.test),
        "held_out_accuracy": accuracy(pruned, bundle.held_out),
        "seconds": log.seconds,
    }
    if out is not None:
        out = Path(out)
        save_pytorch(pruned, out, out.with_name(out.stem + "_state.pt"))
    return pruned, metrics


ARGS_FILE = "args.json"  # in the run directory: the search's arguments, so `--resume RUN` needs nothing else
_RESUMABLE = (
    "strategy",
    "weights",
    "force",
    "episodes",
    "seed",
    "reward",
    "options",
    "min_keep",
    "round_to",
    "criterion",
    "held_out",
    "finetune_epochs",
    "finetune_lr",
    "kd",
    "measure",
    "threads",
)


def _save_args(run_dir: Path, args: dict, resume: bool) -> None:
    path = run_dir / ARGS_FILE
    if path.is_file() and not resume:
        raise UserError(f"{run_dir} already holds a search: pass --resume {run_dir} to continue it, or another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(args, indent=2) + "\n")


def resume_args(run_dir: str | Path) -> dict:
    """The arguments an interrupted search in ``run_dir`` was started with."""
    path = Path(run_dir) / ARGS_FILE
    if not path.is_file():
        raise UserError(f"{run_dir} holds no search to resume (no {ARGS_FILE}): start one with `autoprune search`")
    return json.loads(path.read_text())


def search_from_study(
    storage: str, study: str, out: str | Path, *, trust_pickle: bool = False, callback=None, on_phase=None
) -> RunOutcome:
    """Write the run directory of an Optuna study from the study alone, as its workers do at their end.

    The study stores the arguments it was started with; the same finishing path as :func:`search` (prune the best
    complete trial's policy, fine-tune, evaluate, export, measure, report) runs without evaluating any trial.
    """
    from autoprune.search.optuna_study import study_args

    args = study_args(storage, study)
    require_trusted_factory(str(args.get("model")), f"study {study!r}", trust=trust_pickle)
    args["options"] = {**(args.get("options") or {}), "storage": storage, "study_name": study}
    return search(
        **args, out=out, resume=True, from_study=True, trust_pickle=trust_pickle, callback=callback, on_phase=on_phase
    )


def save_interrupted(run_dir: Path, problem: Problem, budget: Budget, rows: list[dict] | None = None) -> Path | None:
    """After Ctrl-C: write the best feasible policy evaluated so far and the history (``rows``: the search's
    evaluations; by default those of the run directory's journal)."""
    import pandas as pd

    from autoprune.search import JOURNAL
    from autoprune.search.base import Journal, can_be_best

    if rows is None:
        rows = Journal(run_dir / JOURNAL).read()
    scored = [r for r in rows if r.get("reward") is not None and can_be_best(r["reward"], r.get("feasible", True))]
    if not scored:
        return None
    best = max(scored, key=lambda r: r["reward"])
    metrics = _cost_metrics(problem, best["kept"])
    metrics["held_out_accuracy"] = best.get("accuracy")
    policy = Policy.from_kept(
        problem.graph,
        best["kept"],
        budget=budget.text,
        metrics=metrics,
        search={"interrupted": True, "evaluations": len(rows), "reward": best["reward"]},
    )
    with atomic.batch():  # the history and its best policy replace the old files together
        write_history(pd.DataFrame(rows), run_dir / "history.csv")
        policy.save(run_dir / "policy.json")
    return run_dir / "policy.json"
