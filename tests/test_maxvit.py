"""torchvision's MaxVit: its partition attention made explicit (same outputs), one group of whole heads per attention,
stage widths, MBConv expansions, squeeze-excitations and MLP widths as groups, priced exactly, pruned for real (fewer
heads, their bias-table columns gone), exported to ONNX.

A tiny MaxVit (64x64 images, two stages of one layer, partitions of 4x4, heads of 16) keeps it to seconds; maxvit_t
runs in ``scripts/model_zoo.py``.
"""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch_pruning as tp
from torchvision.models.maxvit import MaxVit

from autoprune.cost.flops import costs
from autoprune.data import make_synthetic
from autoprune.maxvit import PartitionAttention, explicit_maxvit_attention
from autoprune.onnx_graph import onnx_bytes
from autoprune.prune import CRITERIA, ChannelPruner

SHAPE = (1, 3, 64, 64)
LAYERS = ("blocks.0.layers.0.layers", "blocks.1.layers.0.layers")
ATTENTIONS = tuple(f"{layer}.{kind}_attention" for layer in LAYERS for kind in ("window", "grid"))
HEADS = (2, 2, 4, 4)
WIDTHS = (32, 64)
OUTPUTS = ("attn_layer.1.out_proj", "mlp_layer.3")  # a partition attention layer's outputs to the stage width


def tiny_maxvit(size: int = SHAPE[2]) -> MaxVit:
    torch.manual_seed(0)
    return MaxVit(
        input_size=(size, size),
        stem_channels=16,
        partition_size=4,
        block_channels=list(WIDTHS),
        block_layers=[1, 1],
        head_dim=16,
        stochastic_depth_prob=0.0,
        num_classes=10,
    ).eval()


pytestmark = pytest.mark.usefixtures("one_thread")  # big models: one thread is faster on a shared machine


@pytest.fixture(scope="module")
def pruner() -> ChannelPruner:
    return ChannelPruner(tiny_maxvit(), SHAPE, model_name="tiny-maxvit")


def test_explicit_partition_attention_computes_what_torchvisions_did():
    model, x = tiny_maxvit(), torch.randn(2, *SHAPE[1:])
    with torch.no_grad():
        ref = model(x)
    _, ref_params = tp.utils.count_ops_and_params(model, torch.randn(*SHAPE))
    assert explicit_maxvit_attention(model) == 4
    assert all(type(model.get_submodule(f"{a}.attn_layer.1")) is PartitionAttention for a in ATTENTIONS)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
    assert tp.utils.count_ops_and_params(model, torch.randn(*SHAPE))[1] == ref_params
    assert explicit_maxvit_attention(model) == 0  # converted once
    # gradients flow through the recomputing attention node as through torchvision's einsums
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_groups_heads_stage_widths_and_the_rest(pruner):
    by_name = {g.name: g for g in pruner.graph.groups}
    for a, h in zip(ATTENTIONS, HEADS, strict=True):
        heads = by_name[f"{a}.attn_layer.1.q"]
        assert heads.kind == "heads" and heads.channels == h and heads.unit == 16
        assert set(heads.members) == {f"{a}.attn_layer.1.{p}" for p in "qkv"}
        assert by_name[f"{a}.mlp_layer.1"].channels == 4 * 16 * h
    for layer, width in zip(LAYERS, WIDTHS, strict=True):
        # the stage width: the MBConv's output and shortcut, both attentions' out_proj and both MLPs' outputs
        stage = by_name[f"{layer}.MBconv.proj.1"]
        assert stage.channels == width
        assert set(stage.members) == {
            f"{layer}.MBconv.proj.1",
            f"{layer}.MBconv.layers.conv_c",
            *(f"{layer}.{k}_attention.{m}" for k in ("window", "grid") for m in OUTPUTS),
        }
        assert by_name[f"{layer}.MBconv.layers.conv_a.0"].kind == "depthwise"
        assert by_name[f"{layer}.MBconv.layers.conv_a.0"].channels == 4 * width
        assert by_name[f"{layer}.MBconv.layers.squeeze_excitation.fc1"].channels == width // 4
    assert pruner.graph.ignored == ["classifier.5"] and not pruner.graph.unwrapped


def test_the_partition_reshapes_couple_a_stage_width_channel_for_channel(pruner):
    """WindowPartition/WindowDepartition only move channels between layouts: every layer of a group prunes the
    root's own channel indices (no flatten mapping spreads them over positions)."""
    for group in pruner.graph.tp_groups:
        for item in group:
            assert list(item.idxs) == list(item.root_idxs)


def test_the_unpruned_model_is_priced_as_counted(pruner):
    model = tiny_maxvit()
    explicit_maxvit_attention(model)
    flops, params = tp.utils.count_ops_and_params(model, torch.randn(*SHAPE))
    assert pruner.graph.base_flops == flops and pruner.graph.base_params == params
    analytic = costs(pruner.graph, pruner.graph.channels)
    assert analytic["flops"] == pytest.approx(flops, rel=1e-12) and analytic["params"] == params


@pytest.mark.parametrize("seed", range(3))
def test_a_random_policy_is_priced_exactly_and_pruned_for_real(pruner, seed):
    rng = np.random.default_rng(seed)
    kept = [int(rng.integers(1, g.channels + 1)) for g in pruner.graph.groups]
    pruned = pruner.apply(kept)
    with torch.no_grad():
        assert pruned(torch.randn(2, *SHAPE[1:])).shape == (2, 10)
    flops, params = tp.utils.count_ops_and_params(pruned, torch.randn(*SHAPE))
    analytic = costs(pruner.graph, kept)
    assert analytic["flops"] == pytest.approx(flops, rel=1e-12) and analytic["params"] == params


def test_more_partitions_than_channels_are_priced_exactly():
    """At 128x128 the first stage has 64 windows (and grid cells) of 32 channels: its LayerNorms and MLP activations
    see (B, G, P, C) with G > C, whose channels are the last dim."""
    shape = (1, 3, 128, 128)
    pruner = ChannelPruner(tiny_maxvit(128), shape, model_name="tiny-maxvit-128")
    kept = [max(1, g.channels // 3) for g in pruner.graph.groups]
    flops, params = tp.utils.count_ops_and_params(pruner.apply(kept), torch.randn(*shape))
    analytic = costs(pruner.graph, kept)
    assert analytic["flops"] == pytest.approx(flops, rel=1e-12) and analytic["params"] == params


def test_removing_heads_slices_their_bias_table_columns(pruner):
    name = f"{ATTENTIONS[2]}.attn_layer.1"
    names = [g.name for g in pruner.graph.groups]
    kept = list(pruner.graph.channels)
    kept[names.index(f"{name}.q")] = 1
    pruned = pruner.apply(kept)
    original, attn = pruner.model.get_submodule(name), pruned.get_submodule(name)
    assert attn.num_heads == 1 and attn.q.weight.shape[0] == 16 and attn.out_proj.in_features == 16
    assert attn.scale == original.scale == WIDTHS[1] ** -0.5  # torchvision's scale: the stage width's
    table = attn.q.relative_position_bias_table
    assert table.shape == (49, 1)
    heads = [h for h in range(4) if torch.equal(original.q.relative_position_bias_table[:, h], table[:, 0])]
    assert len(heads) == 1
    h = heads[0]
    torch.testing.assert_close(attn.q.weight, original.q.weight[16 * h : 16 * (h + 1)])


def test_the_pruned_maxvit_runs_in_onnxruntime_as_in_pytorch(pruner):
    rng = np.random.default_rng(7)
    pruned = pruner.apply([int(rng.integers(1, g.channels + 1)) for g in pruner.graph.groups])
    x = torch.randn(*SHAPE)
    with torch.no_grad():
        out = pruned(x).numpy()
    sess = ort.InferenceSession(onnx_bytes(pruned, SHAPE), providers=["CPUExecutionProvider"])
    (onnx_out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(onnx_out, out, atol=1e-4, rtol=1e-3)


def test_the_original_model_keeps_its_outputs_under_pruning(pruner):
    x = torch.randn(*SHAPE)
    with torch.no_grad():
        before = copy.deepcopy(pruner.model)(x)
        pruner.apply([1 for _ in pruner.graph.groups])
        torch.testing.assert_close(pruner.model(x), before)


@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_scores_whole_heads(criterion):
    data = make_synthetic(SHAPE[1:], num_classes=10, n_train=16, n_test=8, held_out=8)
    pruner = ChannelPruner(tiny_maxvit(), SHAPE, criterion=criterion, data=data.train)
    by_name = dict(zip((g.name for g in pruner.graph.groups), pruner.scores, strict=True))
    assert [len(by_name[f"{a}.attn_layer.1.q"]) for a in ATTENTIONS] == list(HEADS)
    kept = [max(1, g.channels // 2) for g in pruner.graph.groups]
    pruned = pruner.apply(kept, reconstruct=criterion == "l2")  # refits (B, G, P, C) inputs
    with torch.no_grad():
        assert pruned(torch.randn(2, *SHAPE[1:])).shape == (2, 10)
