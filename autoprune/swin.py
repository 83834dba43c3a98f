"""torchvision's Swin Transformer made prunable: explicit per-head window attention, its bias table held by the query.

torchvision's :class:`~torchvision.models.swin_transformer.ShiftedWindowAttention` calls ``F.linear`` on its packed
``qkv`` and ``proj`` weights inside one function that pads, rolls, partitions windows, attends and reverses it all.
Torch-Pruning then sees its ``relative_position_bias_table`` (one column per head) as an unwrapped parameter coupled
to the residual stream through the window reshapes, and its recursive channel inference over those reshapes neither
finishes nor fits in memory on ``swin_s``. The op counter never sees the projections (they are not called as modules),
so the attention costs nothing there.

:class:`WindowAttention` computes the same function as a :class:`~autoprune.vit.HeadAttention`: separate ``q``, ``k``,
``v`` (C -> H*d) and ``out_proj`` (H*d -> C), windows partitioned before the projections and reversed after them.
Torch-Pruning's graph then couples q's, k's and v's outputs and out_proj's inputs, one group of whole heads per block,
as in a ViT. The bias table lives on the query layer (a :class:`HeadQuery`, an ``nn.Linear``), so it is a wrapped
parameter, invisible to the graph, and :class:`HeadQueryPruner` (a Torch-Pruning customized pruner) drops its columns
with the query's heads. The MLP's hidden width is a group as in any network; stage widths (the residual streams that
PatchMerging changes) stay whole.

Counting. :class:`WindowAttention` is registered with the op counter by :func:`window_attention_flops`: per window of
N tokens, Torch-Pruning's ``nn.MultiheadAttention`` rule (:func:`autoprune.vit.attention_flops` with Lq = Lk = N),
times the windows; the bias and mask additions, like the rule's, are not counted. Analysis prices it with the same
coefficients (:mod:`autoprune.layers` treats it as a HeadAttention), so analytic equals counted.

V2 (:class:`WindowAttentionV2`): cosine attention with a per-head logit scale and a bias MLP (2 -> 512 -> H); the
query layer holds those too (the logit scale and the MLP's output rows are per head, its hidden layer is shared), and
the op counter's count of torchvision's bias MLP is added to the attention's (a constant plus a term per head).
torchvision keeps a key bias in its packed qkv bias but zeroes it in use: :class:`UnbiasedKey` keeps and ignores it.
The masked attention is one autograd node (:class:`_Attend`) during tracing and training, plain
``scaled_dot_product_attention`` under ``no_grad`` and in an ONNX export.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp
from torch_pruning.utils.op_counter import MODULES_MAPPING
from torchvision.models.swin_transformer import (
    PatchMerging,
    PatchMergingV2,
    ShiftedWindowAttention,
    ShiftedWindowAttentionV2,
    SwinTransformer,
)

from autoprune.vit import HeadAttention, attention_count


class HeadQuery(nn.Linear):
    """The query projection, also holding the attention's per-head parameters.

    V1: the relative position bias table (one column per head). V2: the per-head logit scale (H, 1, 1) and the bias
    MLP: its head-wide hidden layer (``cpb_w1``, ``cpb_b1``) and its output layer ``cpb_w2`` (one row per head).
    ``HEAD_DIMS`` names the per-head parameters and the dim their heads lie along.
    """

    HEAD_DIMS = {"relative_position_bias_table": 1, "logit_scale": 0, "cpb_w2": 0}

    def __init__(self, in_features: int, out_features: int, head_dim: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.head_dim = head_dim

    def head_params(self) -> list[tuple[str, nn.Parameter, int]]:
        return [(n, p, self.HEAD_DIMS[n]) for n, p in self.named_parameters(recurse=False) if n in self.HEAD_DIMS]

    def params_per_output(self) -> float:
        """The per-head parameters' count per output channel (a head's are ``head_dim`` channels)."""
        return sum(p.numel() / p.shape[dim] for _, p, dim in self.head_params()) / self.head_dim

    def shared_params(self) -> int:
        """Parameters other than the Linear's own and the per-head ones (V2's bias-MLP hidden layer)."""
        own = {"weight", "bias", *self.HEAD_DIMS}
        return sum(p.numel() for n, p in self.named_parameters(recurse=False) if n not in own)


class HeadQueryPruner(tp.pruner.function.LinearPruner):
    """Torch-Pruning's Linear pruner that also drops the per-head parameters of the heads whose rows it removes."""

    def prune_out_channels(self, layer: HeadQuery, idxs: list[int]) -> nn.Module:
        d, removed = layer.head_dim, set(idxs)
        heads = {i // d for i in removed}
        if any(h * d + j not in removed for h in heads for j in range(d)):
            raise ValueError(f"pruning rows {sorted(idxs)} of a query with heads of {d} would cut a head apart")
        for name, p, dim in layer.head_params():
            keep = torch.tensor([h for h in range(p.shape[dim]) if h not in heads], device=p.device)
            setattr(layer, name, nn.Parameter(p.data.index_select(dim, keep).clone(), requires_grad=p.requires_grad))
        return super().prune_out_channels(layer, idxs)


class UnbiasedKey(nn.Linear):
    """V2's key projection: torchvision keeps (and counts) a key bias in its packed qkv bias but zeroes it in use."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


CUSTOMIZED_PRUNERS = {HeadQuery: HeadQueryPruner()}


class _Attend(torch.autograd.Function):
    """Masked scaled dot-product attention as one autograd node (its backward recomputes it), so that Torch-Pruning's
    trace sees one operation joining q, k and v, as it does the fused kernel a ViT's unmasked attention runs."""

    @staticmethod
    def forward(ctx, q, k, v, mask, dropout_p: float, scale: float | None):  # noqa: ANN001, ANN205
        ctx.save_for_backward(q, k, v, mask)
        ctx.dropout_p, ctx.scale, ctx.cpu_rng = dropout_p, scale, torch.get_rng_state()
        ctx.cuda_rng = torch.cuda.get_rng_state(q.device) if q.is_cuda else None
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        inputs = [
            t.detach().requires_grad_(need) for t, need in zip(ctx.saved_tensors, ctx.needs_input_grad, strict=False)
        ]
        devices = [inputs[0].device] if ctx.cuda_rng is not None else []
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            torch.set_rng_state(ctx.cpu_rng)
            if ctx.cuda_rng is not None:
                torch.cuda.set_rng_state(ctx.cuda_rng, inputs[0].device)
            out = F.scaled_dot_product_attention(*inputs, dropout_p=ctx.dropout_p, scale=ctx.scale)
            wanted = [t for t in inputs if t.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, grad))
        return (*(next(grads) if t.requires_grad else None for t in inputs), None, None)


class WindowAttention(HeadAttention):
    """torchvision's (V1) shifted-window attention with one Linear per projection; input and output (B, H, W, C)."""

    def __init__(
        self,
        dim: int,
        window_size: list[int],
        shift_size: list[int],
        num_heads: int,
        head_dim: int,
        attention_dropout: float = 0.0,
        dropout: float = 0.0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
    ) -> None:
        super().__init__(dim, num_heads, head_dim, attention_dropout, bias=qkv_bias)
        self.window_size, self.shift_size, self.proj_dropout = list(window_size), list(shift_size), dropout
        rows = (2 * window_size[0] - 1) * (2 * window_size[1] - 1)
        self.q = HeadQuery(dim, num_heads * head_dim, head_dim, bias=qkv_bias)
        self.q.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))
        self.out_proj = nn.Linear(num_heads * head_dim, dim, bias=proj_bias)
        probe = ShiftedWindowAttention.__new__(ShiftedWindowAttention)
        nn.Module.__init__(probe)
        probe.window_size = self.window_size
        ShiftedWindowAttention.define_relative_position_index(probe)
        self.register_buffer("relative_position_index", probe.relative_position_index)

    @classmethod
    def from_shifted(cls, m: ShiftedWindowAttention) -> WindowAttention:
        c, h = m.qkv.in_features, m.num_heads
        new = cls(
            c, m.window_size, m.shift_size, h, c // h, m.attention_dropout, m.dropout,
            m.qkv.bias is not None, m.proj.bias is not None,
        )  # fmt: skip
        with torch.no_grad():
            for i, layer in enumerate((new.q, new.k, new.v)):
                layer.weight.copy_(m.qkv.weight[i * c : (i + 1) * c])
                if layer.bias is not None:
                    layer.bias.copy_(m.qkv.bias[i * c : (i + 1) * c])
            new.out_proj.weight.copy_(m.proj.weight)
            if new.out_proj.bias is not None:
                new.out_proj.bias.copy_(m.proj.bias)
            new._copy_position_bias(m)
        return new.to(m.qkv.weight.device).train(m.training)

    def _copy_position_bias(self, m: ShiftedWindowAttention) -> None:
        self.q.relative_position_bias_table.copy_(m.relative_position_bias_table)

    def position_bias(self) -> torch.Tensor:
        """(H, N, N): each head's relative position bias."""
        n = self.window_size[0] * self.window_size[1]
        table = self.q.relative_position_bias_table
        return table[self.relative_position_index].view(n, n, -1).permute(2, 0, 1)

    def position_flops(self) -> tuple[float, float]:
        """FLOPs per call of computing the position bias: (a constant, per query output channel)."""
        return 0.0, 0.0

    def scaled_query_key(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        """q and k as the attention's dot product takes them, and the scale it applies (None: 1/sqrt(d))."""
        return q, k, None

    def _geometry(self, h: int, w: int) -> tuple[int, int, list[int]]:
        ws = self.window_size
        pad_h, pad_w = (ws[0] - h % ws[0]) % ws[0], (ws[1] - w % ws[1]) % ws[1]
        shift = [0 if ws[0] >= h + pad_h else self.shift_size[0], 0 if ws[1] >= w + pad_w else self.shift_size[1]]
        return h + pad_h, w + pad_w, shift

    def _bias_and_mask(self, ph: int, pw: int, shift: list[int], like: torch.Tensor) -> torch.Tensor:
        """(nW, H, N, N): the relative position bias of each head plus, when shifted, torchvision's -100 mask."""
        ws = self.window_size
        n = ws[0] * ws[1]
        bias = self.position_bias()  # H, N, N
        nw = (ph // ws[0]) * (pw // ws[1])
        if sum(shift) == 0:
            return bias.unsqueeze(0)
        mask = like.new_zeros((ph, pw))
        count = 0
        for hs in ((0, -ws[0]), (-ws[0], -shift[0]), (-shift[0], None)):
            for wsl in ((0, -ws[1]), (-ws[1], -shift[1]), (-shift[1], None)):
                mask[hs[0] : hs[1], wsl[0] : wsl[1]] = count
                count += 1
        mask = mask.view(ph // ws[0], ws[0], pw // ws[1], ws[1]).permute(0, 2, 1, 3).reshape(nw, n)
        mask = mask.unsqueeze(1) - mask.unsqueeze(2)
        mask = mask.masked_fill(mask != 0, -100.0)
        return bias.unsqueeze(0) + mask.unsqueeze(1)

    def attend(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The attention within windows: ``x`` (B, nW, N, C) -> (B, nW, N, C), ``mask`` added to each head's logits
        (broadcast to (B, nW, H, N, N)); the projections and the output dropout included."""
        q, k, v = (proj(x).unflatten(-1, (-1, self.head_dim)).transpose(2, 3) for proj in (self.q, self.k, self.v))
        q, k, scale = self.scaled_query_key(q, k)
        drop = self.dropout if self.training else 0.0
        if torch.is_grad_enabled() and not torch.onnx.is_in_onnx_export():
            out = _Attend.apply(q, k, v, mask, drop, scale)  # B, nW, H, N, d
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop, scale=scale)
        out = self.out_proj(out.transpose(2, 3).flatten(3))
        return F.dropout(out, p=self.proj_dropout, training=self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        b, h, w, c = x.shape
        ws = self.window_size
        ph, pw, shift = self._geometry(h, w)
        x = F.pad(x, (0, 0, 0, pw - w, 0, ph - h))
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        nh, nw = ph // ws[0], pw // ws[1]
        # windows: (B, nW, N, C)
        x = x.view(b, nh, ws[0], nw, ws[1], c).permute(0, 1, 3, 2, 4, 5).reshape(b, nh * nw, ws[0] * ws[1], c)
        out = self.attend(x, self._bias_and_mask(ph, pw, shift, x))
        out = out.view(b, nh, nw, ws[0], ws[1], c).permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, c)
        if sum(shift) > 0:
            out = torch.roll(out, shifts=(shift[0], shift[1]), dims=(1, 2))
        return out[:, :h, :w, :].contiguous()


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """``F.normalize(x, dim=-1)`` without its ``expand_as``, whose index mapping loses Torch-Pruning's root indices."""
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-12)


class WindowAttentionV2(WindowAttention):
    """torchvision's V2 shifted-window attention: cosine attention with a per-head logit scale and a bias MLP."""

    HIDDEN = 512  # torchvision's bias-MLP width

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.k = UnbiasedKey(self.k.in_features, self.k.out_features, bias=self.k.bias is not None)
        heads, q = self.num_heads, self.q
        del q.relative_position_bias_table
        q.logit_scale = nn.Parameter(torch.zeros(heads, 1, 1))
        q.cpb_w1 = nn.Parameter(torch.zeros(self.HIDDEN, 2))
        q.cpb_b1 = nn.Parameter(torch.zeros(self.HIDDEN))
        q.cpb_w2 = nn.Parameter(torch.zeros(heads, self.HIDDEN))
        probe = ShiftedWindowAttentionV2.__new__(ShiftedWindowAttentionV2)
        nn.Module.__init__(probe)
        probe.window_size = self.window_size
        ShiftedWindowAttentionV2.define_relative_position_bias_table(probe)
        self.register_buffer("relative_coords_table", probe.relative_coords_table)

    def _copy_position_bias(self, m: ShiftedWindowAttention) -> None:
        self.q.logit_scale.copy_(m.logit_scale)
        self.q.cpb_w1.copy_(m.cpb_mlp[0].weight)
        self.q.cpb_b1.copy_(m.cpb_mlp[0].bias)
        self.q.cpb_w2.copy_(m.cpb_mlp[2].weight)

    def position_bias(self) -> torch.Tensor:
        q, n = self.q, self.window_size[0] * self.window_size[1]
        table = F.linear(F.relu(F.linear(self.relative_coords_table, q.cpb_w1, q.cpb_b1)), q.cpb_w2)
        bias = table.view(-1, q.cpb_w2.shape[0])[self.relative_position_index].view(n, n, -1).permute(2, 0, 1)
        return 16 * torch.sigmoid(bias)

    def position_flops(self) -> tuple[float, float]:
        """The op counter's count of torchvision's bias MLP (Linear 2->512 with its bias once, ReLU, 512->H)."""
        rows = float(self.relative_coords_table[0].shape[:-1].numel())
        return rows * 2 * self.HIDDEN + self.HIDDEN + rows * self.HIDDEN, rows * self.HIDDEN / self.head_dim

    def scaled_query_key(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        scale = torch.clamp(self.q.logit_scale, max=math.log(100.0)).exp()
        return _normalize(q) * scale, _normalize(k), 1.0


def window_attention_flops(m: WindowAttention, x: torch.Tensor) -> int:
    """The attention's FLOPs on ``x`` (B, H, W, C): per window of N tokens :func:`attention_flops`, times windows."""
    b, h, w, _ = x.shape
    ph, pw, _ = m._geometry(h, w)
    n = m.window_size[0] * m.window_size[1]
    windows = b * (ph // m.window_size[0]) * (pw // m.window_size[1])
    const, per_out = m.position_flops()
    return attention_count(m, n, n, n) * windows + int(round(const + per_out * m.q.out_features))


def _count_flops_hook(m: WindowAttention, inputs: tuple, output: object) -> None:
    m.__flops__ += window_attention_flops(m, inputs[0])


MODULES_MAPPING[WindowAttention] = MODULES_MAPPING[WindowAttentionV2] = _count_flops_hook


def explicit_swin_attention(model: nn.Module) -> int:
    """Replace, in place, every torchvision (V1) ``ShiftedWindowAttention`` by an equivalent
    :class:`WindowAttention`; returns how many were replaced."""
    found = [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) in (ShiftedWindowAttention, ShiftedWindowAttentionV2)
    ]
    for parent, name in found:
        child = getattr(parent, name)
        cls = WindowAttentionV2 if type(child) is ShiftedWindowAttentionV2 else WindowAttention
        setattr(parent, name, cls.from_shifted(child))
    return len(found)


def swin_stage_layers(model: nn.Module) -> list[nn.Module]:
    """The layers that set a Swin's stage widths (the patch embedding, each PatchMerging's reduction): left whole.

    A stage width is the residual stream of all its blocks, and PatchMerging concatenates four shifted copies of it
    before its norm, which Torch-Pruning's index mapping does not follow; the heads and MLP widths are the groups.
    """
    if not any(isinstance(m, WindowAttention) for m in model.modules()):
        return []
    layers = [m.reduction for m in model.modules() if isinstance(m, (PatchMerging, PatchMergingV2))]
    if isinstance(model, SwinTransformer):
        layers += [m for m in model.features[0].modules() if isinstance(m, nn.Conv2d)]
    return layers
