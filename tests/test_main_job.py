"""The main job end to end on a tiny model: search -> prune -> fine-tune -> export -> measure -> report."""

import json

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from autoprune.api import export_policy, load_pruned, search
from autoprune.policy import Policy

SHAPE = (1, 1, 16, 16)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_data):
    out = tmp_path_factory.mktemp("run")
    outcome = search(
        "resnet20",
        tiny_data,
        "flops=50%",
        strategy="random",
        input_shape=SHAPE,
        episodes=4,
        held_out=64,
        finetune_epochs=0.25,
        out=out,
        seed=1,
    )
    return out, outcome


def test_the_default_search_ends_with_the_promotion_rung(run):
    out, outcome = run
    rung = json.loads((out / "policy.json").read_text())["search"]["promotion"]
    assert {"uniform", "magnitude"} <= {r["source"] for r in rung}
    assert outcome.policy.kept == rung[0]["kept"]  # the best after the short fine-tune is the policy


def test_run_directory_is_complete_and_loadable(run):
    out, outcome = run
    for name in (
        "policy.json",
        "history.csv",
        "pruned.pt",
        "pruned_state.pt",
        "pruned.onnx",
        "report.md",
        "kept_channels.png",
        "rewards.png",
        "pareto.png",
    ):
        assert (out / name).is_file(), name
    policy = Policy.load(out / "policy.json")
    m = policy.metrics
    assert m["flops_share"] <= 0.5 + 1e-9
    for key in ("test_accuracy", "test_accuracy_before_finetune", "held_out_accuracy", "latency_measured_us"):
        assert key in m and key in m["unpruned"] or key == "test_accuracy_before_finetune"
    assert policy.search["strategy"] == "random" and policy.search["evaluations"] == 4
    history = pd.read_csv(out / "history.csv")
    assert len(history) == 4 and {"reward", "flops", "kept"} <= set(history.columns)
    assert policy.search["distinct_policies"] == history["kept"].nunique()
    whole = torch.load(out / "pruned.pt", weights_only=False)
    x = torch.randn(*SHAPE)
    assert torch.allclose(whole(x), outcome.pruned(x))
    assert "met" in (out / "report.md").read_text()


def test_state_dict_reloads_into_the_rebuilt_architecture(run):
    out, outcome = run
    pruned, _ = load_pruned(out / "policy.json")
    x = torch.randn(3, *SHAPE[1:])
    assert torch.allclose(pruned(x), outcome.pruned(x), atol=1e-6)


def test_export_reproduces_the_onnx_file(run, tmp_path):
    out, _ = run
    again = export_policy(out / "policy.json", "onnx", tmp_path / "again.onnx")
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    a = ort.InferenceSession(str(out / "pruned.onnx")).run(None, {"input": x})[0]
    b = ort.InferenceSession(str(again)).run(None, {"input": x})[0]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_report_rerenders_from_files(run, run_cli):
    out, _ = run
    (out / "report.md").unlink()
    code, _, err = run_cli("report", out)
    assert code == 0, err
    text = (out / "report.md").read_text()
    assert "flops" in text and "![" in text


def test_cli_export_pt(run, run_cli, tmp_path):
    out, outcome = run
    code, _, err = run_cli("export", out / "policy.json", "--format", "pt", "--out", tmp_path / "m.pt")
    assert code == 0, err
    m = torch.load(tmp_path / "m.pt", weights_only=False)
    assert json.loads((out / "policy.json").read_text())["metrics"]["params"] == sum(p.numel() for p in m.parameters())


def test_search_an_nn_module_from_python(tiny_data):
    from autoprune.models import CifarResNet

    net = CifarResNet(20, num_classes=10, in_channels=1)
    outcome = search(
        net, tiny_data, "params=60%", strategy="uniform", input_shape=SHAPE, finetune_epochs=0, measure=False
    )
    assert outcome.run_dir is None and outcome.policy.metrics["params_share"] <= 0.6
    assert outcome.pruned(torch.randn(*SHAPE)).shape == (1, 10)
    assert sum(p.numel() for p in outcome.pruned.parameters()) < sum(p.numel() for p in net.parameters())
