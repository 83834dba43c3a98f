"""Your own model: a layer Torch-Pruning has no pruner for is refused in one line until the factory registers one;
the factory can also leave layers whole. (``tests._tiny_models``: ``FunctionalConv`` convolves with ``F.conv2d``.)"""

from __future__ import annotations

import json

import pytest
import torch

from autoprune.errors import UserError
from autoprune.prune import ChannelPruner
from tests._tiny_models import functional_convs, ignoring

SEARCH = ["--input-shape", "1x3x16x16", "--strategy", "uniform", "--no-measure", "--finetune-epochs", "0"]


def test_a_layer_torch_pruning_guesses_wrong_is_one_line_naming_it(run_cli, tmp_path):
    code, _, err = run_cli(
        "search", "--model", "tests._tiny_models:functional_convs_without_hook", "--budget", "flops=50%",
        *SEARCH, "--out", tmp_path / "run",
    )  # fmt: skip
    assert code == 2 and err.count("\n") == 1
    assert "no pruner for (3: RuntimeError)" in err and "autoprune_customized_pruners" in err
    assert not (tmp_path / "run").exists()


def test_a_registered_pruner_makes_the_layer_prunable(run_cli, tmp_path):
    code, out, err = run_cli(
        "search", "--model", "tests._tiny_models:functional_convs", "--budget", "flops=70%",
        *SEARCH, "--out", tmp_path / "run",
    )  # fmt: skip
    assert code == 0, err
    policy = json.loads((tmp_path / "run" / "policy.json").read_text())
    assert [g["name"] for g in policy["groups"]] == ["0"] and policy["groups"][0]["kept"] < 16
    pruned = torch.load(tmp_path / "run" / "pruned.pt", weights_only=False)
    assert pruned[3].weight.shape[1] == policy["groups"][0]["kept"]  # the custom layer lost its input channels
    assert "met" in out


def test_a_budget_the_cost_model_cannot_price_for_the_custom_layer_is_refused(run_cli):
    # the op counter counts the custom layer's parameters, which the analytic model takes as constant
    pruner = ChannelPruner(functional_convs(), (1, 3, 16, 16))
    assert pruner.graph.inexact == ["params"]
    code, _, err = run_cli(
        "search", "--model", "tests._tiny_models:functional_convs", "--budget", "params=50%", *SEARCH
    )
    assert code == 2 and "a params budget cannot be priced exactly" in err and "budget flops" in err


def test_the_factory_can_leave_layers_whole():
    graph = ChannelPruner(ignoring(), (1, 3, 16, 16)).graph
    assert graph.groups == [] and "0" in graph.ignored
    model = functional_convs()
    model.autoprune_ignored_layers = ["nope"]
    with pytest.raises(UserError, match="names no layer 'nope'"):
        ChannelPruner(model, (1, 3, 16, 16))
