import numpy as np
import pytest
import torch
import torch_pruning as tp

from autoprune.cost.flops import costs
from autoprune.errors import UserError
from autoprune.prune import CRITERIA, ChannelPruner
from tests.conftest import TINY_SHAPE


@pytest.fixture(scope="module")
def pruner(tiny_model):
    return ChannelPruner(tiny_model, TINY_SHAPE, model_name="resnet20")


def random_kept(graph, seed):
    rng = np.random.default_rng(seed)
    return [int(rng.integers(1, g.channels + 1)) for g in graph.groups]


@pytest.mark.parametrize("seed", range(5))
def test_physically_smaller_and_flops_exact(pruner, seed):
    kept = random_kept(pruner.graph, seed)
    pruned = pruner.apply(kept)
    x = torch.randn(*TINY_SHAPE)
    assert pruned(x).shape == (1, 10)
    flops, params = tp.utils.count_ops_and_params(pruned, x)
    c = costs(pruner.graph, kept)
    assert c["flops"] == pytest.approx(flops, rel=1e-12) and c["params"] == params
    for group, k in zip(pruner.graph.groups, kept, strict=True):
        root = dict(pruned.named_modules())[group.name]
        assert root.out_channels == k  # real tensors, not masks
        assert root.weight.shape[0] == k


def test_same_policy_twice_gives_identical_weights(pruner):
    kept = random_kept(pruner.graph, 7)
    a, b = pruner.apply(kept), pruner.apply(kept)
    for (na, ta), (nb, tb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert na == nb and torch.equal(ta, tb)


def test_original_model_untouched(pruner, tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    pruner.apply(random_kept(pruner.graph, 1))
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(before[k], v)


def test_l1_keeps_the_largest_filters(tiny_model):
    pruner = ChannelPruner(tiny_model, TINY_SHAPE, criterion="l1")
    i = next(i for i, g in enumerate(pruner.graph.groups) if g.name == "layer1.0.conv1")
    kept = list(pruner.graph.channels)
    kept[i] = 4
    pruned = pruner.apply(kept)
    scores = pruner.scores[i]
    survivors = np.sort(np.argsort(scores)[-4:])
    w_orig = dict(tiny_model.named_modules())["layer1.0.conv1"].weight
    w_new = dict(pruned.named_modules())["layer1.0.conv1"].weight
    assert torch.equal(w_new, w_orig[torch.as_tensor(survivors)])


@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_prunes(tiny_model, tiny_data, criterion):
    pruner = ChannelPruner(tiny_model, TINY_SHAPE, criterion=criterion, data=tiny_data.train)
    kept = [max(1, c // 2) for c in pruner.graph.channels]
    pruned = pruner.apply(kept)
    assert pruned(torch.randn(*TINY_SHAPE)).shape == (1, 10)
    assert all(len(s) == g.channels for s, g in zip(pruner.scores, pruner.graph.groups, strict=True))


def test_data_criteria_need_data(tiny_model):
    with pytest.raises(UserError, match="needs data"):
        ChannelPruner(tiny_model, TINY_SHAPE, criterion="taylor")


def test_unknown_criterion(tiny_model):
    with pytest.raises(UserError, match="unknown importance criterion"):
        ChannelPruner(tiny_model, TINY_SHAPE, criterion="magic")


def test_reconstruction_brings_outputs_closer(tiny_model, tiny_data):
    from autoprune.evaluate import recalibrate_bn

    model = recalibrate_bn(tiny_model, tiny_data.train)  # realistic BN statistics
    pruner = ChannelPruner(model, TINY_SHAPE, data=tiny_data.train)
    kept = [
        c if g.name == "conv1" else max(1, c // 2)
        for g, c in zip(pruner.graph.groups, pruner.graph.channels, strict=True)
    ]
    plain = pruner.apply(kept)
    refit = pruner.apply(kept, reconstruct=True)
    x, _ = next(tiny_data.test.batches(64))
    with torch.no_grad():
        ref = model(x)
        err_plain = (plain(x) - ref).pow(2).mean().item()
        err_refit = (refit(x) - ref).pow(2).mean().item()
    assert err_refit < err_plain


def test_bad_kept_counts(pruner):
    kept = list(pruner.graph.channels)
    kept[0] = 0
    with pytest.raises(UserError, match="cannot keep 0"):
        pruner.apply(kept)
