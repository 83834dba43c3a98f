"""Small user models (``--model tests._tiny_models:NAME``) that learn the synthetic task in seconds.

The synthetic classes are fixed per-pixel patterns: a network that pools globally (a ResNet) cannot tell them apart
in a few steps, a network that keeps the positions (convolutions then a linear layer over the whole map) can.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp


def conv_flat(num_classes: int = 10, in_channels: int = 3, width: int = 16, side: int = 16) -> nn.Module:
    """conv-BN-ReLU twice, then a linear classifier over every position: two prunable groups."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(width * side * side, num_classes),
    )


class FunctionalConv(nn.Module):
    """A layer Torch-Pruning does not know: a 3x3 convolution through ``F.conv2d`` on its own weight, which loses
    output channels along dim 0 and input channels along dim 1 (an unwrapped parameter has one prunable dim)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, 3, 3) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, padding=1)


class FunctionalConvPruner(tp.pruner.BasePruningFunc):
    """How a FunctionalConv loses channels (Torch-Pruning's customized-layer API, as its ``customized_pruners``)."""

    def prune_out_channels(self, layer: FunctionalConv, idxs: list[int]) -> FunctionalConv:
        keep = [i for i in range(layer.weight.shape[0]) if i not in set(idxs)]
        layer.weight = nn.Parameter(layer.weight.data[keep])
        return layer

    def prune_in_channels(self, layer: FunctionalConv, idxs: list[int]) -> FunctionalConv:
        keep = [i for i in range(layer.weight.shape[1]) if i not in set(idxs)]
        layer.weight = nn.Parameter(layer.weight.data[:, keep])
        return layer

    def get_out_channels(self, layer: FunctionalConv) -> int:
        return layer.weight.shape[0]

    def get_in_channels(self, layer: FunctionalConv) -> int:
        return layer.weight.shape[1]


def functional_convs(num_classes: int = 10, with_hook: bool = True) -> nn.Module:
    """conv -> BN -> ReLU -> FunctionalConv -> BN -> ReLU -> pool -> linear; the factory registers the custom
    layer's pruner on the model (``autoprune_customized_pruners``), where autoprune's analysis finds it."""
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        FunctionalConv(16, 16),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )
    if with_hook:
        model.autoprune_customized_pruners = {FunctionalConv: FunctionalConvPruner()}
    return model


def functional_convs_without_hook(num_classes: int = 10) -> nn.Module:
    return functional_convs(num_classes, with_hook=False)


def ignoring(num_classes: int = 10) -> nn.Module:
    """functional_convs whose first conv the factory asks to leave whole."""
    model = functional_convs(num_classes)
    model.autoprune_ignored_layers = ["0"]
    return model


def tiny_vit(num_classes: int = 10) -> nn.Module:
    """A two-block torchvision ViT on 32x32 inputs (4 patches of 8x8 and a class token): 4 heads of 16, MLP 128."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=num_classes
    ).eval()
