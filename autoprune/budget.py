"""Budgets: ``KEY=VALUE[,KEY=VALUE...]`` with KEY in flops | macs | params | latency.

VALUE is a share of the unpruned model (``50%``), a count with an optional K/M/G/T suffix (``300M``, ``1.2G``,
``2.5e8``) for flops and params, or a time for latency (``10ms``, ``800us``, ``0.5s``). ``macs`` is a synonym of
``flops``: autoprune counts multiply-accumulates as Torch-Pruning and AMC do. Latency is kept in microseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from autoprune.errors import UserError

METRICS = ("flops", "params", "latency")
_ALIASES = {"flops": "flops", "macs": "flops", "params": "params", "latency": "latency"}
_COUNT = re.compile(r"^([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)([kmgt]?)$", re.I)
_TIME = re.compile(r"^([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)(ms|us|µs|s)$", re.I)
_PERCENT = re.compile(r"^([0-9]*\.?[0-9]+)%$")
_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_TIME_SCALE = {"s": 1e6, "ms": 1e3, "us": 1.0, "µs": 1.0}


@dataclass(frozen=True)
class Constraint:
    metric: str  # flops | params | latency
    value: float  # a fraction of the unpruned model when relative, else FLOPs / params / microseconds
    relative: bool
    text: str

    def limit(self, baseline: float) -> float:
        return self.value * baseline if self.relative else self.value


@dataclass(frozen=True)
class Budget:
    constraints: tuple[Constraint, ...]

    @property
    def text(self) -> str:
        return ",".join(c.text for c in self.constraints)

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(c.metric for c in self.constraints)

    def limits(self, baseline: dict[str, float]) -> dict[str, float]:
        """Absolute limits given the unpruned model's costs."""
        return {c.metric: c.limit(baseline[c.metric]) for c in self.constraints}

    def __str__(self) -> str:
        return self.text


def within(value: float, limit: float) -> bool:
    """Whether a cost is within its limit: the one test of the search's clip, NetAdapt, the measured check and the
    report. The relative slack of 1e-9 absorbs the rounding of a summed cost, nothing more."""
    return value <= limit * (1 + 1e-9)


def excess(costs: dict[str, float], limits: dict[str, float]) -> dict[str, float]:
    """By how much a policy is over its budget: ``{metric: cost / limit}`` for each limit it breaks (empty: within)."""
    return {m: costs[m] / lim for m, lim in limits.items() if not within(costs[m], lim)}


def parse_budget(text: str) -> Budget:
    """Parse a budget string; a malformed token fails naming that token."""
    if not text or not text.strip():
        raise UserError("empty budget: give e.g. --budget flops=50% or --budget latency=10ms")
    constraints: dict[str, Constraint] = {}
    for token in (t.strip() for t in text.split(",")):
        key, sep, value = token.partition("=")
        key, value = key.strip().lower(), value.strip().replace(" ", "")
        if not sep or key not in _ALIASES:
            raise UserError(f"budget token {token!r} is not KEY=VALUE with KEY one of flops, macs, params, latency")
        metric = _ALIASES[key]
        if metric in constraints:
            raise UserError(f"budget names {metric} twice ({token!r}): give each of flops, params, latency once")
        constraints[metric] = _parse_value(metric, value, token)
    return Budget(tuple(constraints.values()))


def _parse_value(metric: str, value: str, token: str) -> Constraint:
    if m := _PERCENT.match(value):
        share = float(m.group(1)) / 100
        if not 0 < share <= 1:
            raise UserError(f"budget {token!r}: a share must be in (0%, 100%]")
        return Constraint(metric, share, True, f"{metric}={value}")
    if metric == "latency":
        m = _TIME.match(value)
        if not m:
            raise UserError(f"budget {token!r}: latency needs a time like 10ms, 800us, 0.5s, or a share like 50%")
        v = float(m.group(1)) * _TIME_SCALE[m.group(2).lower()]
    else:
        m = _COUNT.match(value)
        if not m:
            raise UserError(f"budget {token!r}: {metric} needs a count like 300M, 1.2G, 2.5e8, or a share like 50%")
        v = float(m.group(1)) * _SCALE[m.group(2).lower()]
    if v <= 0:
        raise UserError(f"budget {token!r} must be positive")
    return Constraint(metric, v, False, f"{metric}={value}")


def format_cost(metric: str, value: float) -> str:
    """Human units: 1.82G FLOPs, 11.7M params, 9.84 ms."""
    if metric == "latency":
        return f"{value / 1e3:.2f} ms" if value >= 1000 else f"{value:.0f} us"
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.0f}"
