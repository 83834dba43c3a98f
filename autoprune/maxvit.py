"""torchvision's MaxViT made prunable: its partition attention made explicit per head, as a Swin's window attention.

torchvision's :class:`~torchvision.models.maxvit.RelativePositionalMultiHeadAttention` projects with one packed
``to_qkv`` (C -> 3*H*d), ``torch.chunk``\\ s it into q, k and v, reshapes and permutes them into heads and multiplies
them with ``einsum``. Torch-Pruning's dependency graph follows the chunk's split index mapping and then the reshapes
of the einsums (which it does not map: each view that changes the channel count gets a flatten mapping of its size
ratio), so the group rooted at a ``to_qkv`` spreads to tens of thousands of indices over hundreds of operation nodes
and ``get_all_groups`` does not finish on ``maxvit_t`` (it was still on the last block's to_qkv after 150 s on one
core, 98,496 indices at a node, and the model zoo's 420 s ran out).

:class:`PartitionAttention` computes the same function as a :class:`~autoprune.swin.WindowAttention` whose windows
torchvision has already cut out: separate ``q``, ``k``, ``v`` (C -> H*d) and ``out_proj`` (H*d -> C, torchvision's
``merge``) on the (B, G, P, C) partitions, the relative position bias table (one column per head) held by the query
layer (a :class:`~autoprune.swin.HeadQuery`, whose customized pruner drops a head's column with its rows), and
torchvision's logit scale ``C**-0.5`` (of the *stage* width, not of the head width) kept as a constant, so that a
pruned block computes what torchvision's would with its remaining heads. Torch-Pruning's graph then couples q's, k's
and v's outputs and out_proj's inputs through one attention node, one group of whole heads per attention, as in a ViT
or a Swin.

Stage widths stay prunable. Unlike a Swin's PatchMerging (a concatenation of four shifted copies, which Torch-Pruning
cannot map), MaxViT moves its residual stream between layouts only by ``WindowPartition`` / ``WindowDepartition``
(views and a permute between (B, C, H, W) and (B, G, P, C)) and downsamples by a strided MBConv whose shortcut is a
1x1 conv. Torch-Pruning maps those views as identities of the channels (their channel counts on both sides agree),
which is what they are: a channel of (B, C, H, W) is the same channel of (B, G, P, C). So each stage's width (every
MBConv output, attention ``out_proj`` and MLP output of the stage, with the LayerNorms and BatchNorms between them) is
one group, and so are each MBConv's expansion (with its depthwise conv and squeeze-excitation gate), each
squeeze-excitation's bottleneck, each MLP's hidden width and each attention's heads.

Counting. :class:`PartitionAttention` is registered with the op counter: per partition of P tokens Torch-Pruning's
``nn.MultiheadAttention`` rule (:func:`autoprune.vit.attention_flops`), times the partitions (B*G); the bias addition
is not counted, as in a Swin. :mod:`autoprune.layers` prices it as a WindowAttention (per partition of its q's input,
times the partitions), so analytic equals counted. The unconverted model's count differs: the op counter sees its
``to_qkv`` and ``merge`` as plain Linear layers and not the einsums.

A LayerNorm's or activation's (B, G, P, C) input may have more partitions than channels (maxvit_t at 448x448: 256
windows of 64 channels in its first stage): :mod:`autoprune.layers` takes the last dim for its channels when that dim
holds exactly the group channels the layer owns and dim 1 does not, so the cost stays exact there too.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch_pruning.utils.op_counter import MODULES_MAPPING
from torchvision.models.maxvit import PartitionAttentionLayer, RelativePositionalMultiHeadAttention

from autoprune.swin import WindowAttention
from autoprune.vit import attention_count


class PartitionAttention(WindowAttention):
    """torchvision's MaxViT attention with one Linear per projection; input and output (B, G, P, C): G partitions
    (windows or grid cells) of P = ``partition_size``\\ ² tokens."""

    def __init__(self, dim: int, partition_size: int, num_heads: int, head_dim: int, scale: float) -> None:
        super().__init__(dim, [partition_size, partition_size], [0, 0], num_heads, head_dim)
        self.scale = scale  # torchvision's feat_dim ** -0.5: the unpruned width's, kept when heads are removed

    @classmethod
    def from_relative(cls, m: RelativePositionalMultiHeadAttention) -> PartitionAttention:  # type: ignore[override]
        c, h, d = m.to_qkv.in_features, m.n_heads, m.head_dim
        new = cls(c, m.size, h, d, m.scale_factor)
        if not torch.equal(new.relative_position_index.view(-1), m.relative_position_index.view(-1).cpu()):
            raise ValueError("torchvision's relative position index is not the one a Swin window of its size has")
        w = h * d
        with torch.no_grad():
            for i, layer in enumerate((new.q, new.k, new.v)):  # torch.chunk(to_qkv(x), 3, dim=-1)
                layer.weight.copy_(m.to_qkv.weight[i * w : (i + 1) * w])
                layer.bias.copy_(m.to_qkv.bias[i * w : (i + 1) * w])
            new.out_proj.weight.copy_(m.merge.weight)
            new.out_proj.bias.copy_(m.merge.bias)
            new.q.relative_position_bias_table.copy_(m.relative_position_bias_table)
        return new.to(m.to_qkv.weight.device).train(m.training)

    def scaled_query_key(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        return q, k, self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.attend(x, self.position_bias().unsqueeze(0))


def partition_attention_flops(m: PartitionAttention, x: torch.Tensor) -> int:
    """The attention's FLOPs on ``x`` (B, G, P, C): per partition :func:`autoprune.vit.attention_flops`, times B*G."""
    n = x.shape[-2]
    return attention_count(m, n, n, n) * x.shape[:-2].numel()


def _count_flops_hook(m: PartitionAttention, inputs: tuple, output: object) -> None:
    m.__flops__ += partition_attention_flops(m, inputs[0])


MODULES_MAPPING[PartitionAttention] = _count_flops_hook


def explicit_maxvit_attention(model: nn.Module) -> int:
    """Replace, in place, the attention of every torchvision MaxViT ``PartitionAttentionLayer`` by an equivalent
    :class:`PartitionAttention`; returns how many were replaced."""
    found = [
        m.attn_layer
        for m in model.modules()
        if isinstance(m, PartitionAttentionLayer) and type(m.attn_layer[1]) is RelativePositionalMultiHeadAttention
    ]
    for seq in found:
        seq[1] = PartitionAttention.from_relative(seq[1])
    return len(found)
