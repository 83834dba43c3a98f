"""Small user models (``--model tests._tiny_models:NAME``) that learn the synthetic task in seconds.

The synthetic classes are fixed per-pixel patterns: a network that pools globally (a ResNet) cannot tell them apart
in a few steps, a network that keeps the positions (convolutions then a linear layer over the whole map) can.
"""

from __future__ import annotations

import torch.nn as nn


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
