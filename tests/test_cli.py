"""The command line as a user drives it: good paths write files, bad input is one line on stderr and exit 2."""

import json

import pytest
import torch

from autoprune.budget import parse_budget
from autoprune.models import build_model


def test_info_lists_groups(run_cli):
    code, out, _ = run_cli("info", "--model", "resnet20", "--input-shape", "1x3x32x32")
    assert code == 0
    assert "12 prunable groups" in out and "layer3.2.conv1" in out


def test_uniform_search_then_prune(uniform_run, run_cli, tmp_path):
    run = uniform_run
    policy = json.loads((run / "policy.json").read_text())
    assert policy["search"]["strategy"] == "uniform"
    assert (run / "report.md").is_file() and (run / "history.csv").is_file()
    assert 0.40 <= policy["metrics"]["flops_share"] <= 0.5
    # no table of this device for this model: kept channels are whole blocks of 8, so the cut is a speed-up too
    assert policy["search"]["round_to"] == 8
    assert all(g["kept"] % 8 == 0 or g["kept"] == g["channels"] for g in policy["groups"])
    assert (run / "pruned.onnx").is_file() and (run / "pruned_state.pt").is_file()

    out_pt = tmp_path / "p.pt"
    code, out, err = run_cli(
        "prune", "--model", "resnet20", "--policy", run / "policy.json", "--out", out_pt, "--onnx", tmp_path / "p.onnx"
    )
    assert code == 0, err
    pruned = torch.load(out_pt, weights_only=False)
    assert sum(p.numel() for p in pruned.parameters()) == policy["metrics"]["params"]
    state = torch.load(tmp_path / "p_state.pt", weights_only=True)
    assert set(state) == set(pruned.state_dict())


def test_search_with_data_reports_accuracy(run_cli, tmp_path):
    code, out, err = run_cli(
        "search",
        "--model",
        "resnet20",
        "--input-shape",
        "1x3x16x16",
        "--data",
        "synthetic",
        "--budget",
        "params=50%",
        "--strategy",
        "uniform",
        "--finetune-epochs",
        "0",
        "--no-measure",
        "--out",
        tmp_path / "r",
    )
    assert code == 0, err
    m = json.loads((tmp_path / "r" / "policy.json").read_text())["metrics"]
    assert 0 <= m["test_accuracy"] <= 1 and 0 <= m["held_out_accuracy"] <= 1
    assert m["params_share"] <= 0.5


def one_line_error(code: int, err: str) -> str:
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_unknown_model(run_cli):
    line = one_line_error(*run_cli("info", "--model", "resnet9000")[::2])
    assert "unknown model 'resnet9000'" in line


def test_malformed_budget(run_cli, tmp_path):
    code, _, err = run_cli("search", "--model", "resnet20", "--budget", "flops=fast", "--out", tmp_path / "x")
    assert "'flops=fast'" in one_line_error(code, err)
    assert not (tmp_path / "x").exists()


def test_budget_below_the_floor(run_cli, tmp_path):
    code, _, err = run_cli(
        "search",
        "--model",
        "resnet20",
        "--budget",
        "flops=0.1%",
        "--min-keep",
        "0.25",
        "--strategy",
        "uniform",
        "--no-measure",
        "--out",
        tmp_path / "x",
    )
    line = one_line_error(code, err)
    assert "unreachable" in line and "smallest reachable" in line
    assert not (tmp_path / "x").exists()


def test_missing_latency_table(run_cli, tmp_path):
    code, _, err = run_cli(
        "search",
        "--model",
        "resnet20",
        "--budget",
        "latency=1ms",
        "--strategy",
        "uniform",
        "--table",
        tmp_path / "none.csv",
        "--out",
        tmp_path / "x",
    )
    assert "none.csv" in one_line_error(code, err)


def test_latency_budget_without_a_predictor_is_refused(tiny_model):
    from autoprune.budget import parse_budget
    from autoprune.cost.model import CostModel
    from autoprune.errors import UserError
    from autoprune.layers import analyze
    from autoprune.problem import Problem

    graph = analyze(tiny_model, (1, 1, 16, 16))
    with pytest.raises(UserError, match="latency table"):
        Problem(graph, CostModel(graph), parse_budget("latency=1ms"))


def test_policy_for_a_different_model(run_cli, tmp_path):
    code, _, err = run_cli(
        "search",
        "--model",
        "resnet20",
        "--budget",
        "flops=50%",
        "--strategy",
        "uniform",
        "--no-measure",
        "--out",
        tmp_path / "r",
    )
    assert code == 0, err
    code, _, err = run_cli(
        "prune", "--model", "resnet32", "--policy", tmp_path / "r" / "policy.json", "--out", tmp_path / "p.pt"
    )
    assert "does not fit model resnet32" in one_line_error(code, err)


def test_missing_weights_file(run_cli, tmp_path):
    code, _, err = run_cli("info", "--model", "resnet20", "--weights", tmp_path / "missing.pt")
    assert "does not exist" in one_line_error(code, err)


def test_pickled_module_needs_trust(run_cli, tmp_path):
    model, _ = build_model("resnet20")
    torch.save(model, tmp_path / "whole.pt")
    code, _, err = run_cli("info", "--model", "resnet20", "--weights", tmp_path / "whole.pt")
    assert "--trust-pickle" in one_line_error(code, err)
    code, out, err = run_cli("info", "--model", "resnet20", "--weights", tmp_path / "whole.pt", "--trust-pickle")
    assert code == 0, err


@pytest.mark.parametrize("shape", ["1x3x224", "axbxcxd", "1x3x0x32"])
def test_bad_input_shape(run_cli, shape):
    line = one_line_error(*run_cli("info", "--model", "resnet20", "--input-shape", shape)[::2])
    assert shape in line


def test_input_shape_the_model_cannot_take(run_cli):
    line = one_line_error(*run_cli("info", "--model", "resnet18", "--input-shape", "1x5x64x64")[::2])
    assert "--input-shape" in line


@pytest.mark.parametrize("measured_ms,code", [(9.6, None), (12.4, 3)])
def test_a_latency_budget_not_met_when_measured_exits_3(measured_ms, code, capsys):
    """The run directory is written either way; a script that ships "the model under 10 ms" must be able to tell,
    so a pruned model measured over its budget ends the command with exit 3 after the verdict."""
    from types import SimpleNamespace

    import typer

    from autoprune.cli import _print_outcome
    from autoprune.layers import analyze
    from autoprune.policy import Policy

    model, _ = build_model("resnet20", use_default_weights=False)
    graph = analyze(model, (1, 3, 16, 16), "resnet20")
    policy = Policy.from_kept(
        graph,
        graph.channels.tolist(),
        budget=parse_budget("latency=10ms"),
        metrics={
            "latency_predicted_us": 9900.0,
            "latency_measured_us": measured_ms * 1000,
            "unpruned": {"latency_predicted_us": 14000.0, "latency_measured_us": 14100.0},
        },
        search={"evaluations": 5, "search_seconds": 1.0},
    )
    if code is None:
        _print_outcome(SimpleNamespace(policy=policy), "runs/x")
    else:
        with pytest.raises(typer.Exit) as e:
            _print_outcome(SimpleNamespace(policy=policy), "runs/x")
        assert e.value.exit_code == code
    out, err = capsys.readouterr()
    assert ("NOT met" in out) == (code is not None) and ("exit 3" in err) == (code is not None)


UNIFORM_SEARCH = (
    "search",
    "--model",
    "resnet20",
    "--input-shape",
    "1x3x16x16",
    "--budget",
    "flops=50%",
    "--strategy",
    "uniform",
)


@pytest.fixture
def uniform_run(run_cli, tmp_path):
    run = tmp_path / "run"
    code, _, err = run_cli(
        *UNIFORM_SEARCH,
        "--no-measure",
        "--out",
        run,
    )
    assert code == 0, err
    return run


def test_a_policy_naming_a_model_factory_runs_no_code_unless_the_user_names_it(
    uniform_run, run_cli, tmp_path, monkeypatch
):
    """A received policy.json whose model is `pkg.mod:fn` would import that module on export: it is refused in one
    line until the user names the same factory with --model (or trusts the file)."""
    marker = tmp_path / "imported"
    (tmp_path / "sent_factory.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('the module ran')\n"
        "def net():\n"
        "    from autoprune.models import build_model\n"
        "    return build_model('resnet20', use_default_weights=False)[0]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    policy = uniform_run / "policy.json"
    d = json.loads(policy.read_text())
    d["model"]["name"] = "sent_factory:net"
    policy.write_text(json.dumps(d))
    line = one_line_error(*run_cli("export", policy, "--format", "onnx")[::2])
    assert "sent_factory:net" in line and "--model sent_factory:net" in line and "run code" in line
    assert not marker.exists()
    code, out, err = run_cli(
        "export", policy, "--format", "onnx", "--model", "sent_factory:net", "--out", tmp_path / "x.onnx"
    )
    assert code == 0, err
    assert marker.exists() and (tmp_path / "x.onnx").is_file()  # named by the user: imported


def test_search_out_naming_a_file_is_one_line(run_cli, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    line = one_line_error(
        *run_cli(
            *UNIFORM_SEARCH,
            "--out",
            f,
        )[::2]
    )
    assert "is a file" in line and f.read_text() == "mine"


def test_prune_takes_an_input_shape_of_another_batch_only(uniform_run, run_cli, tmp_path):
    import onnx

    code, _, err = run_cli(
        "prune",
        "--model",
        "resnet20",
        "--policy",
        uniform_run / "policy.json",
        "--input-shape",
        "4x3x16x16",
        "--out",
        tmp_path / "p.pt",
        "--onnx",
        tmp_path / "p.onnx",
    )
    assert code == 0, err
    dims = onnx.load(str(tmp_path / "p.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in dims][1:] == [3, 16, 16]
    line = one_line_error(
        *run_cli(
            "prune",
            "--model",
            "resnet20",
            "--policy",
            uniform_run / "policy.json",
            "--input-shape",
            "1x3x32x32",
            "--out",
            tmp_path / "q.pt",
        )[::2]
    )
    assert "1x3x32x32" in line and "1x3x16x16" in line and "only the batch" in line


def test_a_flops_budget_below_the_channel_blocks_floor_is_searched_at_finer_widths(run_cli, tmp_path):
    """ResNet-20's 16-channel stage cannot go below 8 channels in whole blocks of 8 (the cheapest policy is ~12 % of
    its FLOPs): flops=8% is met with narrower widths, and said so; with --round-to 8 asked for, it is refused."""
    args = ("search", "--model", "resnet20", "--budget", "flops=8%", "--strategy", "uniform", "--no-measure")
    code, out, err = run_cli(*args, "--out", tmp_path / "r")
    assert code == 0, err
    policy = json.loads((tmp_path / "r" / "policy.json").read_text())
    assert policy["search"]["round_to"] == 4
    assert policy["metrics"]["flops_share"] <= 0.08
    assert "round-to 4" in out + err

    code, _, err = run_cli(*args, "--round-to", "8", "--out", tmp_path / "r8")
    line = one_line_error(code, err)
    assert "unreachable" in line and "--round-to 8" in line
    assert not (tmp_path / "r8").exists()


def test_round_to_zero_is_refused(run_cli, tmp_path):
    code, _, err = run_cli(
        "search", "--model", "resnet20", "--budget", "flops=50%", "--strategy", "uniform", "--no-measure",
        "--round-to", "0", "--out", tmp_path / "r",
    )  # fmt: skip
    assert "--round-to 0 must be at least 1" in one_line_error(code, err)
    assert not (tmp_path / "r").exists()
