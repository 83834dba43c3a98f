"""Probes: the real operators a pruning policy changes, each as a tiny stand-alone model to time on the device.

NetAdapt's look-up table idea: every conv / linear layer's latency depends only on its input and output channel
counts once the rest of its configuration (kernel, stride, spatial size, batch) is fixed, so time it once per point
of a (c_in, c_out) grid and predict any policy by interpolation. A probe is a Conv (+ ReLU, which onnxruntime fuses
into it, as it fuses the BatchNorm that the exporter has already folded into the weights), a depthwise Conv, a
MatMul + bias, or a transformer's attention core, built directly as an ONNX graph.

Attention (:class:`autoprune.vit.HeadAttention`): its q, k, v and out_proj are linear probes; what lies between them,
``softmax(Q K^T / sqrt(d)) V`` with its head split and merge, has no weights and its time grows with the heads a block
keeps (tokens² x head width), which no linear probe holds. So it is a probe of its own on one axis, the head width
H*d (``c_in`` = ``c_out``, ``groups`` = H heads, ``h_in`` = ``w_in`` = tokens), measured at whole heads.

Probe weights are ``ConstantOfShape`` nodes: onnxruntime constant-folds them into initialisers at session creation
(so the NCHWc layout transform, which needs constant weights, still applies), and a probe file is a few hundred bytes
instead of megabytes, which is what makes shipping thousands of them to another device practical.

Two regimes per layer. onnxruntime's x86 NCHWc kernels need the input channels to be a multiple of the SIMD block
(16 with AVX-512, 8 with AVX2; fewer than a block is also fine) and pad the output channels up to one; other
channel counts fall back to im2col + GEMM, which is markedly slower. Latency as a function of c_in is therefore two
smooth curves, not one, so the grid measures both ("aligned" c_in values and "unaligned" ones) and prediction picks
the curve that the queried c_in is on. Measured on onnxruntime 1.31 with AVX-512: input channels that are a multiple
of 4 (``align``) or fewer than 16 are blocked, and blocked widths are padded up to 16 (``block``); both are detected
per device (:func:`autoprune.cost.table_build.detect_blocking`), and are 1 where the backend has no such layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from autoprune.errors import UserError
from autoprune.layers import LayerGraph
from autoprune.vit import HeadAttention

OPS = ("conv", "depthwise", "linear", "attention")
REGIMES = ("aligned", "unaligned")


@dataclass(frozen=True)
class ProbeSpec:
    """One operator configuration to time; equal specs are measured once and shared by every layer using them."""

    op: str  # conv | depthwise | linear | attention
    c_in: int
    c_out: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int  # attention: heads
    h_in: int  # attention: tokens (queries)
    w_in: int  # attention: tokens (keys)
    batch: int
    act: bool = True  # a ReLU after the conv (fused by onnxruntime, so it costs what the serving graph costs)

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.op == "linear":
            return (self.batch, self.c_in)
        if self.op == "attention":
            return (self.batch, self.h_in, self.c_in)
        return (self.batch, self.c_in, self.h_in, self.w_in)

    @property
    def probe_id(self) -> str:
        """A stable file-name-safe name (the probe's ONNX file is ``<probe_id>.onnx``)."""
        if self.op == "linear":
            return f"linear-b{self.batch}-i{self.c_in}-o{self.c_out}"
        if self.op == "attention":
            return f"attention-b{self.batch}-w{self.c_in}-h{self.groups}-t{self.h_in}"
        k, s, p, d = self.kernel, self.stride, self.padding, self.dilation
        return (
            f"{self.op}-b{self.batch}-i{self.c_in}-o{self.c_out}-k{k[0]}x{k[1]}-s{s[0]}x{s[1]}-p{p[0]}x{p[1]}"
            f"-d{d[0]}x{d[1]}-g{self.groups}-h{self.h_in}x{self.w_in}{'-relu' if self.act else ''}"
        )

    def onnx_bytes(self) -> bytes:
        """The probe as a serialised ONNX model (opset 17, input ``x``, output ``y``)."""
        from onnx import TensorProto, helper

        def const(name: str, shape: list[int]) -> tuple[list, list]:
            shape_t = helper.make_tensor(f"{name}_shape", TensorProto.INT64, [len(shape)], shape)
            node = helper.make_node(
                "ConstantOfShape",
                [f"{name}_shape"],
                [name],
                value=helper.make_tensor(f"{name}_value", TensorProto.FLOAT, [1], [0.01]),
            )
            return [node], [shape_t]

        nodes, inits = [], []
        if self.op == "attention":
            nodes, inits = self._attention_nodes()
        elif self.op == "linear":
            n, i = const("W", [self.c_in, self.c_out])
            nodes += n
            inits += i
            n, i = const("B", [self.c_out])
            nodes += n
            inits += i
            nodes.append(helper.make_node("MatMul", ["x", "W"], ["mm"]))
            nodes.append(helper.make_node("Add", ["mm", "B"], ["y"]))
        else:
            n, i = const("W", [self.c_out, self.c_in // self.groups, *self.kernel])
            nodes += n
            inits += i
            n, i = const("B", [self.c_out])
            nodes += n
            inits += i
            out = "c" if self.act else "y"
            nodes.append(
                helper.make_node(
                    "Conv",
                    ["x", "W", "B"],
                    [out],
                    kernel_shape=list(self.kernel),
                    strides=list(self.stride),
                    pads=[*self.padding, *self.padding],
                    dilations=list(self.dilation),
                    group=self.groups,
                )
            )
            if self.act:
                nodes.append(helper.make_node("Relu", ["c"], ["y"]))
        graph = helper.make_graph(
            nodes,
            "probe",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(self.input_shape))],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="autoprune")
        model.ir_version = 8  # readable by onnxruntime >= 1.14
        return model.SerializeToString()

    def _attention_nodes(self) -> tuple[list, list]:
        """``x`` (B, L, H*d) as queries, keys and values: split into heads, ``softmax(Q K^T * d^-1/2) V``, merged
        back; the nodes the exporter writes for :class:`~autoprune.vit.HeadAttention` between its projections."""
        from onnx import TensorProto, helper

        b, length, width, heads = self.batch, self.h_in, self.c_in, self.groups
        d = width // heads
        inits = [
            helper.make_tensor("split", TensorProto.INT64, [4], [b, length, heads, d]),
            helper.make_tensor("merge", TensorProto.INT64, [3], [b, length, width]),
            helper.make_tensor("scale", TensorProto.FLOAT, [], [d**-0.5]),
        ]
        nodes = [
            helper.make_node("Reshape", ["x", "split"], ["heads"]),
            helper.make_node("Transpose", ["heads"], ["q"], perm=[0, 2, 1, 3]),  # (B, H, L, d): queries, values
            helper.make_node("Transpose", ["heads"], ["kt"], perm=[0, 2, 3, 1]),  # (B, H, d, L): keys
            helper.make_node("MatMul", ["q", "kt"], ["logits"]),
            helper.make_node("Mul", ["logits", "scale"], ["scaled"]),
            helper.make_node("Softmax", ["scaled"], ["weights"], axis=-1),
            helper.make_node("MatMul", ["weights", "q"], ["attended"]),
            helper.make_node("Transpose", ["attended"], ["merged"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", ["merged", "merge"], ["y"]),
        ]
        return nodes, inits

    def torch_module(self) -> nn.Module:
        """The same operator as an eager PyTorch module (the torch backend times this)."""
        if self.op == "attention":
            return AttentionCore(self.groups).eval()
        if self.op == "linear":
            return nn.Linear(self.c_in, self.c_out).eval()
        conv = nn.Conv2d(self.c_in, self.c_out, self.kernel, self.stride, self.padding, self.dilation, self.groups)
        return (nn.Sequential(conv, nn.ReLU()) if self.act else conv).eval()


class AttentionCore(nn.Module):
    """The attention between the projections, on one input used as queries, keys and values (the torch probe)."""

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = x.unflatten(-1, (self.heads, -1)).transpose(1, 2)
        return F.scaled_dot_product_attention(qkv, qkv, qkv).transpose(1, 2).flatten(2)


@dataclass
class LayerPlan:
    """The grid one counted conv/linear layer is measured on, and which groups drive its channels."""

    layer: str
    row: int  # its row in ``graph.terms``
    op: str
    group: str  # groups whose kept count sets the layer's output channels ("+"-joined; "" when none)
    in_group: str  # groups that set its input channels
    base: ProbeSpec  # the layer at full width
    points: list[tuple[str, int, int]] = field(default_factory=list)  # (regime, c_in, c_out)

    def spec(self, c_in: int, c_out: int) -> ProbeSpec:
        groups = self.base.groups
        if self.op == "depthwise":
            groups = c_in
        elif self.op == "attention":  # whole heads of base.c_in // base.groups channels
            groups = c_in * self.base.groups // self.base.c_in
        return ProbeSpec(**{**self.base.__dict__, "c_in": c_in, "c_out": c_out, "groups": groups})


def is_aligned(c, block: int, align: int, op: str = "conv"):
    """Whether input channels ``c`` take the blocked (NCHWc) kernels: a multiple of ``align`` or, for dense convs,
    fewer than one ``block`` (read straight from the NCHW input)."""
    c = np.asarray(c)
    if op in ("linear", "attention") or block <= 1:
        return np.ones_like(c, dtype=bool)
    if op == "depthwise":
        return c % align == 0
    return (c % align == 0) | (c < block)


def effective_channels(c, block: int, aligned, pad: bool):
    """The width a blocked kernel really computes: ``c`` padded up to a whole block (``pad`` and ``aligned``)."""
    c = np.asarray(c, dtype=np.float64)
    if block <= 1:
        return c
    return np.where(np.asarray(aligned) & pad, np.ceil(c / block) * block, c)


def _subsample(values: list[int], n: int) -> list[int]:
    values = sorted(set(values))
    if len(values) <= n:
        return values
    idx = np.unique(np.round(np.linspace(0, len(values) - 1, n)).astype(int))
    return [values[i] for i in idx]


def _with_end(keep: list[int], values: list[int], hi: int) -> list[int]:
    if hi in values and hi not in keep:
        keep = sorted({*keep[:-1], hi})
    return keep


def channel_axes(lo: int, hi: int, block: int, align: int, n: int, op: str) -> dict[str, list[int]]:
    """Grid values of the input channels per regime, between the fewest channels a policy can leave (``lo``) and
    the full width (``hi``, always measured exactly). Aligned points sit on whole blocks (what a padded width costs);
    unaligned ones mid-block and odd, so they are unaligned for any power-of-two ``align``."""
    if lo >= hi:
        return {"aligned": [hi]} if bool(is_aligned(hi, block, align, op)) else {"unaligned": [hi]}
    step = max(block, 1)
    multiples = list(range(math.ceil(lo / step) * step, hi + 1, step))
    small = [c for c in (lo, step // 4, step // 2) if op == "conv" and lo <= c < step]
    axes: dict[str, list[int]] = {}
    aligned = [c for c in {lo, *small, *multiples, hi} if lo <= c <= hi and bool(is_aligned(c, block, align, op))]
    if aligned:
        axes["aligned"] = _with_end(_subsample(aligned, n), aligned, hi)
    if block > 1 and op != "linear":
        mid = [m - step // 2 - 1 for m in multiples] + [m + step // 2 + 1 for m in multiples[-1:]]
        unaligned = [c for c in {*mid, lo, hi} if lo <= c <= hi and not bool(is_aligned(c, block, align, op))]
        if unaligned:
            axes["unaligned"] = _with_end(_subsample(unaligned, n), unaligned, hi)
    return axes


def output_axis(lo: int, hi: int, block: int, n: int) -> list[int]:
    if lo >= hi:
        return [hi]
    step = max(block, 1)
    multiples = list(range(math.ceil(lo / step) * step, hi + 1, step))
    return sorted({*_subsample([lo, *multiples, hi], n), hi})


def _input_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[nn.Module, tuple[int, ...]]:
    shapes: dict[nn.Module, tuple[int, ...]] = {}

    def hook(module, inputs, _out) -> None:
        shapes.setdefault(module, tuple(inputs[0].shape))

    timed = (nn.Conv2d, nn.Linear, HeadAttention)
    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, timed)]
    try:
        with torch.no_grad():
            model.eval()(torch.randn(*input_shape))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def plan_layers(graph: LayerGraph, block: int, align: int, grid: int) -> list[LayerPlan]:
    """One :class:`LayerPlan` per conv/linear layer that runs in the forward pass, with its grid points."""
    if graph.model is None:
        raise ValueError("the graph has no model attached")
    modules = dict(graph.model.named_modules())
    windowed = next(
        (n for n, m in modules.items() if isinstance(m, HeadAttention) and type(m) is not HeadAttention), None
    )
    if windowed is not None:  # its window partition, shifts, bias and mask are no probe's: the table would miss them
        raise UserError(
            f"latency tables time a ViT's attention, not {type(modules[windowed]).__name__} ({windowed}): "
            f"use a flops or params budget for {graph.model_name}"
        )
    shapes = _input_shapes(graph.model, graph.input_shape)
    terms = graph.terms
    ones = np.ones(len(graph.groups))
    names = [g.name for g in graph.groups]
    plans: list[LayerPlan] = []
    seen: set[str] = set()
    for j, name in enumerate(terms.layer_names):
        m = modules.get(name)
        if not isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) or name in seen:
            continue
        seen.add(name)
        if isinstance(m, nn.modules.conv._ConvNd) and not isinstance(m, nn.Conv2d):
            raise UserError(
                f"latency tables support Conv2d and Linear layers; {name} is {type(m).__name__}: "
                "use a FLOPs budget for this model"
            )
        if m not in shapes:
            continue  # never executed
        shape = shapes[m]
        in_hi, out_hi = (
            round(float(terms.in_w[j] @ graph.channels + terms.in_c[j])),
            round(float(terms.out_w[j] @ graph.channels + terms.out_c[j])),
        )
        in_lo = max(1, math.ceil(float(terms.in_w[j] @ ones + terms.in_c[j]) - 1e-9))
        out_lo = max(1, math.ceil(float(terms.out_w[j] @ ones + terms.out_c[j]) - 1e-9))
        group = "+".join(names[i] for i in np.flatnonzero(terms.out_w[j]))
        in_group = "+".join(names[i] for i in np.flatnonzero(terms.in_w[j]))
        if isinstance(m, nn.Linear):
            batch = int(np.prod(shape[:-1]))
            base = ProbeSpec("linear", in_hi, out_hi, (1, 1), (1, 1), (0, 0), (1, 1), 1, 1, 1, batch, act=False)
            op = "linear"
        else:
            if isinstance(m.padding, str):
                raise UserError(f"{name} uses padding={m.padding!r}; latency tables need numeric conv padding")
            depthwise = m.groups > 1 and m.groups == m.in_channels and m.out_channels == m.in_channels
            op = "depthwise" if depthwise else "conv"
            base = ProbeSpec(
                op,
                in_hi,
                out_hi,
                tuple(m.kernel_size),
                tuple(m.stride),
                tuple(m.padding),
                tuple(m.dilation),
                m.groups,
                int(shape[2]),
                int(shape[3]),
                int(shape[0]),
            )
        plan = LayerPlan(name, j, op, group, in_group, base)
        if op == "depthwise":
            for regime, values in channel_axes(in_lo, in_hi, block, align, grid, op).items():
                plan.points += [(regime, c, c) for c in values]
        elif op == "conv" and m.groups > 1:  # grouped (not depthwise): autoprune leaves it at full width
            plan.points.append(("aligned" if bool(is_aligned(in_hi, block, align)) else "unaligned", in_hi, out_hi))
        else:
            outs = output_axis(out_lo, out_hi, block if op == "conv" else 1, grid)
            for regime, values in channel_axes(in_lo, in_hi, block, align, grid, op).items():
                plan.points += [(regime, ci, co) for ci in values for co in outs]
        plans.append(plan)
    plans += _attention_plans(graph, modules, shapes, grid)
    if not plans:
        raise UserError(f"{graph.model_name} has no Conv2d or Linear layer to build a latency table for")
    return plans


def _attention_plans(
    graph: LayerGraph, modules: dict[str, nn.Module], shapes: dict[nn.Module, tuple[int, ...]], grid: int
) -> list[LayerPlan]:
    """One plan per executed :class:`HeadAttention`: its core timed at whole heads, the width its q layer keeps."""
    terms, names = graph.terms, [g.name for g in graph.groups]
    rows = {n: j for j, n in reversed(list(enumerate(terms.layer_names)))}
    ones = np.ones(len(graph.groups))
    plans = []
    for name, m in modules.items():
        if type(m) is not HeadAttention or m not in shapes:
            continue
        j = rows[f"{name}.q"]  # the heads the block keeps are the rows its query layer keeps
        hi = round(float(terms.out_w[j] @ graph.channels + terms.out_c[j]))
        lo = max(m.head_dim, math.ceil(float(terms.out_w[j] @ ones + terms.out_c[j]) - 1e-9))
        batch, tokens = int(shapes[m][0]), int(shapes[m][1])
        base = ProbeSpec("attention", hi, hi, (1, 1), (1, 1), (0, 0), (1, 1), hi // m.head_dim, tokens, tokens, batch)
        group = "+".join(names[i] for i in np.flatnonzero(terms.out_w[j]))
        heads = _subsample(list(range(math.ceil(lo / m.head_dim), hi // m.head_dim + 1)), grid)
        plan = LayerPlan(name, j, "attention", group, group, base)
        plan.points = [("aligned", h * m.head_dim, h * m.head_dim) for h in heads]  # both ends included
        plans.append(plan)
    return plans


# a device's speed signature (:mod:`autoprune.cost.speed_signature`): four operators independent of any model
REFERENCE_PROBES = (
    ProbeSpec("conv", 64, 64, (3, 3), (1, 1), (1, 1), (1, 1), 1, 28, 28, 1),
    ProbeSpec("conv", 256, 256, (1, 1), (1, 1), (0, 0), (1, 1), 1, 14, 14, 1),
    ProbeSpec("depthwise", 144, 144, (3, 3), (1, 1), (1, 1), (1, 1), 144, 28, 28, 1),
    ProbeSpec("linear", 1024, 1000, (1, 1), (1, 1), (0, 0), (1, 1), 1, 1, 1, 1),
)
