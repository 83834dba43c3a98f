"""autoprune.layers: the prunable groups read off Torch-Pruning's dependency graph, and the analytic cost model."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from autoprune.cost.flops import costs
from autoprune.errors import UserError
from autoprune.layers import analyze, round_channels
from tests.conftest import TINY_SHAPE


@pytest.fixture(scope="module")
def graph(tiny_model):
    return analyze(tiny_model, TINY_SHAPE, "resnet20")


def test_groups_cover_residual_couplings(graph):
    assert len(graph.groups) == 12  # stem+3 residual stages' add groups (3) + 9 inner convs
    stem = graph.group("conv1")
    assert {"layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"} <= set(stem.members)
    assert "fc" in graph.ignored and all(m != "fc" for gr in graph.groups for m in gr.members)


def test_unpruned_cost_matches_torch_pruning(graph, tiny_model):
    flops, params = tp.utils.count_ops_and_params(tiny_model, torch.randn(*TINY_SHAPE))
    assert graph.base_flops == flops and graph.base_params == params


@pytest.mark.parametrize(
    ("channels", "ratio", "round_to", "floor", "expected"),
    [
        (64, 0.5, 1, 1, 32),
        (64, 0.3, 8, 1, 16),
        (64, 0.01, 8, 1, 8),
        (10, 0.01, 1, 2, 2),
        (64, 1.0, 8, 1, 64),
        (6, 0.9, 4, 1, 4),
    ],
)
def test_round_channels(channels, ratio, round_to, floor, expected):
    assert round_channels(channels, ratio, round_to, floor) == expected


# Small networks built at any width: the cost model of the widest, at a narrower policy, must price exactly what
# Torch-Pruning's op counter counts on the same network built that narrow.


def depthwise_net(c: int, d: int) -> nn.Module:
    """A MobileNet block: the depthwise conv and its BatchNorm follow the first conv's channels."""
    return nn.Sequential(
        nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
        nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c), nn.ReLU6(),
        nn.Conv2d(c, d, 1), nn.BatchNorm2d(d), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(d, 4),
    )  # fmt: skip


class SharedRelu(nn.Module):
    """One ReLU module run on two groups' channels, once on a strided conv's output."""

    def __init__(self, c: int, d: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, c, 3), nn.Conv2d(c, d, 3, stride=2, bias=False)
        self.relu = nn.ReLU()
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv2(self.relu(self.conv1(x))))
        return self.head(x.mean((2, 3)))


class Tokens(nn.Module):
    """Channels last: LayerNorm and an MLP on (N, L, C) tokens, a residual add coupling the stem to the MLP's
    output."""

    def __init__(self, c: int, d: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 4, 4)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, d), nn.Linear(d, c)
        self.act = nn.GELU()
        self.head = nn.Linear(c, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.stem(x).flatten(2).transpose(1, 2)
        t = t + self.fc2(self.act(self.fc1(self.norm(t))))
        return self.head(t.mean(1))


@pytest.mark.parametrize(
    ("factory", "kinds"),
    [
        (depthwise_net, ["depthwise", "conv"]),
        (SharedRelu, ["conv", "conv"]),
        (Tokens, ["conv", "linear"]),
    ],
    ids=["depthwise", "shared-relu", "tokens"],
)
@pytest.mark.parametrize("kept", [(16, 12), (1, 1), (5, 12), (16, 3)])
def test_cost_model_prices_a_narrower_network_exactly(factory: Callable[..., nn.Module], kinds, kept):
    shape = (2, 3, 8, 8)  # a batch of two: costs are per example; 4 tokens, fewer than any group's channels
    torch.manual_seed(0)
    graph = analyze(factory(16, 12).eval(), shape)
    assert [g.kind for g in graph.groups] == kinds and list(graph.channels) == [16, 12]
    flops, params = tp.utils.count_ops_and_params(factory(*kept).eval(), torch.randn(*shape))
    c = costs(graph, kept)
    assert c["flops"] == pytest.approx(flops, rel=1e-12) and c["params"] == pytest.approx(params, rel=1e-12)


def test_depthwise_group_members_and_consumers():
    graph = analyze(depthwise_net(16, 12).eval(), (1, 3, 16, 16))
    first, second = graph.groups
    assert (first.name, set(first.members), first.consumers) == ("0", {"0", "3"}, ("6",))
    # the classifier loses input channels with the last group, never output channels
    assert (second.name, second.members, second.consumers, graph.ignored) == ("6", ("6",), ("11",), ["11"])
    # each group's share: the cost of the layers whose channels it controls, shared layers counting for both
    assert first.flops + second.flops > graph.base_flops and max(first.flops, second.flops) < graph.base_flops


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, 4)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.stem(x).flatten(2).transpose(1, 2)
        return self.head((t + self.attn(t, t, t)[0]).mean(1))


def test_a_model_it_cannot_price_is_refused():
    # the attention's matrix products are counted by the op counter but are no layer's cost term
    with pytest.raises(UserError, match="cannot account for the cost of attn"):
        analyze(Attention().eval(), (1, 3, 16, 16), "attn")
