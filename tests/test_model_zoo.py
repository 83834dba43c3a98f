"""One model per torchvision family: a random policy prunes it for real, the analytic cost model prices the result
exactly, and the pruned model exports to ONNX and runs in onnxruntime with the pruned PyTorch model's output.

The full sweep over every torchvision classifier is ``scripts/model_zoo.py`` (results in benchmarks/model_zoo.md).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch_pruning as tp

from autoprune.cost.flops import costs
from autoprune.models import build_model
from autoprune.onnx_graph import onnx_bytes
from autoprune.prune import ChannelPruner

SMALL = (1, 3, 64, 64)
NATIVE = (1, 3, 224, 224)  # AlexNet/VGG (their adaptive pooling exports to ONNX only at this size), transformers

FAST = [
    ("resnet18", SMALL),
    ("mobilenet_v2", SMALL),
    ("mobilenet_v3_small", SMALL),
    ("efficientnet_b0", SMALL),
    ("regnet_x_400mf", SMALL),
    ("densenet121", SMALL),
    ("convnext_tiny", SMALL),
    ("squeezenet1_0", SMALL),
    ("googlenet", SMALL),
    ("mnasnet0_5", SMALL),
    ("alexnet", NATIVE),
    ("inception_v3", (1, 3, 80, 80)),
    ("resnext50_32x4d", SMALL),  # grouped convs stay at full width; the rest is pruned
    ("regnet_y_400mf", SMALL),  # squeeze-excitation
    ("shufflenet_v2_x0_5", SMALL),  # channels through a channel shuffle stay at full width
]
SLOW = [  # about a minute each on two CPU cores
    ("vgg11_bn", NATIVE),
    ("wide_resnet50_2", SMALL),
    ("efficientnet_v2_s", SMALL),
]
CASES = [pytest.param(n, s, id=n) for n, s in FAST] + [
    pytest.param(n, s, id=n, marks=pytest.mark.slow) for n, s in SLOW
]


pytestmark = pytest.mark.usefixtures("one_thread")  # big models: one thread is faster on a shared machine


def _random_policy(channels: list[int], seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(min(c, max(1, round(c * rng.uniform(0.3, 0.9))))) for c in channels]


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_random_policy_prunes_prices_and_exports(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model, _ = build_model(name, num_classes=10)
    x = torch.randn(*shape)
    with torch.no_grad():
        ref = model(x)

    pruner = ChannelPruner(model, shape, model_name=name)
    channels = [g.channels for g in pruner.graph.groups]
    assert channels, f"{name}: no prunable group"
    kept = _random_policy(channels)
    assert sum(kept) < sum(channels)
    pruned = pruner.apply(kept)

    with torch.no_grad():
        out = pruned(x)
    assert out.shape == ref.shape

    flops, params = tp.utils.count_ops_and_params(pruned, torch.randn(*shape))
    analytic = costs(pruner.graph, kept)
    assert analytic["flops"] == pytest.approx(flops, rel=1e-9, abs=0)
    assert round(analytic["params"]) == params
    assert params < pruner.graph.base_params
    assert flops < pruner.graph.base_flops

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_bytes(pruned, shape), opts, providers=["CPUExecutionProvider"])
    (onnx_out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    assert onnx_out.shape == tuple(ref.shape)
    np.testing.assert_allclose(onnx_out, out.numpy(), atol=1e-3, rtol=1e-3)
