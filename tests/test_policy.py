import json

import pytest

from autoprune.budget import parse_budget
from autoprune.errors import UserError
from autoprune.layers import analyze
from autoprune.models import build_model
from autoprune.policy import FORMAT, Policy
from tests.conftest import TINY_SHAPE


@pytest.fixture(scope="module")
def graph(tiny_model):
    return analyze(tiny_model, TINY_SHAPE, "resnet20")


def test_round_trip(tmp_path, graph):
    kept = [max(1, g.channels // 2) for g in graph.groups]
    p = Policy.from_kept(graph, kept, budget=parse_budget("flops=50%"), metrics={"flops": 1.0})
    p.save(tmp_path / "policy.json")
    d = json.loads((tmp_path / "policy.json").read_text())
    assert d["format"] == FORMAT and d["model"]["fingerprint"] == graph.fingerprint
    q = Policy.load(tmp_path / "policy.json")
    assert q.check_fits(graph) == kept
    assert q.budget.text == "flops=50%" and q.metrics == {"flops": 1.0}


def test_policy_for_another_model_names_the_groups(graph):
    other, _ = build_model("resnet32", in_channels=1, num_classes=10)
    other_graph = analyze(other, TINY_SHAPE, "resnet32")
    p = Policy.from_kept(other_graph, other_graph.channels)
    with pytest.raises(UserError, match=r"groups differ: .*only in policy"):
        p.check_fits(graph)


def test_different_width_named(graph):
    p = Policy.from_kept(graph, graph.channels)
    p.groups[3]["channels"] += 1
    with pytest.raises(UserError, match=p.groups[3]["name"].replace(".", r"\.")):
        p.check_fits(graph)


def test_kept_out_of_range(graph):
    p = Policy.from_kept(graph, graph.channels)
    p.groups[0]["kept"] = 0
    with pytest.raises(UserError, match="must be 1.."):
        p.check_fits(graph)


@pytest.mark.parametrize("content", ["not json", '{"format": "other"}', '{"format": "' + FORMAT + '", "groups": 3}'])
def test_bad_files(tmp_path, content):
    f = tmp_path / "p.json"
    f.write_text(content)
    with pytest.raises(UserError):
        Policy.load(f)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        Policy.load(tmp_path / "nope.json")
