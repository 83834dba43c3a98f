"""torchvision's Vision Transformer made prunable: explicit per-head attention, and the widths it keeps in attributes.

``nn.MultiheadAttention`` ties the width of its queries, keys and values to its embedding width (one packed
``in_proj_weight`` of 3E x E and an ``out_proj`` of E x E), so Torch-Pruning can only shrink it together with the
residual stream, by the same channels in every block. :class:`HeadAttention` computes the same function with
separate ``q``, ``k``, ``v`` layers (E -> H*d) and an ``out_proj`` (H*d -> E). Torch-Pruning's dependency graph then
couples q's, k's and v's outputs and out_proj's inputs through the attention, one group per block, and a block
keeps as many heads as its q layer has rows of ``head_dim``: ``num_heads`` is read off the weights, so a pruned
copy needs no bookkeeping.

:func:`explicit_vit_attention` swaps it into every torchvision ``EncoderBlock`` (in place; the weights are copied, the
outputs are the same). Other ``nn.MultiheadAttention`` uses are left alone: only there is the module known to be
called as self-attention, on batch-first ``(x, x, x)``.

Its forward also reads the embedding width from ``VisionTransformer.hidden_dim`` (to reshape the patch embedding)
rather than from a weight: :func:`sync_vit_widths` sets it (and each block's ``num_heads``) after a surgery.

Counting. Torch-Pruning's op counter hooks ``nn.MultiheadAttention`` with a rule that counts the projections, the
query scaling, QK^T, the softmax and AV, and credits the module alone (it does not descend into a counted module).
:func:`attention_flops` is that rule written per projection layer, ``a*IN*OUT + b*OUT`` with IN and OUT the layer's
widths, so that it also holds when the head width H*d differs from E; :class:`HeadAttention` is registered with the
op counter under it (as Torch-Pruning registers timm's attention). The converted model therefore counts exactly what
the unconverted one did, a pruned one what it computes, and :mod:`autoprune.layers` prices it with the same
coefficients.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_pruning.utils.op_counter import MODULES_MAPPING
from torchvision.models.vision_transformer import Encoder, EncoderBlock, VisionTransformer

PROJECTIONS = ("q", "k", "v", "out_proj")


class HeadAttention(nn.Module):
    """Multi-head self-attention with one Linear per projection; batch-first, as torchvision's ViT calls it."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        width = num_heads * head_dim
        self.head_dim = head_dim
        self.dropout = dropout
        self.q = nn.Linear(embed_dim, width, bias=bias)
        self.k = nn.Linear(embed_dim, width, bias=bias)
        self.v = nn.Linear(embed_dim, width, bias=bias)
        self.out_proj = nn.Linear(width, embed_dim, bias=bias)

    @property
    def num_heads(self) -> int:
        return self.q.out_features // self.head_dim

    @classmethod
    def from_multihead(cls, mha: nn.MultiheadAttention) -> HeadAttention:
        """The same attention as ``mha`` (a batch-first self-attention with one packed projection)."""
        e = mha.embed_dim
        new = cls(e, mha.num_heads, mha.head_dim, mha.dropout, bias=mha.in_proj_bias is not None)
        with torch.no_grad():
            for i, layer in enumerate((new.q, new.k, new.v)):
                layer.weight.copy_(mha.in_proj_weight[i * e : (i + 1) * e])
                if layer.bias is not None:
                    layer.bias.copy_(mha.in_proj_bias[i * e : (i + 1) * e])
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if new.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        return new.to(mha.in_proj_weight.device).train(mha.training)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, None]:
        """``(output, None)`` like ``nn.MultiheadAttention(..., need_weights=False)``; positional q, k, v so that the
        op counter's hook sees them."""
        if need_weights:
            raise ValueError("HeadAttention does not return attention weights")
        # (B, L, H*d) -> (B, H, L, d); unflatten keeps the batch and length symbolic for the ONNX export
        q, k, v = (
            proj(x).unflatten(-1, (-1, self.head_dim)).transpose(1, 2)
            for proj, x in ((self.q, query), (self.k, key), (self.v, value))
        )
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).flatten(2)), None


def attention_flops(m: HeadAttention, q_len: int, k_len: int, v_len: int) -> dict[str, tuple[float, float]]:
    """Per example, ``{projection: (a, b)}`` such that the attention costs ``sum(a*IN*OUT + b*OUT)`` FLOPs over its
    four projection layers' input and output widths: Torch-Pruning's ``nn.MultiheadAttention`` rule.

    That rule counts ``L*E*E`` per projection, ``L*E`` per bias (it assumes out_proj has one, as torchvision's
    does; here a missing one costs nothing), ``Lq*E`` for scaling the queries and, per head, ``Lq*Lk*d`` for QK^T,
    ``Lq*Lk`` for the softmax and ``Lq*Lk*d`` for AV. With H heads of d the attention terms are linear in the head
    width W = H*d (the softmax's ``H*Lq*Lk`` is ``W*Lq*Lk/d``), so they join q's ``b``.
    """
    has = {p: float(getattr(m, p).bias is not None) for p in PROJECTIONS}
    return {
        "q": (q_len, q_len * (1.0 + has["q"]) + 2.0 * q_len * k_len + q_len * k_len / m.head_dim),
        "k": (k_len, k_len * has["k"]),
        "v": (v_len, v_len * has["v"]),
        "out_proj": (q_len, q_len * has["out_proj"]),
    }


def attention_count(m: HeadAttention, q_len: int, k_len: int, v_len: int) -> int:
    """The attention's FLOPs for one sequence (a ViT's example, a Swin's window, a MaxViT's partition) at the
    projections' current widths: :func:`attention_flops` summed. Exact: the coefficients are integers but for /d,
    whose terms add up to whole numbers."""
    terms = attention_flops(m, q_len, k_len, v_len)
    return int(
        round(
            sum(
                a * getattr(m, p).in_features * getattr(m, p).out_features + b * getattr(m, p).out_features
                for p, (a, b) in terms.items()
            )
        )
    )


def _count_flops_hook(m: HeadAttention, inputs: tuple, output: object) -> None:
    """The op counter's hook: the attention's FLOPs for this call's batch (see :func:`attention_flops`)."""
    query, key, value = inputs[:3]
    m.__flops__ += attention_count(m, query.shape[1], key.shape[1], value.shape[1]) * query.shape[0]


MODULES_MAPPING[HeadAttention] = _count_flops_hook


def _convertible(mha: object) -> bool:
    return (
        type(mha) is nn.MultiheadAttention
        and mha.batch_first
        and mha._qkv_same_embed_dim
        and mha.bias_k is None
        and not mha.add_zero_attn
    )


def explicit_vit_attention(model: nn.Module) -> int:
    """Replace, in place, the ``self_attention`` of every torchvision ViT encoder block by an equivalent
    :class:`HeadAttention`; returns how many were replaced."""
    blocks = [m for m in model.modules() if isinstance(m, EncoderBlock) and _convertible(m.self_attention)]
    for block in blocks:
        block.self_attention = HeadAttention.from_multihead(block.self_attention)
    return len(blocks)


# Parameters outside any layer (Torch-Pruning's "unwrapped" ones) that a torchvision ViT has: the class token (1, 1, E)
# and the position embedding (1, L, E). Torch-Pruning cuts an unwrapped parameter along its last dim, here the
# embedding width, which is right (tests/test_vit.py, the model zoo), so they need no check at analysis.
KNOWN_UNWRAPPED = ((VisionTransformer, "class_token"), (Encoder, "pos_embedding"))


def known_unwrapped(model: nn.Module) -> set[int]:
    """``id`` of every parameter of ``model`` in :data:`KNOWN_UNWRAPPED`."""
    return {id(getattr(m, attr)) for m in model.modules() for cls, attr in KNOWN_UNWRAPPED if isinstance(m, cls)}


def sync_vit_widths(model: nn.Module) -> None:
    """After channels were removed: the widths a ViT keeps in attributes, set from its weights."""
    for m in model.modules():
        if isinstance(m, VisionTransformer):
            m.hidden_dim = m.conv_proj.out_channels  # _process_input reshapes the patch embedding to it
        elif isinstance(m, EncoderBlock) and isinstance(m.self_attention, HeadAttention):
            m.num_heads = m.self_attention.num_heads  # not read by its forward: kept true for whoever reads it
