"""Models that break for some pruned widths, for the failure tests: they are real models run by the real evaluator.

Both are the CIFAR ResNet-20 for 1-channel images. Unpruned (16 stem channels) they run normally; a policy that
keeps a multiple of 3 of the stem's 16 channels makes ``RaisingResNet20`` raise in ``forward`` and
``NaNResNet20`` output NaN logits — as a model that breaks at some widths, or a diverged one, would.
``AlwaysRaisingResNet20`` raises whenever it is pruned at all.
"""

from __future__ import annotations

import torch

from autoprune.models import CifarResNet


def broken(model: CifarResNet) -> bool:
    return model.conv1.out_channels % 3 == 0


class RaisingResNet20(CifarResNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if broken(self):
            raise RuntimeError(f"this model cannot run with {self.conv1.out_channels} stem channels")
        return super().forward(x)


class NaNResNet20(CifarResNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out * float("nan") if broken(self) else out


class AlwaysRaisingResNet20(CifarResNet):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.full_size = sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if sum(p.numel() for p in self.parameters()) < self.full_size:
            raise RuntimeError("this model cannot run pruned")
        return super().forward(x)


def raising() -> CifarResNet:
    return RaisingResNet20(20, num_classes=10, in_channels=1)


def nan_outputs() -> CifarResNet:
    return NaNResNet20(20, num_classes=10, in_channels=1)


def always_raising() -> CifarResNet:
    return AlwaysRaisingResNet20(20, num_classes=10, in_channels=1)
