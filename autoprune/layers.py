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
traces, with the counting rules of ``torch_pruning.utils.count_ops_and_params``, so the two agree exactly.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning.utils.op_counter import MODULES_MAPPING

from autoprune.errors import UserError

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)


@dataclass(frozen=True)
class LayerGroup:
    """One pruning decision: ``channels`` coupled channels, of which a policy keeps some."""

    index: int
    name: str  # name of the root module (the first conv/linear whose output channels form the group)
    kind: str  # "conv" | "depthwise" | "linear"
    channels: int
    members: tuple[str, ...]  # modules whose output channels are pruned with the group
    consumers: tuple[str, ...]  # modules whose input channels are pruned with the group
    c_in: int  # root's input channels
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    in_hw: tuple[int, ...]  # root's input spatial size
    flops: float  # FLOPs of the layers whose cost depends on this group, at full width
    params: int

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "channels": self.channels}


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


class _Recorder:
    """Forward hooks on every counted layer, run inside Torch-Pruning's tracing pass."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.order: dict[nn.Module, int] = {}
        # per call: (input shape, output shape, grad_fn of the output)
        self.calls: dict[nn.Module, list[tuple[torch.Size, torch.Size, object]]] = defaultdict(list)
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
            if type(m) in MODULES_MAPPING or isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
        ]
        try:
            self.output = model(example_inputs)
        finally:
            for h in hooks:
                h.remove()
        return self.output


def build_dependency_graph(model: nn.Module, example: torch.Tensor) -> tuple[tp.DependencyGraph, _Recorder]:
    recorder = _Recorder(model)
    with torch.enable_grad():
        try:
            dg = tp.DependencyGraph().build_dependency(model, example, forward_fn=recorder.forward, verbose=False)
        except Exception as e:
            raise UserError(f"Torch-Pruning cannot trace this model ({type(e).__name__}: {e})") from e
    return dg, recorder


def output_layers(dg: tp.DependencyGraph, recorder: _Recorder) -> list[nn.Module]:
    """Modules whose output channels are the network's output (the classifier): never pruned."""
    outs = recorder.output if isinstance(recorder.output, (tuple, list)) else [recorder.output]
    roots = {o.grad_fn for o in outs if isinstance(o, torch.Tensor)}
    found = [
        n.module
        for n in dg.module2node.values()
        if n.grad_fn in roots and isinstance(n.module, (nn.modules.conv._ConvNd, nn.Linear))
    ]
    return found


def _channel_dim_size(shape: torch.Size, owned: int) -> int:
    """The channel count of an activation: dim 1 (NCHW) unless only the last dim (NHWC, NLC) fits ``owned``."""
    if len(shape) < 2:
        return int(shape[-1])
    if shape[1] >= owned or shape[-1] < owned:
        return int(shape[1])
    return int(shape[-1])


def analyze(model: nn.Module, input_shape: tuple[int, ...], model_name: str = "model") -> LayerGraph:
    """Find the prunable groups of ``model`` and its cost model for inputs of ``input_shape``."""
    example = torch.randn(*input_shape)
    dg, rec = build_dependency_graph(model, example)
    name_of = {m: n for n, m in model.named_modules()}
    ignored = output_layers(dg, rec)
    batch = input_shape[0]

    # Groups, in forward order of their root.
    raw = []
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=(nn.modules.conv._ConvNd, nn.Linear)):
        if any(dep.target.type == tp.ops.OPTYPE.OUTPUT for dep, _ in group):
            continue
        if any(_is_grouped(dep.target.module) for dep, _ in group):
            continue  # Torch-Pruning cannot keep grouped (non-depthwise) convs consistent: left at full width
        executed = [
            dep.target.module
            for dep, _ in group
            if dg.is_out_channel_pruning_fn(dep.handler)
            and dep.target.module in rec.order
            and isinstance(dep.target.module, (nn.modules.conv._ConvNd, nn.Linear))
        ]
        if not executed:
            continue
        raw.append((min(executed, key=rec.order.__getitem__), group))
    raw.sort(key=lambda rg: rec.order[rg[0]])

    # a parameter-free layer (relu, pooling) may run several times on different groups' channels: one term per call
    gradfn_to_call = {
        call[2]: (m, i) for m, calls in rec.calls.items() for i, call in enumerate(calls) if call[2] is not None
    }
    # ownership[module] -> {group index: channels}, separately for input and output channels
    own_in: dict[nn.Module, dict[int, int]] = defaultdict(dict)
    own_out: dict[nn.Module, dict[int, int]] = defaultdict(dict)
    own_param: dict[nn.Parameter, dict[int, int]] = defaultdict(dict)
    own_call: dict[tuple[nn.Module, int], dict[int, int]] = defaultdict(dict)
    groups: list[LayerGroup] = []
    recipes: list[list[PruneStep]] = []
    for gi, (root, group) in enumerate(raw):
        channels = len(group[0].idxs)
        members, consumers = [], []
        recipe = []
        for item in group:
            dep, idxs = item.dep, item.idxs
            recipe.append(
                PruneStep(dep.target.module, dep.handler, list(idxs), list(item.root_idxs), dep.target.pruning_dim)
            )
            target = dep.target
            m = target.module
            n = len(idxs)
            if isinstance(m, nn.Parameter):
                own_param[m][gi] = max(own_param[m].get(gi, 0), n)
                continue
            if not isinstance(m, nn.Module) or m not in name_of:
                # an operation node (relu, pooling, add, ...): attribute it to the counted module it came from
                call = gradfn_to_call.get(target.grad_fn)
                if call is not None:
                    own_call[call][gi] = max(own_call[call].get(gi, 0), n)
                continue
            is_out = dg.is_out_channel_pruning_fn(dep.handler)
            is_in = dg.is_in_channel_pruning_fn(dep.handler)
            if not (is_out or is_in):  # a handler Torch-Pruning did not register as either (e.g. depthwise)
                is_out = is_in = True
            if is_out:
                own_out[m][gi] = max(own_out[m].get(gi, 0), n)
            if is_in:
                own_in[m][gi] = max(own_in[m].get(gi, 0), n)
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
                if is_out or _is_depthwise(m):
                    members.append(name_of[m])
                if is_in and not is_out:
                    consumers.append(name_of[m])
        in_shape = rec.calls[root][0][0]
        if isinstance(root, nn.modules.conv._ConvNd):
            kind = "conv"
            kernel, stride = tuple(root.kernel_size), tuple(root.stride)
            c_in, in_hw = root.in_channels, tuple(in_shape[2:])
        else:
            kind, kernel, stride, c_in, in_hw = "linear", (1,), (1,), root.in_features, ()
        if any(_is_depthwise(dep.target.module) for dep, _ in group if isinstance(dep.target.module, nn.Module)):
            kind = "depthwise"
        groups.append(
            LayerGroup(
                gi,
                name_of[root],
                kind,
                channels,
                tuple(dict.fromkeys(members)),
                tuple(dict.fromkeys(consumers)),
                c_in,
                kernel,
                stride,
                in_hw,
                0.0,
                0,
            )
        )
        recipes.append(recipe)

    terms = _cost_terms(model, rec, groups, own_in, own_out, own_param, own_call, name_of, batch)
    base_flops, base_params = tp.utils.count_ops_and_params(model, example)
    flops_by_group, params_by_group = _group_shares(terms, np.array([g.channels for g in groups], dtype=np.float64))
    groups = [
        LayerGroup(**{**g.__dict__, "flops": float(flops_by_group[i]), "params": int(params_by_group[i])})
        for i, g in enumerate(groups)
    ]
    lg = LayerGraph(
        model_name,
        tuple(input_shape),
        groups,
        terms,
        float(base_flops),
        int(base_params),
        [name_of[m] for m in ignored],
        model=model,
        tp_groups=[g for _, g in raw],
        recipes=recipes,
    )
    c = terms.totals(lg.channels.astype(np.float64))
    if abs(c["flops"] - base_flops) > 1e-6 * max(base_flops, 1) or abs(c["params"] - base_params) > 0.5:
        raise UserError(  # the analytic model must reproduce the unpruned model exactly, or it cannot be trusted
            f"autoprune cannot account for the cost of {model_name}: analytic {c['flops']:.0f} FLOPs / "
            f"{c['params']:.0f} params vs counted {base_flops:.0f} / {base_params}"
        )
    return lg


def _cost_terms(model, rec, groups, own_in, own_out, own_param, own_call, name_of, batch) -> CostTerms:
    n_groups = len(groups)
    channels = np.array([g.channels for g in groups], dtype=np.float64)
    names, rows_in, rows_out, fa, fb, pa, pb = [], [], [], [], [], [], []
    counted_params = 0

    def affine(owned: dict[int, int], total: int) -> tuple[np.ndarray, float]:
        w = np.zeros(n_groups)
        for gi, n in owned.items():
            w[gi] = n / channels[gi]
        return w, float(total - sum(owned.values()))

    def emit(name, in_aff, out_aff, f_a, f_b, p_a, p_b) -> None:
        names.append(name)
        rows_in.append(in_aff)
        rows_out.append(out_aff)
        fa.append(f_a)
        fb.append(f_b)
        pa.append(p_a)
        pb.append(p_b)

    for m, calls in rec.calls.items():
        if type(m) not in MODULES_MAPPING and not isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            continue
        counted = type(m) in MODULES_MAPPING
        f_a = f_b = 0.0
        p_a = p_b = 0.0
        has_bias = getattr(m, "bias", None) is not None
        if isinstance(m, nn.modules.conv._ConvNd):
            c_in, c_out, k = m.in_channels, m.out_channels, float(np.prod(m.kernel_size))
            if _is_depthwise(m):  # after pruning groups == channels: cost is linear in the channels
                for _, out_shape, _ in calls:
                    hw = float(np.prod(out_shape[2:])) * out_shape[0] / batch
                    f_b += hw * k * m.weight.shape[1] + hw * has_bias
                p_b = k * m.weight.shape[1] + has_bias
                owned = {**own_in.get(m, {}), **own_out.get(m, {})}
                in_w, in_c = affine(owned, c_out)
                out_w, out_c = in_w, in_c
            else:
                for _, out_shape, _ in calls:
                    hw = float(np.prod(out_shape[2:])) * out_shape[0] / batch
                    f_a += hw * k / m.groups
                    f_b += hw * has_bias
                p_a, p_b = k / m.groups, float(has_bias)
                in_w, in_c = affine(own_in.get(m, {}), c_in)
                out_w, out_c = affine(own_out.get(m, {}), c_out)
        elif isinstance(m, nn.Linear):
            for in_shape, _, _ in calls:
                rows = float(np.prod(in_shape)) / m.in_features / batch
                f_a += rows
            f_b = float(has_bias) * len(calls) / batch
            p_a, p_b = 1.0, float(has_bias)
            in_w, in_c = affine(own_in.get(m, {}), m.in_features)
            out_w, out_c = affine(own_out.get(m, {}), m.out_features)
        else:  # cost proportional to the channels of the tensor it sees, call by call
            module_owned = {**own_in.get(m, {}), **own_out.get(m, {})}
            per_elem = (
                2.0
                if (
                    isinstance(m, _NORM_TYPES)
                    and (getattr(m, "affine", False) or getattr(m, "elementwise_affine", False))
                )
                else 1.0
            )
            on_input = MODULES_MAPPING[type(m)].__name__ in (
                "pool_flops_counter_hook",
                "bn_flops_counter_hook",
                "ln_flops_counter_hook",
            )
            n_params = sum(p.numel() for p in m.parameters(recurse=False))
            for i, (in_shape, out_shape, _) in enumerate(calls):
                owned = module_owned or own_call.get((m, i), {})
                shape = in_shape if on_input else out_shape
                c = _channel_dim_size(shape, sum(owned.values()))
                w, const = affine(owned, c)
                f = float(np.prod(shape)) / c / batch * per_elem if counted else 0.0
                emit(name_of.get(m, "?"), (w, const), (w, const), 0.0, f, 0.0, n_params / c if i == 0 else 0.0)
            counted_params += n_params
            continue
        if not counted:
            f_a = f_b = 0.0
        counted_params += sum(p.numel() for p in m.parameters(recurse=False))
        emit(name_of.get(m, "?"), (in_w, in_c), (out_w, out_c), f_a, f_b, p_a, p_b)

    # Unwrapped parameters (e.g. ConvNeXt's layer scale) scale with the group that owns their channels.
    counted_ids = {id(p) for m in rec.calls for p in m.parameters(recurse=False)}
    for p, owned in own_param.items():
        if id(p) in counted_ids:
            continue
        counted_ids.add(id(p))
        total = sum(owned.values())
        w, c = affine(owned, total)
        emit("<parameter>", (w, c), (w, c), 0.0, 0.0, 0.0, p.numel() / total)
        counted_params += p.numel()
    # A pruned module the op counter does not hook (e.g. torchvision's LayerNorm2d, a LayerNorm subclass, in
    # ConvNeXt) costs no FLOPs but loses parameters with its channels: per-channel (1-D) ones scale with the groups.
    for m in {**own_in, **own_out}:
        ps = list(m.parameters(recurse=False))
        if not ps or any(id(p) in counted_ids for p in ps) or any(p.dim() != 1 or len(p) != len(ps[0]) for p in ps):
            continue
        w, c = affine({**own_in.get(m, {}), **own_out.get(m, {})}, len(ps[0]))
        emit(name_of.get(m, "?"), (w, c), (w, c), 0.0, 0.0, 0.0, sum(p.numel() for p in ps) / len(ps[0]))
        counted_ids.update(id(p) for p in ps)
    params_const = float(sum(p.numel() for p in model.parameters() if id(p) not in counted_ids))

    def stack(rows):
        if not rows:
            return np.zeros((0, n_groups)), np.zeros(0)
        return np.stack([r[0] for r in rows]), np.array([r[1] for r in rows])

    in_w, in_c = stack(rows_in)
    out_w, out_c = stack(rows_out)
    return CostTerms(
        names, in_w, in_c, out_w, out_c, np.array(fa), np.array(fb), np.array(pa), np.array(pb), 0.0, params_const
    )


def _group_shares(terms: CostTerms, channels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FLOPs and params of the layers each group touches (a layer shared by two groups counts for both)."""
    touches = ((np.abs(terms.in_w) + np.abs(terms.out_w)) > 0).astype(np.float64)
    flops, params = terms.layer_costs(channels)
    return flops @ touches, params @ touches
