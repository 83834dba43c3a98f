"""autoprune: find how much to prune each layer of a CNN under a FLOPs, params or latency budget, then prune it.

The public API mirrors the command line::

    import autoprune
    graph = autoprune.analyze_model("resnet18", (1, 3, 224, 224))
    run = autoprune.search("resnet18", "imagefolder:~/val", "latency=10ms", out="runs/r18")
    pruned = autoprune.apply_policy(model, autoprune.Policy.load("runs/x/policy.json"))
"""

from autoprune.api import (  # noqa: E402
    PolicyOutcome,
    analyze_model,
    apply_policy,
    evaluate_pruned,
    load_model,
    make_cost_model,
    prune_with_policy,
    save_outcome,
    search,
    train_model,
)
from autoprune.budget import Budget, parse_budget  # noqa: E402
from autoprune.cost.latency_table import LatencyTable  # noqa: E402
from autoprune.errors import UserError  # noqa: E402
from autoprune.layers import LayerGraph, LayerGroup, analyze  # noqa: E402
from autoprune.policy import Policy  # noqa: E402
from autoprune.spec import RunSpec  # noqa: E402
from autoprune.version import __version__  # noqa: E402, F401

__all__ = [
    "Budget",
    "LatencyTable",
    "LayerGraph",
    "LayerGroup",
    "Policy",
    "PolicyOutcome",
    "RunSpec",
    "UserError",
    "analyze",
    "analyze_model",
    "apply_policy",
    "evaluate_pruned",
    "load_model",
    "make_cost_model",
    "parse_budget",
    "prune_with_policy",
    "save_outcome",
    "search",
    "train_model",
]
