"""What is done with a saved policy: apply it to a model, prune a named model by it, re-create the pruned model
from it, export it, fine-tune it."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from autoprune.compute import CPU, Compute, resolve_for_processes
from autoprune.data import Split
from autoprune.errors import UserError
from autoprune.evaluate import accuracy
from autoprune.export import export_onnx, save_pytorch
from autoprune.finetune import DEFAULT_FINETUNE_LR, finetune
from autoprune.layers import LayerGraph
from autoprune.models import load_weights, require_trusted_factory
from autoprune.pipeline.finish import evaluate_pruned
from autoprune.pipeline.setup import load_bundle, load_model
from autoprune.policy import Policy
from autoprune.prune import ChannelPruner, kept_from_mapping


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
    compute: Compute = CPU,
) -> nn.Module:
    """A physically smaller copy of ``model`` keeping what ``policy`` says (a Policy or {group name: kept}); the
    data-dependent criteria and ``reconstruct`` run their passes on ``compute``."""
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
            compute=compute,
        )
        kept = policy.check_fits(pruner.graph)
    else:
        if input_shape is None and graph is None:
            raise UserError("apply_policy with a {group: kept} mapping needs input_shape")
        pruner = ChannelPruner(
            model, input_shape, graph=graph, criterion=criterion, data=data, seed=seed, compute=compute
        )
        unknown = sorted(set(policy) - {g.name for g in pruner.graph.groups})
        if unknown:
            raise UserError(f"no prunable group named {', '.join(unknown[:4])}: see `autoprune info`")
        kept = kept_from_mapping(pruner.graph, policy)
    return pruner.apply(kept, reconstruct=reconstruct)


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
    device: str = "auto",
    amp: str = "auto",
) -> tuple[nn.Module, Policy]:
    """Apply a policy file to a model and save the pruned module (and its state_dict, and ONNX if asked).
    ``input_shape`` may change the batch the ONNX file is exported at, not the image the policy was searched on.
    ``device``/``amp``: where the data-dependent criteria and ``reconstruct`` run."""
    compute = Compute.resolve(device, amp)
    policy = Policy.load(policy_path)
    if input_shape is not None and tuple(input_shape)[1:] != tuple(policy.input_shape)[1:]:
        given, searched = "x".join(map(str, input_shape)), "x".join(map(str, policy.input_shape))
        raise UserError(
            f"--input-shape {given} is not the input {policy_path} was searched at ({searched}): only "
            f"the batch may differ; pass --input-shape {input_shape[0]}x{searched.partition('x')[2]}"
        )
    net, shape = load_model(model, weights, tuple(input_shape or policy.input_shape), trust_pickle=trust_pickle)
    bundle = load_bundle(data, shape, net, model=model) if data is not None else None
    pruned = apply_policy(
        net,
        policy,
        shape,
        criterion=criterion,
        data=bundle.train.to(compute.device, loader_workers=compute.loader_workers) if bundle else None,
        reconstruct=reconstruct,
        seed=seed,
        model_name=model,
        compute=compute,
    )
    out = Path(out)
    save_pytorch(pruned, out, out.with_name(out.stem + "_state.pt"))
    if onnx is not None:
        export_onnx(pruned, shape, onnx)
    return pruned, policy


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
    batch_size: int = 128,
    weights: str | Path | None = None,
    kd: bool = False,
    out: str | Path | None = None,
    seed: int = 0,
    criterion: str = "l2",
    trust_pickle: bool = False,
    on_step=None,
    device: str = "auto",
    amp: str = "auto",
    loader_workers: int | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
) -> tuple[nn.Module, dict]:
    """Prune ``model`` (with its trained ``weights``) by a policy and fine-tune it on ``device``; save the result if
    ``out``. Started by torchrun (``autoprune finetune --nproc N``) each process trains on its shard with DDP, and
    only rank 0 scores and writes (the metrics of the other ranks are empty). ``checkpoint`` (default beside
    ``out``) is written after every epoch; ``resume`` continues from it."""
    compute, world = resolve_for_processes(device, amp, loader_workers)
    policy = Policy.load(policy_path)
    torch.manual_seed(seed)  # a model without weights starts from --seed: every process builds the same teacher
    net, shape = load_model(model, weights, policy.input_shape, trust_pickle=trust_pickle)
    bundle = load_bundle(data, shape, net, model=model).to(compute.device, loader_workers=compute.loader_workers)
    pruned = apply_policy(
        net, policy, shape, criterion=criterion, data=bundle.train, seed=seed, model_name=model, compute=compute
    )
    ckpt = Path(checkpoint) if checkpoint is not None else checkpoint_path(out)
    if resume and ckpt is None:
        raise UserError("--resume needs --out (the checkpoint is kept beside it) or --checkpoint")
    # rank 0's recalibrated BatchNorm statistics reach the other ranks when DDP broadcasts its state
    before = evaluate_pruned(pruned, bundle, seed=seed, compute=compute) if world.main else {}
    log = finetune(
        pruned,
        bundle,
        epochs=epochs,
        lr=lr or DEFAULT_FINETUNE_LR,
        teacher=net if kd else None,
        batch_size=batch_size,
        seed=seed,
        on_step=on_step,
        compute=compute,
        world=world,
        checkpoint=ckpt,
        resume=resume,
    )
    if not world.main:
        return pruned, {}
    metrics = {
        "test_accuracy_before_finetune": before["test_accuracy"],
        "test_accuracy": accuracy(pruned, bundle.test, compute=compute),
        "held_out_accuracy": accuracy(pruned, bundle.held_out, compute=compute),
        "seconds": log.seconds,
        "images_per_second": log.images_per_second,
        "resumed_at_step": log.resumed_at_step,
        "steps": log.steps,
        "nproc": world.size,
        "compute": compute.describe(),
    }
    if out is not None:
        out = Path(out)
        save_pytorch(pruned, out, out.with_name(out.stem + "_state.pt"))
    return pruned, metrics


def checkpoint_path(out: str | Path | None) -> Path | None:
    """Where a fine-tune saving ``out`` keeps its per-epoch checkpoint: ``OUT.checkpoint.pt`` beside it."""
    return None if out is None else Path(out).with_name(Path(out).stem + ".checkpoint.pt")
