"""A PyTorch model as an ONNX graph in memory: what onnxruntime times (:mod:`autoprune.cost.measure`) and what
:mod:`autoprune.export` writes; and the graph onnxruntime's optimiser makes of one."""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

if TYPE_CHECKING:
    import onnx


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


def optimised_graph(model: bytes, threads: int) -> onnx.ModelProto:
    """``model`` (serialised ONNX) as onnxruntime's CPU graph optimiser rewrites it at session creation, with every
    optimisation on (NCHWc layout transform included): which nodes it blocks, pads and reorders on this CPU."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        so.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
        ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        return onnx.load(so.optimized_model_filepath)
