"""Export a (pruned) model: ONNX for onnxruntime, and PyTorch (whole module + state_dict)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from autoprune import atomic


def onnx_bytes(model: nn.Module, input_shape: tuple[int, ...], dynamic_batch: bool = True, opset: int = 17) -> bytes:
    """The model as an ONNX graph with input ``input`` and output ``logits``.

    The TorchScript-based exporter is used (``dynamo=False``): it needs no extra dependency and traces every
    torchvision classifier; onnxruntime's graph optimiser then fuses conv + BN + activation at session creation.
    """
    model = model.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(*input_shape),),
            buf,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None,
            opset_version=opset,
            dynamo=False,
        )
    return buf.getvalue()


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
