"""A PyTorch model as an ONNX graph in memory: what onnxruntime times (:mod:`autoprune.cost.measure`) and what
:mod:`autoprune.export` writes."""

from __future__ import annotations

import io
import warnings

import torch
import torch.nn as nn


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
            (torch.randn(*input_shape, device=next(model.parameters(), torch.empty(0)).device),),
            buf,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None,
            opset_version=opset,
            dynamo=False,
        )
    return buf.getvalue()
