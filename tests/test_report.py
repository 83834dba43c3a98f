"""report.md's verdict and summaries (:mod:`autoprune.report`): "met" only of what was measured here or counted; a
prediction is called one, with its device."""

from autoprune.budget import parse_budget
from autoprune.models import build_model


def test_a_table_of_another_device_is_judged_by_its_prediction_not_by_this_machine(capsys):
    """A policy searched here with a phone's table is measured on this machine too, but the budget is the
    phone's: the verdict and the exit code go by the table's prediction, and say so."""
    from types import SimpleNamespace

    from autoprune.cli import _print_outcome
    from autoprune.layers import analyze
    from autoprune.policy import Policy
    from autoprune.report import budget_met, budget_verdict

    model, _ = build_model("resnet20", use_default_weights=False)
    graph = analyze(model, (1, 3, 16, 16), "resnet20")
    policy = Policy.from_kept(
        graph,
        graph.channels.tolist(),
        budget=parse_budget("latency=10ms"),
        metrics={
            "latency_predicted_us": 9900.0,
            "latency_measured_us": 31000.0,
            "latency_measured_elsewhere": True,
            "latency_predicted_for": "Phone SoC (NEON, 8 cores), onnxruntime 1.32, 4 threads",
            "unpruned": {"latency_predicted_us": 14000.0, "latency_measured_us": 44000.0},
        },
        search={"evaluations": 5, "search_seconds": 1.0},
    )
    assert budget_met(policy) is True
    verdict = budget_verdict(policy)
    assert "9.90 ms predicted for Phone SoC (NEON, 8 cores), onnxruntime 1.32, 4 threads, not measured there" in verdict
    assert "**met**" not in verdict and "within the budget as predicted" in verdict
    _print_outcome(SimpleNamespace(policy=policy), "runs/x")  # no exit 3
    out = capsys.readouterr().out
    assert "NOT met" not in out and ": met" not in out
    assert "predicted for Phone SoC" in out and "not measured there" in out  # the comparison table says it too


def test_repeated_policies_are_told_apart_from_evaluations():
    """A sampler on a coarse space proposes policies again; the summary says how many were distinct."""
    from autoprune.report import evaluations_text

    assert evaluations_text({"evaluations": 150, "distinct_policies": 38}) == (
        "150 evaluations (38 distinct policies; the repeats came from the cache)"
    )
    assert evaluations_text({"evaluations": 4, "distinct_policies": 4}) == "4 evaluations"
    assert evaluations_text({"evaluations": 4}) == "4 evaluations"  # a policy.json written before the count
