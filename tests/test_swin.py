"""torchvision's SwinTransformer: its window attention made explicit (same outputs), one group of whole heads and one
MLP group per block, priced exactly, pruned for real (fewer heads, their bias-table columns gone), exported to ONNX.

A tiny Swin (32x32 images, patches of 4, two stages of two blocks, windows of 4x4, heads of 16) keeps it to seconds;
swin_t, swin_s and swin_b run in ``scripts/model_zoo.py``.
"""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch_pruning as tp
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2

from autoprune.cost.flops import costs
from autoprune.cost.probes import plan_layers
from autoprune.data import make_synthetic
from autoprune.errors import UserError
from autoprune.onnx_graph import onnx_bytes
from autoprune.prune import CRITERIA, ChannelPruner
from autoprune.swin import WindowAttention, WindowAttentionV2, explicit_swin_attention

SHAPE = (1, 3, 32, 32)
BLOCKS = ("features.1.0", "features.1.1", "features.3.0", "features.3.1")
HEADS = (2, 2, 4, 4)


def tiny_swin(v2: bool = False) -> SwinTransformer:
    torch.manual_seed(0)
    v2_parts = {"block": SwinTransformerBlockV2, "downsample_layer": PatchMergingV2} if v2 else {}
    return SwinTransformer(
        patch_size=[4, 4], embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4], num_classes=10, **v2_parts
    ).eval()


@pytest.fixture(scope="module", params=[False, True], ids=["v1", "v2"])
def pruner(request) -> ChannelPruner:
    model = tiny_swin(request.param)
    model.v2 = request.param
    return ChannelPruner(model, SHAPE, model_name="tiny-swin")


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_explicit_window_attention_computes_what_torchvisions_did(v2):
    model, x = tiny_swin(v2), torch.randn(2, *SHAPE[1:])
    with torch.no_grad():
        ref = model(x)
    _, ref_params = tp.utils.count_ops_and_params(model, torch.randn(*SHAPE))
    assert explicit_swin_attention(model) == 4
    expected = WindowAttentionV2 if v2 else WindowAttention
    assert all(type(model.get_submodule(f"{b}.attn")) is expected for b in BLOCKS)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
    assert tp.utils.count_ops_and_params(model, torch.randn(*SHAPE))[1] == ref_params
    # gradients flow through the recomputing attention node as through torchvision's
    model.train()
    model(x).sum().backward()
    unused = {f"{b}.attn.k.bias" for b in BLOCKS} if v2 else set()  # V2 keeps a key bias that it zeroes in use
    assert all(p.grad is not None for n, p in model.named_parameters() if n not in unused)


def test_a_group_of_whole_heads_and_one_of_mlp_channels_per_block(pruner):
    by_name = {g.name: g for g in pruner.graph.groups}
    for b, h in zip(BLOCKS, HEADS, strict=True):
        heads = by_name[f"{b}.attn.q"]
        assert heads.kind == "heads" and heads.channels == h and heads.unit == 16
        assert set(heads.members) == {f"{b}.attn.{p}" for p in "qkv"}
        assert by_name[f"{b}.mlp.0"].channels == 4 * 16 * h


def test_the_unpruned_model_is_priced_as_counted(pruner):
    model = tiny_swin(pruner.model.v2)
    explicit_swin_attention(model)
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


def test_removing_heads_slices_their_position_bias_parameters(pruner):
    names = [g.name for g in pruner.graph.groups]
    kept = list(pruner.graph.channels)
    kept[names.index("features.3.0.attn.q")] = 1
    pruned = pruner.apply(kept)
    original = pruner.model.get_submodule("features.3.0.attn")
    attn = pruned.get_submodule("features.3.0.attn")
    assert attn.num_heads == 1 and attn.q.weight.shape[0] == 16 and attn.out_proj.in_features == 16
    if pruner.model.v2:  # the logit scale and the bias MLP's output rows, per head
        assert attn.q.logit_scale.shape == (1, 1, 1) and attn.q.cpb_w2.shape == (1, 512)
        assert attn.q.cpb_w1.shape == (512, 2)  # the hidden layer is shared by the heads
        heads = [h for h in range(4) if torch.equal(original.q.cpb_w2[h], attn.q.cpb_w2[0])]
    else:  # the bias table's column of each head
        table = attn.q.relative_position_bias_table
        assert table.shape == (49, 1)
        heads = [h for h in range(4) if torch.equal(original.q.relative_position_bias_table[:, h], table[:, 0])]
    assert len(heads) == 1
    h = heads[0]
    torch.testing.assert_close(attn.q.weight, original.q.weight[16 * h : 16 * (h + 1)])


def test_the_pruned_swin_runs_in_onnxruntime_as_in_pytorch(pruner):
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
    data = make_synthetic(SHAPE[1:], num_classes=10, n_train=32, n_test=16, held_out=16)
    pruner = ChannelPruner(tiny_swin(), SHAPE, criterion=criterion, data=data.train)
    assert [len(s) for s in pruner.scores] == [2, 128, 2, 128, 4, 256, 4, 256]
    pruned = pruner.apply([1, 64, 2, 96, 3, 128, 2, 200], reconstruct=criterion == "l2")  # refits (B, nW, N, C)
    with torch.no_grad():
        assert pruned(torch.randn(2, *SHAPE[1:])).shape == (2, 10)


def test_a_latency_table_is_refused_in_one_line(pruner):
    # window partition, shifts, bias and mask are no probe's: the table would miss their time
    with pytest.raises(UserError, match="not WindowAttention.*use a flops or params budget"):
        plan_layers(pruner.graph, block=8, align=4, grid=2)
