"""torchvision's ShuffleNetV2: its blocks rebuilt so that Torch-Pruning traces them, the groups its channel split and
shuffle allow, exact costs, real pruning that removes exactly the channels it says, and ONNX export."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
import torchvision.models as tvm

from autoprune.cost.flops import costs
from autoprune.layers import analyze
from autoprune.models import ShuffleNetV2Block, adapt_shufflenet_v2, build_model
from autoprune.onnx_graph import onnx_bytes
from autoprune.prune import ChannelPruner

SHAPE = (1, 3, 64, 64)
# shufflenet_v2_x0_5: stages 2-4 of 4, 8 and 4 blocks, 48/96/192 channels (each block's branches carry half)
STAGES = {2: (4, 24), 3: (8, 48), 4: (4, 96)}


pytestmark = pytest.mark.usefixtures("one_thread")  # big models: one thread is faster on a shared machine


@pytest.fixture(scope="module")
def pruner() -> ChannelPruner:
    torch.manual_seed(0)
    model, _ = build_model("shufflenet_v2_x0_5", num_classes=10)
    # BatchNorm statistics of real activations: with the initial ones (0, 1) a random network's activations fade
    # layer by layer and every input gives about the same output, which would hide a mis-wired channel
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # a cumulative average
    with torch.no_grad():
        model.train()(torch.randn(16, *SHAPE[1:]))
    model.eval()
    return ChannelPruner(model, SHAPE, model_name="shufflenet_v2_x0_5", criterion="random")


@pytest.fixture(scope="module")
def kept(pruner: ChannelPruner) -> list[int]:
    rng = np.random.default_rng(0)
    return [int(min(g.channels, max(1, round(g.channels * rng.uniform(0.3, 0.9))))) for g in pruner.graph.groups]


@pytest.fixture(scope="module")
def pruned(pruner: ChannelPruner, kept: list[int]) -> nn.Module:
    return pruner.apply(kept)


def test_rebuilt_blocks_keep_weights_and_outputs() -> None:
    torch.manual_seed(0)
    original = tvm.shufflenet_v2_x0_5(num_classes=10).eval()
    adapted = adapt_shufflenet_v2(copy.deepcopy(original))
    blocks = [m for m in adapted.modules() if isinstance(m, ShuffleNetV2Block)]
    assert len(blocks) == sum(n for n, _ in STAGES.values())
    assert not any(type(m).__name__ == "InvertedResidual" for m in adapted.modules())
    assert list(adapted.state_dict()) == list(original.state_dict())  # torchvision checkpoints still load
    x = torch.randn(2, *SHAPE[1:])
    with torch.no_grad():
        assert torch.equal(adapted(x), original(x))
        original.train(), adapted.train()
        assert torch.equal(adapted(x), original(x))


def test_groups_follow_the_block_structure(pruner: ChannelPruner) -> None:
    """One group per block (the inner channels of its branch2), the stem and the last conv; the channels that pass
    through a channel shuffle (every block's outputs) are in none."""
    groups = pruner.graph.groups
    blocks = [(f"stage{s}.{i}", half) for s, (n, half) in STAGES.items() for i in range(n)]
    assert [g.name for g in groups] == ["conv1.0"] + [f"{b}.branch2.0" for b, _ in blocks] + ["conv5.0"]
    assert [g.channels for g in groups] == [24] + [half for _, half in blocks] + [1024]
    for g, (b, _) in zip(groups[1:-1], blocks, strict=True):
        # conv 1x1 -> BN -> ReLU -> depthwise 3x3 -> BN -> conv 1x1: the depthwise follows, the last conv consumes
        assert set(g.members) == {f"{b}.branch2.0", f"{b}.branch2.3"} and g.consumers == (f"{b}.branch2.5",)
        assert g.kind == "depthwise"
    stem, last = groups[0], groups[-1]
    # the stem feeds the first block's two branches directly (no shuffle before them)
    assert set(stem.members) == {"conv1.0", "stage2.0.branch1.0"}
    assert set(stem.consumers) == {"stage2.0.branch1.2", "stage2.0.branch2.0"}
    assert last.members == ("conv5.0",) and last.consumers == ("fc",)
    # every block's outputs go through the shuffle, and every block but the first one's inputs come out of one
    members = {n for g in groups for n in g.members}
    consumers = {n for g in groups for n in g.consumers}
    assert not members & {f"{b}.{c}" for b, _ in blocks for c in ("branch2.5", "branch1.2")}
    assert not consumers & {f"{b}.branch2.0" for b, _ in blocks[1:]}
    assert not (members | consumers) & {"stage3.0.branch1.0", "stage4.0.branch1.0", "stage3.0.branch1.2"}


def test_random_policy_is_priced_exactly(pruner: ChannelPruner, kept: list[int], pruned: nn.Module) -> None:
    flops, params = tp.utils.count_ops_and_params(pruned, torch.randn(*SHAPE))
    analytic = costs(pruner.graph, kept)
    assert analytic["flops"] == pytest.approx(flops, rel=1e-9, abs=0)
    assert round(analytic["params"]) == params
    assert flops < pruner.graph.base_flops and params < pruner.graph.base_params
    layers = dict(pruned.named_modules())
    for g, k in zip(pruner.graph.groups, kept, strict=True):
        assert layers[g.name].out_channels == k


def test_pruned_model_is_the_original_with_those_channels_switched_off(
    pruner: ChannelPruner, kept: list[int], pruned: nn.Module
) -> None:
    """The couplings are right: zeroing the removed channels' BatchNorms in the unpruned model (so those channels
    carry zeros everywhere downstream) gives the pruned model's output."""
    masked = copy.deepcopy(pruner.model).eval()
    layers = dict(masked.named_modules())
    name_of = {id(m): n for n, m in pruner.model.named_modules()}
    for recipe, removed in zip(pruner.graph.recipes, pruner.removed_channels(kept), strict=True):
        drop = set(removed.tolist())
        for step in recipe:
            if isinstance(step.target, nn.BatchNorm2d):
                idxs = [i for i, r in zip(step.idxs, step.root_idxs, strict=True) if r in drop]
                bn = layers[name_of[id(step.target)]]
                with torch.no_grad():
                    bn.weight[idxs] = 0.0
                    bn.bias[idxs] = 0.0
    x = torch.randn(2, *SHAPE[1:])
    with torch.no_grad():
        out, ref, full = pruned(x), masked(x), pruner.model(x)
    assert out.shape == full.shape == (2, 10)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out, full, rtol=1e-4, atol=1e-5)  # something was really removed


def test_pruned_model_exports_to_onnx(pruned: nn.Module) -> None:
    x = torch.randn(*SHAPE)
    with torch.no_grad():
        out = pruned(x).numpy()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_bytes(pruned, SHAPE), opts, providers=["CPUExecutionProvider"])
    (onnx_out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(onnx_out, out, atol=1e-3, rtol=1e-3)


def test_channels_through_a_channel_shuffle_stay_at_full_width() -> None:
    """Any model's nn.ChannelShuffle / F.channel_shuffle: Torch-Pruning would couple its channels as if unmoved."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.ChannelShuffle(2),
        nn.Conv2d(8, 6, 1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    ).eval()
    graph = analyze(model, (1, 3, 8, 8))
    assert [(g.name, g.channels) for g in graph.groups] == [("4", 6)]
