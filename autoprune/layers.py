"""Prunable channel groups, read off Torch-Pruning's DependencyGraph.

A *group* is a set of channels that must be removed together: the output channels of a conv, the matching input
channels of every layer that consumes them, the BatchNorm between, and — through residual adds, depthwise convs
and concatenations — every other layer coupled to them. One pruning decision (keep k of C channels) is made per
group. Torch-Pruning finds the groups; this module names them, orders them as the forward pass runs, and records
for every layer that Torch-Pruning's op counter counts how its cost depends on the groups' kept channels
(:class:`CostTerms`), so that :mod:`autoprune.cost` can price any policy without building it.

Cost model. Every counted layer's FLOPs (and params) is ``a*IN*OUT + b*OUT + c`` where IN and OUT are the layer's
input and output channel counts: a conv is bilinear in both, a depthwise conv, BatchNorm, activation or pooling is
linear in its channels. IN and OUT are affine in the groups' kept counts (a layer's channels can come from several
groups, as after a concatenation). The coefficients are collected during the same forward pass that Torch-Pruning
traces, with the counting rules of ``torch_pruning.utils.count_ops_and_params``, so the two agree exactly. An
attention (:mod:`autoprune.vit`) is one term per projection layer: its matrix products and softmax are linear in the
head width that layer's channels are, and the projections bilinear in their widths.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning.utils.op_counter import MODULES_MAPPING

from autoprune.errors import UserError
from autoprune.maxvit import explicit_maxvit_attention
from autoprune.swin import CUSTOMIZED_PRUNERS, HeadQuery, WindowAttention, explicit_swin_attention, swin_stage_layers
from autoprune.vit import HeadAttention, attention_flops, explicit_vit_attention, known_unwrapped

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)  # the layers whose output channels can root a group


@dataclass(frozen=True)
class LayerGroup:
    """One pruning decision: ``channels`` coupled units, of which a policy keeps some.

    A unit is one channel, except in a group of attention heads (kind ``"heads"``), whose unit is a whole head of
    ``unit`` = head_dim channels in each of q, k, v and out_proj: a head's channels only go together (the attention
    splits its width into heads of a fixed size), so the policy counts heads. The cost model is affine in units
    alike (a layer holding n of a group's channels gains ``n / channels`` per kept unit) and the pruner expands a
    removed unit into its channels (:meth:`unit_channels`).
    """

    index: int
    name: str  # name of the root module (the first conv/linear whose output channels form the group)
    kind: str  # "conv" | "depthwise" | "linear" | "heads"
    channels: int  # units: channels, or heads for kind "heads"
    members: tuple[str, ...]  # modules whose output channels are pruned with the group
    consumers: tuple[str, ...]  # modules whose input channels are pruned with the group
    c_in: int  # root's input channels
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    in_hw: tuple[int, ...]  # root's input spatial size
    flops: float  # FLOPs of the layers whose cost depends on this group, at full width
    params: int
    unit: int = 1  # channels per unit

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "channels": self.channels}

    def step(self, round_to: int) -> int:
        """``round_to`` counts channels: the fewest units whose channels are a multiple of it (one head of 64
        channels is a multiple of 8 already)."""
        return round_to // math.gcd(round_to, self.unit)

    def unit_channels(self, units: np.ndarray) -> np.ndarray:
        """The group's channels (Torch-Pruning's root indices) that make up ``units``."""
        units = np.asarray(units, dtype=np.int64)
        return (units[:, None] * self.unit + np.arange(self.unit)).reshape(-1)


@dataclass
class PruneStep:
    """One layer's share of a group's surgery: call ``handler(target, idxs)`` for the channels being removed.

    ``root_idxs[j]`` is the group channel that the layer's channel ``idxs[j]`` belongs to (they differ after a
    concatenation or split). ``pruning_dim`` is the dimension the handler cuts: Torch-Pruning's pruners are shared
    singletons whose ``pruning_dim`` it sets from the target node just before each call (e.g. dim 0 of ConvNeXt's
    (C, 1, 1) layer scale), so a replay must set it too.
    """

    target: object  # nn.Module, nn.Parameter, or a Torch-Pruning operation node's module
    handler: object
    idxs: list[int]
    root_idxs: list[int]
    pruning_dim: int = -1


@dataclass
class CostTerms:
    """Per-layer cost coefficients: ``cost = sum(a*IN*OUT + b*OUT) + const`` with IN/OUT affine in kept counts.

    ``in_w``/``out_w`` are (layers x groups) weights: channels a layer gains per kept channel of a group (1 when the
    layer sees the whole group); ``in_c``/``out_c`` the channels no group controls.
    """

    layer_names: list[str]
    in_w: np.ndarray
    in_c: np.ndarray
    out_w: np.ndarray
    out_c: np.ndarray
    flops_a: np.ndarray
    flops_b: np.ndarray
    params_a: np.ndarray
    params_b: np.ndarray
    flops_const: float
    params_const: float

    def layer_costs(self, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-layer (FLOPs, params) when each group keeps ``kept`` channels."""
        c_in = self.in_w @ kept + self.in_c
        c_out = self.out_w @ kept + self.out_c
        flops = self.flops_a * c_in * c_out + self.flops_b * c_out
        params = self.params_a * c_in * c_out + self.params_b * c_out
        return flops, params

    def totals(self, kept: np.ndarray) -> dict[str, float]:
        """``{"flops": ..., "params": ...}`` of the whole model when each group keeps ``kept`` channels."""
        flops, params = self.layer_costs(kept)
        return {"flops": float(flops.sum() + self.flops_const), "params": float(params.sum() + self.params_const)}


@dataclass
class LayerGraph:
    """The analysed model: its groups in forward order and the cost model over them."""

    model_name: str
    input_shape: tuple[int, ...]
    groups: list[LayerGroup]
    terms: CostTerms
    base_flops: float
    base_params: int
    ignored: list[str] = field(default_factory=list)
    # layers holding parameters Torch-Pruning has no pruner for (it guesses their channel dim): a pruner checks them
    unwrapped: list[str] = field(default_factory=list)
    # costs the analytic model cannot follow for this model (a custom layer's parameters): found by the pruner's check
    inexact: list[str] = field(default_factory=list)
    # The analysed model instance, Torch-Pruning's groups on it, and how to replay each group's surgery.
    model: nn.Module | None = field(default=None, repr=False)
    tp_groups: list = field(default_factory=list, repr=False)
    recipes: list[list[PruneStep]] = field(default_factory=list, repr=False)

    @property
    def fingerprint(self) -> str:
        return structure_fingerprint(self.groups)

    def group(self, name: str) -> LayerGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    @property
    def channels(self) -> np.ndarray:
        return np.array([g.channels for g in self.groups], dtype=np.int64)


def structure_fingerprint(groups: list[LayerGroup]) -> str:
    text = json.dumps([[g.name, g.channels] for g in groups], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def round_channels(channels: int, ratio: float, round_to: int = 1, floor: int = 1) -> int:
    """Keep-ratio -> kept channels: nearest multiple of ``round_to`` (or all of them), at least ``floor``."""
    k = int(round(channels * ratio))
    if round_to > 1:
        k = int(round(k / round_to)) * round_to
        k = max(k, min(round_to, channels))
    return int(min(channels, max(floor, k, 1)))


def _is_grouped(m: object) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and not _is_depthwise(m)


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.in_channels


def _is_channel_shuffle(node: tp.dependency.Node) -> bool:
    """Whether a Torch-Pruning node is a channel shuffle (``F.channel_shuffle``, ``nn.ChannelShuffle``).

    Torch-Pruning has no index mapping for it: ``DependencyGraph._trace_computational_graph`` takes its single
    ``ChannelShuffleBackward0`` node for an element-wise op and couples input channel i with output channel i, which
    the shuffle moves to another position. No coupling could be right: the shuffle (and ShuffleNetV2's split after
    it) place channels by their position, computed from the tensor's size at run time, so removing any channel
    re-routes the others. Groups whose channels pass through one are therefore not pruned.
    """
    grad_fn = node.grad_fn
    return grad_fn is not None and "channelshuffle" in grad_fn.name().lower()


_Call = tuple[torch.Size, torch.Size, object]  # one call of a layer: input shape, output shape, grad_fn of the output


class _Recorder:
    """Forward hooks on every counted layer, run inside Torch-Pruning's tracing pass."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.order: dict[nn.Module, int] = {}
        self.calls: dict[nn.Module, list[_Call]] = defaultdict(list)
        self.output = None

    def _hook(self, module: nn.Module, inputs, output) -> None:
        self.order.setdefault(module, len(self.order))
        out = output[0] if isinstance(output, tuple) else output
        if isinstance(out, torch.Tensor):
            inp = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else out
            self.calls[module].append((inp.shape, out.shape, out.grad_fn))

    def forward(self, model: nn.Module, example_inputs: torch.Tensor):
        hooks = [
            m.register_forward_hook(self._hook)
            for m in model.modules()
            if type(m) in MODULES_MAPPING or isinstance(m, _WEIGHTED)
        ]
        try:
            self.output = model(example_inputs)
        finally:
            for h in hooks:
                h.remove()
        return self.output


# Your own model: a factory (``--model pkg.mod:factory``) may set these attributes on the model it returns, and every
# command that rebuilds the model from the factory (search, prune, export, finetune) analyses it the same way.
CUSTOMIZED_PRUNERS_ATTR = "autoprune_customized_pruners"  # {layer type or instance: tp BasePruningFunc}
IGNORED_LAYERS_ATTR = "autoprune_ignored_layers"  # names of layers whose channels stay whole (not traced into)
OWN_MODEL_HELP = (
    f"in your factory set model.{CUSTOMIZED_PRUNERS_ATTR} = {{YourLayer: YourPruner()}} (a Torch-Pruning "
    f"BasePruningFunc) or model.{IGNORED_LAYERS_ATTR} = ['layer.name'] (README: Your own model)"
)


def user_ignored_layers(model: nn.Module) -> list[nn.Module]:
    """The layers the model's factory asked to leave whole (``autoprune_ignored_layers``), checked by name."""
    names = list(getattr(model, IGNORED_LAYERS_ATTR, None) or [])
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise UserError(
            f"{IGNORED_LAYERS_ATTR} names no layer {unknown[0]!r} of this model: use names from `autoprune info` or "
            f"model.named_modules() (e.g. {', '.join(list(modules)[1:4])})"
        )
    return [modules[n] for n in names]


def build_dependency_graph(
    model: nn.Module, example: torch.Tensor, ignored_layers: list[nn.Module]
) -> tuple[tp.DependencyGraph, _Recorder]:
    """Torch-Pruning's graph of ``model`` traced on ``example``, ``ignored_layers`` (the factory's) left untraced."""
    recorder = _Recorder(model)
    with torch.enable_grad():
        try:
            dg = tp.DependencyGraph().build_dependency(
                model,
                example,
                forward_fn=recorder.forward,
                # the window attention's own pruner (autoprune.swin), then what the model's factory registers
                customized_pruners={**CUSTOMIZED_PRUNERS, **(getattr(model, CUSTOMIZED_PRUNERS_ATTR, None) or {})},
                ignored_layers=ignored_layers,
                verbose=False,
            )
        except UserError:
            raise
        except Exception as e:
            near = _last_layer_before_failure(model, recorder)
            where = f" after layer {near!r}" if near else ""
            raise UserError(
                f"Torch-Pruning cannot trace this model{where} ({type(e).__name__}: {str(e)[:120]}): " + OWN_MODEL_HELP
            ) from e
    return dg, recorder


def _last_layer_before_failure(model: nn.Module, recorder: _Recorder) -> str | None:
    """The name of the last counted layer the tracing pass ran (the failure is in an operation after it)."""
    if not recorder.order:
        return None
    name_of = {m: n for n, m in model.named_modules()}
    return name_of.get(max(recorder.order, key=recorder.order.__getitem__))


def _unwrapped(dg: tp.DependencyGraph) -> list[nn.Parameter]:
    return [u.parameters for u in getattr(dg, "unwrapped_parameters", None) or []]


def _unknown_unwrapped(dg: tp.DependencyGraph, model: nn.Module) -> list[str]:
    """The modules owning parameters outside any layer whose pruning autoprune has not verified (a ViT's class
    token and position embedding it has: :data:`autoprune.vit.KNOWN_UNWRAPPED`)."""
    known = known_unwrapped(model)
    names = (dg._param_to_name.get(p) for p in _unwrapped(dg) if id(p) not in known)
    return sorted({name.rpartition(".")[0] or "(model)" for name in names if name})


def output_layers(dg: tp.DependencyGraph, recorder: _Recorder) -> list[nn.Module]:
    """Modules whose output channels are the network's output (the classifier): never pruned."""
    outs = recorder.output if isinstance(recorder.output, (tuple, list)) else [recorder.output]
    roots = {o.grad_fn for o in outs if isinstance(o, torch.Tensor)}
    found = [n.module for n in dg.module2node.values() if n.grad_fn in roots and isinstance(n.module, _WEIGHTED)]
    return found


def _channel_dim_size(shape: torch.Size, owned: int) -> int:
    """The channel count of an activation: dim 1 (NCHW) unless only the last dim (NHWC, NLC) fits ``owned``, or the
    last dim holds exactly ``owned`` and dim 1 does not (a MaxViT's (B, G, P, C) partitions, G > C)."""
    if len(shape) < 2:
        return int(shape[-1])
    if owned and shape[-1] == owned != shape[1]:
        return int(shape[-1])
    if shape[1] >= owned or shape[-1] < owned:
        return int(shape[1])
    return int(shape[-1])


def analyze(model: nn.Module, input_shape: tuple[int, ...], model_name: str = "model") -> LayerGraph:
    """Find the prunable groups of ``model`` and its cost model for inputs of ``input_shape``.

    A torchvision ViT's, Swin's or MaxViT's attention is first made explicit, in place
    (:func:`autoprune.vit.explicit_vit_attention`, :func:`autoprune.swin.explicit_swin_attention`,
    :func:`autoprune.maxvit.explicit_maxvit_attention`: the same outputs),
    so that each block's heads are a group; a Swin's stage widths are left whole
    (:func:`autoprune.swin.swin_stage_layers`).
    """
    explicit_vit_attention(model)
    explicit_swin_attention(model)
    explicit_maxvit_attention(model)
    example = torch.randn(*input_shape)
    users = user_ignored_layers(model)
    dg, rec = build_dependency_graph(model, example, users)
    name_of = {m: n for n, m in model.named_modules()}
    ignored = output_layers(dg, rec) + swin_stage_layers(model) + users
    rooted = _prunable_groups(dg, rec, ignored)
    groups, own = _describe_groups(dg, rec, rooted, name_of)
    terms = _cost_terms(model, rec, groups, own, name_of, input_shape[0])
    base_flops, base_params = tp.utils.count_ops_and_params(model, example)
    graph = LayerGraph(
        model_name,
        tuple(input_shape),
        _with_group_shares(groups, terms),
        terms,
        float(base_flops),
        int(base_params),
        [name_of[m] for m in ignored],
        _unknown_unwrapped(dg, model),
        model=model,
        tp_groups=[g for _, g in rooted],
        recipes=[_recipe(g) for _, g in rooted],
    )
    _check_reproduces_count(graph, base_flops, base_params)
    return graph


# --- Groups -----------------------------------------------------------------------------------------------------

_Owned = dict[int, int]  # group index -> how many of that group's channels a layer holds


@dataclass
class _Ownership:
    """Which groups' channels every layer holds, read off the groups' dependencies.

    Input and output channels are kept apart (a conv's differ). A parameter-free layer (relu, pooling) may run
    several times on different groups' channels, so its operation nodes are held per call of the module.
    """

    inputs: defaultdict[nn.Module, _Owned] = field(default_factory=lambda: defaultdict(dict))
    outputs: defaultdict[nn.Module, _Owned] = field(default_factory=lambda: defaultdict(dict))
    params: defaultdict[nn.Parameter, _Owned] = field(default_factory=lambda: defaultdict(dict))
    calls: defaultdict[tuple[nn.Module, int], _Owned] = field(default_factory=lambda: defaultdict(dict))

    def of_module(self, m: nn.Module) -> _Owned:
        """Input and output channels together, for a layer whose outputs are its inputs' channels."""
        return {**self.inputs.get(m, {}), **self.outputs.get(m, {})}


def _claim(table: defaultdict[Any, _Owned], key: object, gi: int, n: int) -> None:
    table[key][gi] = max(table[key].get(gi, 0), n)


def _prunable_groups(
    dg: tp.DependencyGraph, rec: _Recorder, ignored: list[nn.Module]
) -> list[tuple[nn.Module, tp.dependency.Group]]:
    """Torch-Pruning's groups that autoprune prunes, each with its root, in forward order of the roots.

    A group's root is the first layer to run of the conv/linear layers whose output channels it prunes.
    """
    rooted = []
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=_WEIGHTED):
        if any(dep.target.type == tp.ops.OPTYPE.OUTPUT for dep, _ in group):
            continue
        if any(_is_grouped(dep.target.module) for dep, _ in group):
            continue  # Torch-Pruning cannot keep grouped (non-depthwise) convs consistent: left at full width
        if any(_is_channel_shuffle(dep.target) for dep, _ in group):
            continue  # its channels are routed by position through a channel shuffle: left at full width
        executed = [
            dep.target.module
            for dep, _ in group
            if dg.is_out_channel_pruning_fn(dep.handler)
            and dep.target.module in rec.order
            and isinstance(dep.target.module, _WEIGHTED)
        ]
        if executed:
            rooted.append((min(executed, key=rec.order.__getitem__), group))
    rooted.sort(key=lambda rg: rec.order[rg[0]])
    return rooted


def _describe_groups(
    dg: tp.DependencyGraph,
    rec: _Recorder,
    rooted: list[tuple[nn.Module, tp.dependency.Group]],
    name_of: dict[nn.Module, str],
) -> tuple[list[LayerGroup], _Ownership]:
    """The groups as :class:`LayerGroup` (costs still zero) and which of their channels every layer holds."""
    call_of = {call[2]: (m, i) for m, calls in rec.calls.items() for i, call in enumerate(calls) if call[2] is not None}
    own = _Ownership()
    groups = []
    for gi, (root, group) in enumerate(rooted):
        members, consumers = _claim_channels(dg, group, gi, own, name_of, call_of)
        groups.append(_layer_group(gi, root, group, members, consumers, rec.calls[root][0][0], name_of))
    return groups, own


def _claim_channels(
    dg: tp.DependencyGraph,
    group: tp.dependency.Group,
    gi: int,
    own: _Ownership,
    name_of: dict[nn.Module, str],
    call_of: dict[object, tuple[nn.Module, int]],
) -> tuple[list[str], list[str]]:
    """Record in ``own`` how many of group ``gi``'s channels each layer holds.

    Returns the names of the group's conv/linear layers whose output channels it prunes (members; a depthwise
    conv's are its inputs too) and of those whose input channels only (consumers).
    """
    members, consumers = [], []
    for dep, idxs in group:
        m, n = dep.target.module, len(idxs)
        if isinstance(m, nn.Parameter):
            _claim(own.params, m, gi, n)
            continue
        if not isinstance(m, nn.Module) or m not in name_of:
            # an operation node (relu, pooling, add, ...): attribute it to the counted module call it came from
            call = call_of.get(dep.target.grad_fn)
            if call is not None:
                _claim(own.calls, call, gi, n)
            continue
        is_out = dg.is_out_channel_pruning_fn(dep.handler)
        is_in = dg.is_in_channel_pruning_fn(dep.handler)
        if not (is_out or is_in):  # a handler Torch-Pruning did not register as either (e.g. depthwise)
            is_out = is_in = True
        if is_out:
            _claim(own.outputs, m, gi, n)
        if is_in:
            _claim(own.inputs, m, gi, n)
        if isinstance(m, _WEIGHTED):
            if is_out or _is_depthwise(m):
                members.append(name_of[m])
            if is_in and not is_out:
                consumers.append(name_of[m])
    return members, consumers


def _layer_group(
    gi: int,
    root: nn.Module,
    group: tp.dependency.Group,
    members: list[str],
    consumers: list[str],
    in_shape: torch.Size,
    name_of: dict[nn.Module, str],
) -> LayerGroup:
    """Group ``gi`` described by its root layer (which ran first on an input of ``in_shape``)."""
    if isinstance(root, nn.modules.conv._ConvNd):
        kind, kernel, stride = "conv", tuple(root.kernel_size), tuple(root.stride)
        c_in, in_hw = root.in_channels, tuple(in_shape[2:])
    else:
        kind, kernel, stride, c_in, in_hw = "linear", (1,), (1,), root.in_features, ()
    if any(_is_depthwise(dep.target.module) for dep, _ in group if isinstance(dep.target.module, nn.Module)):
        kind = "depthwise"
    unit = _head_dim(group, members, name_of)
    if unit > 1:
        kind = "heads"
    return LayerGroup(
        gi,
        name_of[root],
        kind,
        len(group[0].idxs) // unit,
        tuple(dict.fromkeys(members)),
        tuple(dict.fromkeys(consumers)),
        c_in,
        kernel,
        stride,
        in_hw,
        flops=0.0,  # filled in by _with_group_shares once the cost terms are known
        params=0,
        unit=unit,
    )


def _head_dim(group: tp.dependency.Group, members: list[str], name_of: dict[nn.Module, str]) -> int:
    """A group that prunes the outputs of an attention's q, k, v is its heads: their head_dim, else 1.

    Torch-Pruning couples exactly q's, k's and v's outputs and out_proj's inputs, with the same indices; anything
    else coupled to them would be cut across heads, which the attention cannot be.
    """
    attentions = {
        a for a in name_of if isinstance(a, HeadAttention) for p in ("q", "k", "v") if name_of[getattr(a, p)] in members
    }
    if not attentions:
        return 1
    (attention, *others) = attentions
    expected = {f"{name_of[attention]}.{p}" for p in ("q", "k", "v")}
    if others or set(members) != expected or len(group[0].idxs) != attention.q.out_features:
        raise UserError(
            f"autoprune cannot prune the heads of {name_of[attention]}: Torch-Pruning couples them to "
            f"{', '.join(sorted(set(members) - expected)) or 'other channels'}, which would cut heads apart"
        )
    return attention.head_dim


def _recipe(group: tp.dependency.Group) -> list[PruneStep]:
    return [
        PruneStep(
            item.dep.target.module, item.dep.handler, list(item.idxs), list(item.root_idxs), item.dep.target.pruning_dim
        )
        for item in group
    ]


def _with_group_shares(groups: list[LayerGroup], terms: CostTerms) -> list[LayerGroup]:
    flops, params = _group_shares(terms, np.array([g.channels for g in groups], dtype=np.float64))
    return [replace(g, flops=float(flops[i]), params=int(params[i])) for i, g in enumerate(groups)]


def _check_reproduces_count(graph: LayerGraph, base_flops: float, base_params: int) -> None:
    """The analytic model must reproduce the unpruned model's count exactly, or it cannot be trusted."""
    c = graph.terms.totals(graph.channels.astype(np.float64))
    if abs(c["flops"] - base_flops) > 1e-6 * max(base_flops, 1) or abs(c["params"] - base_params) > 0.5:
        raise UserError(
            f"autoprune cannot account for the cost of {graph.model_name}: analytic {c['flops']:.0f} FLOPs / "
            f"{c['params']:.0f} params vs counted {base_flops:.0f} / {base_params}"
        )


# --- Cost terms -------------------------------------------------------------------------------------------------

_Affine = tuple[np.ndarray, float]  # a layer's channel count as ``w @ kept + c``

# The op counter's hooks that count the elements of a layer's input rather than of its output.
_INPUT_COUNTING_HOOKS = ("pool_flops_counter_hook", "bn_flops_counter_hook", "ln_flops_counter_hook")


class _Row(NamedTuple):
    """One cost term: ``flops_a*IN*OUT + flops_b*OUT`` FLOPs (params alike), IN and OUT affine in kept counts."""

    name: str
    c_in: _Affine
    c_out: _Affine
    flops_a: float
    flops_b: float
    params_a: float
    params_b: float


def _cost_terms(
    model: nn.Module,
    rec: _Recorder,
    groups: list[LayerGroup],
    own: _Ownership,
    name_of: dict[nn.Module, str],
    batch: int,
) -> CostTerms:
    """The cost model: a term for every layer the recorder saw, every loose parameter and every pruned module the
    op counter does not hook; the parameters of none of them are a constant."""
    channels = np.array([g.channels for g in groups], dtype=np.float64)
    # the op counter credits a layer it hooks with everything inside it (it does not descend into it), so a layer
    # within one (an attention's projections) has its parameters but not its FLOPs counted on its own
    nested = {c for m in model.modules() if type(m) in MODULES_MAPPING for c in m.modules() if c is not m}
    rows: list[_Row] = []
    for m, calls in rec.calls.items():
        if isinstance(m, HeadAttention):
            rows += _attention_rows(m, rec, own, name_of.get(m, "?"), channels, batch)
            continue
        layer_rows = _hooked_layer_rows(m, calls, own, name_of.get(m, "?"), channels, batch)
        rows += [r._replace(flops_a=0.0, flops_b=0.0) for r in layer_rows] if m in nested else layer_rows
    counted_ids = {id(p) for m in rec.calls for p in m.parameters(recurse=False)}
    rows += _loose_parameter_rows(own, counted_ids, channels)
    rows += _unhooked_module_rows(own, counted_ids, name_of, channels)
    params_const = float(sum(p.numel() for p in model.parameters() if id(p) not in counted_ids))
    return _stack_rows(rows, len(groups), params_const)


def _affine(owned: _Owned, total: int, channels: np.ndarray) -> _Affine:
    """``total`` channels of which ``owned[g]`` follow group g's kept count (out of its ``channels[g]``)."""
    w = np.zeros(len(channels))
    for gi, n in owned.items():
        w[gi] = n / channels[gi]
    return w, float(total - sum(owned.values()))


def _hooked_layer_rows(
    m: nn.Module, calls: list[_Call], own: _Ownership, name: str, channels: np.ndarray, batch: int
) -> list[_Row]:
    """The terms of one layer the recorder saw: one for a conv or linear layer (over all its calls), one per call for
    any other (its calls may see different groups)."""
    if isinstance(m, nn.modules.conv._ConvNd):
        row = (_depthwise_row if _is_depthwise(m) else _conv_row)(m, calls, own, name, channels, batch)
    elif isinstance(m, nn.Linear):
        row = _linear_row(m, calls, own, name, channels, batch)
    else:
        return _elementwise_rows(m, calls, own, name, channels, batch)
    if type(m) not in MODULES_MAPPING:  # a subclass the op counter does not hook: its params count, not its FLOPs
        row = row._replace(flops_a=0.0, flops_b=0.0)
    return [row]


def _positions(out_shape: torch.Size, batch: int) -> float:
    """Output positions of a conv call per example (a layer may run on a folded batch)."""
    return float(np.prod(out_shape[2:])) * out_shape[0] / batch


def _conv_row(
    m: nn.modules.conv._ConvNd, calls: list[_Call], own: _Ownership, name: str, channels: np.ndarray, batch: int
) -> _Row:
    k, has_bias = float(np.prod(m.kernel_size)), getattr(m, "bias", None) is not None
    f_a = f_b = 0.0
    for _, out_shape, _ in calls:
        hw = _positions(out_shape, batch)
        f_a += hw * k / m.groups
        f_b += hw * has_bias
    c_in = _affine(own.inputs.get(m, {}), m.in_channels, channels)
    c_out = _affine(own.outputs.get(m, {}), m.out_channels, channels)
    return _Row(name, c_in, c_out, f_a, f_b, k / m.groups, float(has_bias))


def _depthwise_row(
    m: nn.modules.conv._ConvNd, calls: list[_Call], own: _Ownership, name: str, channels: np.ndarray, batch: int
) -> _Row:
    # after pruning groups == channels: cost is linear in the channels
    k, has_bias = float(np.prod(m.kernel_size)), getattr(m, "bias", None) is not None
    f_b = 0.0
    for _, out_shape, _ in calls:
        hw = _positions(out_shape, batch)
        f_b += hw * k * m.weight.shape[1] + hw * has_bias
    c = _affine(own.of_module(m), m.out_channels, channels)
    return _Row(name, c, c, 0.0, f_b, 0.0, k * m.weight.shape[1] + has_bias)


def _linear_row(m: nn.Linear, calls: list[_Call], own: _Ownership, name: str, channels: np.ndarray, batch: int) -> _Row:
    has_bias = getattr(m, "bias", None) is not None
    f_a = 0.0
    for in_shape, _, _ in calls:
        f_a += float(np.prod(in_shape)) / m.in_features / batch  # rows of the input per example
    c_in = _affine(own.inputs.get(m, {}), m.in_features, channels)
    c_out = _affine(own.outputs.get(m, {}), m.out_features, channels)
    per_out = float(has_bias)
    if isinstance(m, HeadQuery):  # its per-head parameters (a Swin's bias table): so many per output channel
        per_out += m.params_per_output()
    return _Row(name, c_in, c_out, f_a, float(has_bias) * len(calls) / batch, 1.0, per_out)


def _elementwise_rows(
    m: nn.Module, calls: list[_Call], own: _Ownership, name: str, channels: np.ndarray, batch: int
) -> list[_Row]:
    """A layer whose cost is proportional to the channels of the tensor it sees, call by call (norm, activation,
    pooling); its parameters count once, in its first call's term."""
    affine = getattr(m, "affine", False) or getattr(m, "elementwise_affine", False)
    per_elem = 2.0 if isinstance(m, _NORM_TYPES) and affine else 1.0
    on_input = MODULES_MAPPING[type(m)].__name__ in _INPUT_COUNTING_HOOKS
    n_params = sum(p.numel() for p in m.parameters(recurse=False))
    module_owned = own.of_module(m)
    rows = []
    for i, (in_shape, out_shape, _) in enumerate(calls):
        owned = module_owned or own.calls.get((m, i), {})
        shape = in_shape if on_input else out_shape
        c = _channel_dim_size(shape, sum(owned.values()))
        aff = _affine(owned, c, channels)
        f = float(np.prod(shape)) / c / batch * per_elem
        rows.append(_Row(name, aff, aff, 0.0, f, 0.0, n_params / c if i == 0 else 0.0))
    return rows


def _attention_rows(
    m: HeadAttention, rec: _Recorder, own: _Ownership, name: str, channels: np.ndarray, batch: int
) -> list[_Row]:
    """The FLOPs of an explicit attention (:func:`autoprune.vit.attention_flops`), one term per projection
    layer over that layer's widths, call by call; the projections' own terms hold their parameters."""
    rows = []
    for i, (q_shape, _, _) in enumerate(rec.calls[m]):
        lengths = [rec.calls[getattr(m, p)][i][0][-2] for p in ("q", "k", "v")]
        per_call = q_shape[0] / batch
        if isinstance(m, WindowAttention):  # (B, H, W, C) attended in windows of N tokens: per window, times windows
            per_call = rec.calls[m.q][i][0][:-2].numel() / batch
        for p, (a, b) in attention_flops(m, *lengths).items():
            layer = getattr(m, p)
            c_in = _affine(own.inputs.get(layer, {}), layer.in_features, channels)
            c_out = _affine(own.outputs.get(layer, {}), layer.out_features, channels)
            rows.append(_Row(name, c_in, c_out, a * per_call, b * per_call, 0.0, 0.0))
        if isinstance(m, WindowAttention):  # its position bias, computed once a call: per head, and shared
            const, per_out = m.position_flops()
            c_out = _affine(own.outputs.get(m.q, {}), m.q.out_features, channels)
            rows.append(_Row(name, c_out, c_out, 0.0, per_out / batch, 0.0, 0.0))
            rows.append(_Row(name, _affine({}, 1, channels), _affine({}, 1, channels), 0.0, const / batch, 0.0, 0.0))
    if isinstance(m, WindowAttention):
        one = _affine({}, 1, channels)
        rows.append(_Row(name, one, one, 0.0, 0.0, 0.0, float(m.q.shared_params())))
    return rows


def _loose_parameter_rows(own: _Ownership, counted_ids: set[int], channels: np.ndarray) -> list[_Row]:
    """Unwrapped parameters (e.g. ConvNeXt's layer scale) scale with the group that owns their channels.

    Adds the parameters it prices to ``counted_ids``.
    """
    rows = []
    for p, owned in own.params.items():
        if id(p) in counted_ids:
            continue
        counted_ids.add(id(p))
        total = sum(owned.values())
        aff = _affine(owned, total, channels)
        rows.append(_Row("<parameter>", aff, aff, 0.0, 0.0, 0.0, p.numel() / total))
    return rows


def _unhooked_module_rows(
    own: _Ownership, counted_ids: set[int], name_of: dict[nn.Module, str], channels: np.ndarray
) -> list[_Row]:
    """A pruned module the op counter does not hook (e.g. torchvision's LayerNorm2d, a LayerNorm subclass, in
    ConvNeXt) costs no FLOPs but loses parameters with its channels: per-channel (1-D) ones scale with the groups.

    Adds the parameters it prices to ``counted_ids``.
    """
    rows = []
    for m in {**own.inputs, **own.outputs}:
        ps = list(m.parameters(recurse=False))
        if not ps or any(id(p) in counted_ids for p in ps) or any(p.dim() != 1 or len(p) != len(ps[0]) for p in ps):
            continue
        aff = _affine(own.of_module(m), len(ps[0]), channels)
        rows.append(_Row(name_of.get(m, "?"), aff, aff, 0.0, 0.0, 0.0, sum(p.numel() for p in ps) / len(ps[0])))
        counted_ids.update(id(p) for p in ps)
    return rows


def _stack_affine(affines: list[_Affine], n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    if not affines:
        return np.zeros((0, n_groups)), np.zeros(0)
    return np.stack([w for w, _ in affines]), np.array([c for _, c in affines])


def _stack_rows(rows: list[_Row], n_groups: int, params_const: float) -> CostTerms:
    in_w, in_c = _stack_affine([r.c_in for r in rows], n_groups)
    out_w, out_c = _stack_affine([r.c_out for r in rows], n_groups)
    return CostTerms(
        [r.name for r in rows],
        in_w,
        in_c,
        out_w,
        out_c,
        np.array([r.flops_a for r in rows]),
        np.array([r.flops_b for r in rows]),
        np.array([r.params_a for r in rows]),
        np.array([r.params_b for r in rows]),
        0.0,
        params_const,
    )


def _group_shares(terms: CostTerms, channels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FLOPs and params of the layers each group touches (a layer shared by two groups counts for both)."""
    touches = ((np.abs(terms.in_w) + np.abs(terms.out_w)) > 0).astype(np.float64)
    flops, params = terms.layer_costs(channels)
    return flops @ touches, params @ touches
