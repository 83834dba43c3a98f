"""What is done with a saved policy: apply it to a model, prune a named model by it, re-create the pruned model
from it, export it, fine-tune it."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

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
        raise UserError(
            f"--input-shape {given} is not the input {policy_path} was searched at ({searched}): only "
            f"the batch may differ; pass --input-shape {input_shape[0]}x{searched.partition('x')[2]}"
        )
    net, shape = load_model(model, weights, tuple(input_shape or policy.input_shape), trust_pickle=trust_pickle)
    bundle = load_bundle(data, shape, net) if data is not None else None
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
    policy = Policy.load(policy_path)
    net, shape = load_model(model, weights, policy.input_shape, trust_pickle=trust_pickle)
    bundle = load_bundle(data, shape, net)
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
