"""Policy files (``policy.json``): how many channels each group keeps, and what that achieved.

Format ``autoprune.policy/1``::

    {"format": "autoprune.policy/1",
     "model": {"name": ..., "input_shape": [...], "fingerprint": ...},
     "budget": "flops=50%",
     "groups": [{"name": "layer1.0.conv1", "channels": 64, "kept": 32}, ...],
     "metrics": {"flops": ..., "params": ..., "latency_predicted_us": ..., "latency_measured_us": ...,
                 "held_out_accuracy": ..., "test_accuracy": ..., ...},
     "search": {"strategy": ..., "evaluations": ..., "seed": ..., "versions": {...}},
     "created": "2026-11-21T18:00:00+00:00"}

The fingerprint hashes the group structure (names and channel counts), so a policy applied to a different model is
refused with the groups that differ named.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

from autoprune import atomic
from autoprune.budget import Budget, parse_budget
from autoprune.errors import UserError
from autoprune.layers import LayerGraph

FORMAT = "autoprune.policy/1"


@dataclass
class Policy:
    model: str
    input_shape: tuple[int, ...]
    fingerprint: str
    groups: list[dict]  # {"name", "channels", "kept"}
    budget: Budget | None = None  # a file holds its text, parsed once on reading
    metrics: dict = field(default_factory=dict)
    search: dict = field(default_factory=dict)
    created: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    @classmethod
    def from_kept(cls, graph: LayerGraph, kept, **kwargs) -> Policy:
        groups = [
            {"name": g.name, "channels": g.channels, "kept": int(k)} for g, k in zip(graph.groups, kept, strict=True)
        ]
        return cls(graph.model_name, tuple(graph.input_shape), graph.fingerprint, groups, **kwargs)

    @property
    def kept(self) -> list[int]:
        return [g["kept"] for g in self.groups]

    def check_fits(self, graph: LayerGraph) -> list[int]:
        """The kept counts in ``graph``'s group order; fails naming the groups that differ."""
        mine = {g["name"]: g["channels"] for g in self.groups}
        theirs = {g.name: g.channels for g in graph.groups}
        if mine != theirs:
            diffs = [
                f"{n} (policy {mine[n]} ch, model {theirs[n]} ch)" for n in mine if n in theirs and mine[n] != theirs[n]
            ]
            diffs += [f"{n} (only in policy)" for n in mine if n not in theirs]
            diffs += [f"{n} (only in model)" for n in theirs if n not in mine]
            shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
            raise UserError(
                f"policy for {self.model} does not fit model {graph.model_name}: groups differ: {shown}. "
                "Use the model (and --input-shape) the policy was searched for"
            )
        by_name = {g["name"]: g["kept"] for g in self.groups}
        for g in graph.groups:
            if not 1 <= by_name[g.name] <= g.channels:
                raise UserError(
                    f"policy keeps {by_name[g.name]} of {g.channels} channels in {g.name}: must be 1..{g.channels}"
                )
        return [by_name[g.name] for g in graph.groups]

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "model": {"name": self.model, "input_shape": list(self.input_shape), "fingerprint": self.fingerprint},
            "budget": self.budget.text if self.budget is not None else None,
            "groups": self.groups,
            "metrics": self.metrics,
            "search": self.search,
            "created": self.created,
        }

    def save(self, path: str | Path) -> None:
        atomic.write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, d: dict, source: str = "policy") -> Policy:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise UserError(f"{source} is not an autoprune policy (format {FORMAT!r} expected)")
        try:
            groups = [
                {"name": str(g["name"]), "channels": int(g["channels"]), "kept": int(g["kept"])} for g in d["groups"]
            ]
            model = d["model"]
            return cls(
                str(model["name"]),
                tuple(int(x) for x in model["input_shape"]),
                str(model["fingerprint"]),
                groups,
                parse_budget(d["budget"]) if d.get("budget") else None,
                dict(d.get("metrics") or {}),
                dict(d.get("search") or {}),
                str(d.get("created", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{source} is a malformed policy ({type(e).__name__}: {e}): regenerate it") from e

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        path = Path(path).expanduser()
        if not path.is_file():
            raise UserError(f"policy file {str(path)!r} does not exist: pass the policy.json a search wrote")
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path} is not valid JSON ({e}): regenerate the policy") from e
        return cls.from_dict(d, str(path))
