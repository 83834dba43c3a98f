"""torchvision's VisionTransformer: its attention made explicit (same outputs, same count), one group of whole heads
and one MLP group per block, priced exactly, pruned for real (fewer heads), exported to ONNX.

A tiny ViT (32x32 images, 4 patches a side, 2 blocks of 4 heads of 16) keeps it to seconds; vit_b_16 and vit_b_32
run in ``scripts/model_zoo.py``.
"""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch_pruning as tp

import autoprune
from autoprune.budget import parse_budget
from autoprune.cost.flops import costs
from autoprune.cost.model import CostModel
from autoprune.cost.probes import plan_layers
from autoprune.data import make_synthetic
from autoprune.errors import UserError
from autoprune.onnx_graph import onnx_bytes
from autoprune.problem import Problem
from autoprune.prune import CRITERIA, ChannelPruner
from autoprune.vit import HeadAttention, explicit_vit_attention
from tests._tiny_models import tiny_vit  # 32x32 images, 2 blocks: the sizes below

SHAPE = (1, 3, 32, 32)
HEADS, HEAD_DIM, HIDDEN, MLP = 4, 16, 64, 128
BLOCKS = ("encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1")


@pytest.fixture(scope="module")
def pruner() -> ChannelPruner:
    return ChannelPruner(tiny_vit(), SHAPE, model_name="tiny-vit")


def test_explicit_attention_computes_and_counts_what_multihead_attention_did():
    model, x = tiny_vit(), torch.randn(3, *SHAPE[1:])
    with torch.no_grad():
        ref = model(x)
    ref_flops, ref_params = tp.utils.count_ops_and_params(model, torch.randn(*SHAPE))
    assert explicit_vit_attention(model) == 2
    assert all(isinstance(model.get_submodule(f"{b}.self_attention"), HeadAttention) for b in BLOCKS)
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    # Torch-Pruning's rule for nn.MultiheadAttention, generalised: the converted model counts the same
    assert tp.utils.count_ops_and_params(model, torch.randn(*SHAPE)) == (ref_flops, ref_params)


def test_a_group_of_whole_heads_and_one_of_mlp_channels_per_block(pruner):
    groups = pruner.graph.groups
    assert [(g.name, g.kind, g.channels, g.unit) for g in groups] == [
        ("conv_proj", "conv", HIDDEN, 1),  # the embedding (residual) width
        (f"{BLOCKS[0]}.self_attention.q", "heads", HEADS, HEAD_DIM),
        (f"{BLOCKS[0]}.mlp.0", "linear", MLP, 1),
        (f"{BLOCKS[1]}.self_attention.q", "heads", HEADS, HEAD_DIM),
        (f"{BLOCKS[1]}.mlp.0", "linear", MLP, 1),
    ]
    heads = groups[1]
    assert set(heads.members) == {f"{BLOCKS[0]}.self_attention.{p}" for p in "qkv"}
    assert heads.consumers == (f"{BLOCKS[0]}.self_attention.out_proj",)
    assert groups[2].consumers == (f"{BLOCKS[0]}.mlp.3",)


def test_the_unpruned_model_is_priced_as_counted(pruner):
    flops, params = tp.utils.count_ops_and_params(tiny_vit(), torch.randn(*SHAPE))  # unconverted
    assert pruner.graph.base_flops == flops and pruner.graph.base_params == params
    analytic = costs(pruner.graph, pruner.graph.channels)
    assert analytic["flops"] == pytest.approx(flops, rel=1e-12) and analytic["params"] == params


@pytest.mark.parametrize("seed", range(4))
def test_a_random_policy_is_priced_exactly_and_pruned_for_real(pruner, seed):
    rng = np.random.default_rng(seed)
    kept = [int(rng.integers(1, g.channels + 1)) for g in pruner.graph.groups]
    pruned = pruner.apply(kept)
    x = torch.randn(2, *SHAPE[1:])
    with torch.no_grad():
        assert pruned(x).shape == (2, 10)
    flops, params = tp.utils.count_ops_and_params(pruned, torch.randn(*SHAPE))
    analytic = costs(pruner.graph, kept)
    assert analytic["flops"] == pytest.approx(flops, rel=1e-12) and analytic["params"] == params
    assert pruned.hidden_dim == pruned.conv_proj.out_channels == kept[0]
    for b, (heads, mlp) in zip(BLOCKS, (kept[1:3], kept[3:5]), strict=True):
        block = pruned.get_submodule(b)
        assert block.self_attention.num_heads == block.num_heads == heads
        assert block.mlp[0].out_features == block.mlp[3].in_features == mlp


def test_its_class_token_and_position_embedding_are_cut_with_the_embedding_unchecked(pruner):
    assert pruner.graph.unwrapped == []  # known to Torch-Pruning's rule: no half-pruned trial run at analysis
    pruned = pruner.apply([48, 2, 64, 3, 96])
    assert pruned.class_token.shape == (1, 1, 48) and pruned.encoder.pos_embedding.shape == (1, 17, 48)


def test_removing_heads_removes_their_rows_and_columns(pruner):
    kept = list(pruner.graph.channels)
    kept[1], kept[3] = 1, 3  # block 0 keeps one head, block 1 three
    pruned = pruner.apply(kept)
    original = pruner.model.get_submodule(f"{BLOCKS[0]}.self_attention")
    attn = pruned.get_submodule(f"{BLOCKS[0]}.self_attention")
    assert attn.num_heads == 1 and pruned.get_submodule(f"{BLOCKS[1]}.self_attention").num_heads == 3
    for p in "qkv":
        assert getattr(attn, p).weight.shape == (HEAD_DIM, HIDDEN)
    assert attn.out_proj.weight.shape == (HIDDEN, HEAD_DIM)
    # the survivor is block 0's most important head, whole: its q, k, v rows and out_proj columns
    best = int(np.argmax(pruner.scores[1]))
    rows = slice(best * HEAD_DIM, (best + 1) * HEAD_DIM)
    for p in "qkv":
        torch.testing.assert_close(getattr(attn, p).weight, getattr(original, p).weight[rows])
    torch.testing.assert_close(attn.out_proj.weight, original.out_proj.weight[:, rows])


def test_round_to_counts_channels_so_a_head_is_already_whole_blocks(pruner):
    problem = Problem(pruner.graph, CostModel(pruner.graph), parse_budget("flops=60%"), min_keep=0.2, round_to=8)
    assert problem.steps.tolist() == [8, 1, 8, 1, 8]
    assert problem.candidates[1].tolist() == [1, 2, 3, 4]
    assert problem.candidates[0].tolist() == [16, 24, 32, 40, 48, 56, 64]


def test_the_pruned_vit_runs_in_onnxruntime_as_in_pytorch(pruner):
    pruned = pruner.apply([48, 2, 96, 3, 64])
    x = torch.randn(2, *SHAPE[1:])
    with torch.no_grad():
        out = pruned(x).numpy()
    sess = ort.InferenceSession(onnx_bytes(pruned, SHAPE), providers=["CPUExecutionProvider"])
    (onnx_out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(onnx_out, out, atol=1e-5, rtol=1e-4)


def test_the_original_model_keeps_its_weights_and_outputs_under_pruning(pruner):
    before = copy.deepcopy(pruner.model.state_dict())
    pruner.apply([32, 1, 64, 2, 32])
    for k, v in pruner.model.state_dict().items():
        assert torch.equal(before[k], v)


def test_a_search_through_the_api_prunes_heads_within_the_budget(tmp_path):
    data = make_synthetic(SHAPE[1:], num_classes=10, n_train=64, n_test=32, held_out=16)
    run = autoprune.search(
        tiny_vit(),
        data,
        "flops=60%",
        strategy="ddpg",
        episodes=3,
        finetune_epochs=0,
        measure=False,
        input_shape=SHAPE,
        out=tmp_path / "run",
    )
    assert run.policy.metrics["flops_share"] <= 0.6
    heads = [b.self_attention.num_heads for b in run.pruned.encoder.layers]
    assert heads == [g["kept"] for g in run.policy.groups if g["name"].endswith("self_attention.q")]
    assert (tmp_path / "run" / "policy.json").is_file()


@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_scores_whole_heads(criterion):
    data = make_synthetic(SHAPE[1:], num_classes=10, n_train=64, n_test=16, held_out=16)
    pruner = ChannelPruner(tiny_vit(), SHAPE, criterion=criterion, data=data.train)
    assert [len(s) for s in pruner.scores] == [HIDDEN, HEADS, MLP, HEADS, MLP]
    pruned = pruner.apply([48, 2, 64, 3, 96], reconstruct=criterion == "l2")  # a refit of (B, tokens, C) layers
    with torch.no_grad():
        assert pruned(torch.randn(2, *SHAPE[1:])).shape == (2, 10)


def test_a_latency_table_plans_each_attention_core_at_whole_heads(pruner):
    plans = [p for p in plan_layers(pruner.graph, block=8, align=4, grid=3) if p.op == "attention"]
    assert [p.layer for p in plans] == [f"{b}.self_attention" for b in BLOCKS]
    for p in plans:
        assert p.group == p.in_group == f"{p.layer}.q"  # the heads group, named after its root
        assert [ci for _, ci, _ in p.points] == [HEAD_DIM, 3 * HEAD_DIM, HEADS * HEAD_DIM]  # 1, 3, 4 heads
        assert all(regime == "aligned" and ci == co for regime, ci, co in p.points)
        spec = p.spec(3 * HEAD_DIM, 3 * HEAD_DIM)
        assert (spec.groups, spec.h_in, spec.batch) == (3, 17, 1)  # 3 heads over 16 patches and the class token


def test_the_attention_probe_computes_the_attention_between_the_projections():
    from autoprune.cost.probes import ProbeSpec

    spec = ProbeSpec("attention", 48, 48, (1, 1), (1, 1), (0, 0), (1, 1), 3, 17, 17, 2)
    x = torch.randn(*spec.input_shape)
    qkv = x.unflatten(-1, (3, 16)).transpose(1, 2)
    expected = torch.softmax(qkv @ qkv.transpose(-1, -2) / 4.0, -1) @ qkv
    expected = expected.transpose(1, 2).flatten(2)
    sess = ort.InferenceSession(spec.onnx_bytes(), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"x": x.numpy()})
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(spec.torch_module()(x), expected, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def vit_table(tmp_path_factory):
    from autoprune.latency_workflows import build_table

    table = build_table("tests._tiny_models:tiny_vit", SHAPE, threads=1, grid=3, warmup=1, repeats=3, e2e_repeats=3)
    return table.save(tmp_path_factory.mktemp("table") / "tiny-vit.csv")


def test_a_latency_table_prices_a_vits_heads_from_its_attention_probes(vit_table):
    from autoprune.cost.latency_table import LatencyTable

    table = LatencyTable.load(vit_table)
    graph = ChannelPruner(tiny_vit(), SHAPE, model_name="tests._tiny_models:tiny_vit").graph
    assert sorted(table.df.loc[table.df["op"] == "attention", "layer"].unique()) == [
        f"{b}.self_attention" for b in BLOCKS
    ]
    layer_us = table.predictor(graph).layer_us
    names = table.layers
    attention = table.df[table.df["op"] == "attention"].set_index(["layer", "c_in"])["median_us"]
    for heads in (1, 3, 4):
        kept = graph.channels.copy()
        kept[[g.kind == "heads" for g in graph.groups]] = heads
        us = layer_us(kept)
        for b in BLOCKS:  # at a grid point the prediction is the probe's time
            layer = f"{b}.self_attention"
            assert us[names.index(layer)] == pytest.approx(attention[(layer, heads * HEAD_DIM)])
    policy = np.array([48, 2, 64, 3, 96])
    assert table.predict(graph, policy) == pytest.approx(LatencyTable.load(vit_table).predict(graph, policy))


def test_a_table_without_a_blocks_attention_is_refused(vit_table):
    from autoprune.cost.latency_table import LatencyTable

    table = LatencyTable.load(vit_table)
    cut = LatencyTable(table.df[table.df["layer"] != f"{BLOCKS[1]}.self_attention"], table.meta)
    graph = ChannelPruner(tiny_vit(), SHAPE, model_name="tests._tiny_models:tiny_vit").graph
    with pytest.raises(UserError, match=f"no measurements for 1 layer.*{BLOCKS[1]}.self_attention"):
        cut.predictor(graph)
