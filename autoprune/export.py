"""Export a (pruned) model: ONNX for onnxruntime, and PyTorch (whole module + state_dict)."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from autoprune import atomic
from autoprune.onnx_graph import onnx_bytes


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path) -> Path:
    data = onnx_bytes(model, input_shape)
    atomic.write_with(path, lambda f: f.write(data))
    return Path(path)


def save_pytorch(model: nn.Module, path: str | Path, state_path: str | Path | None = None) -> None:
    """``torch.save`` the whole module (loadable with ``weights_only=False`` by whoever trusts it) and, beside it,
    its state_dict, which autoprune itself loads safely by rebuilding the architecture from the policy."""
    atomic.torch_save(model, path)
    if state_path is not None:
        atomic.torch_save(model.state_dict(), state_path)
