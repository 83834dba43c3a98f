"""Issue acceptance on a real torchvision model: uniform flops=50% on resnet18 at 224x224."""

import numpy as np
import onnxruntime as ort
import torch
import torch_pruning as tp

from autoprune.api import load_model
from autoprune.budget import parse_budget
from autoprune.cost.model import CostModel
from autoprune.layers import analyze
from autoprune.onnx_graph import onnx_bytes
from autoprune.problem import Problem
from autoprune.prune import ChannelPruner
from autoprune.search.baselines import uniform_kept

SHAPE = (1, 3, 224, 224)


def test_resnet18_uniform_half_flops_materialises_and_runs_in_onnxruntime():
    net, shape = load_model("resnet18", input_shape=SHAPE)
    graph = analyze(net, shape, "resnet18")
    kept, ratio = uniform_kept(Problem(graph, CostModel(graph), parse_budget("flops=50%")))
    assert 0 < ratio < 1
    pruned = ChannelPruner(net, shape, graph=graph).apply(list(kept))
    x = torch.randn(*SHAPE)
    macs, _ = tp.utils.count_ops_and_params(pruned, x)
    assert abs(macs / graph.base_flops - 0.5) <= 0.02  # within 2% of half, measured on the materialised model
    sess = ort.InferenceSession(onnx_bytes(pruned, SHAPE), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x.numpy()})[0]
    assert out.shape == tuple(net(x).shape) == (1, 1000)
    np.testing.assert_allclose(out, pruned(x).detach().numpy(), rtol=1e-3, atol=1e-3)
