import pytest

from autoprune.budget import format_cost, parse_budget
from autoprune.errors import UserError


@pytest.mark.parametrize(
    ("text", "metric", "value", "relative"),
    [
        ("flops=50%", "flops", 0.5, True),
        ("macs=300M", "flops", 300e6, False),
        ("flops=1.2G", "flops", 1.2e9, False),
        ("params=2.5e8", "params", 2.5e8, False),
        ("latency=10ms", "latency", 10_000.0, False),
        ("latency=800us", "latency", 800.0, False),
        ("latency=0.5s", "latency", 500_000.0, False),
        ("latency=50%", "latency", 0.5, True),
    ],
)
def test_parse_values(text, metric, value, relative):
    (c,) = parse_budget(text).constraints
    assert c.metric == metric and c.value == pytest.approx(value) and c.relative == relative


def test_several_constraints_and_limits():
    b = parse_budget("flops=50%, params=1M")
    assert b.metrics == ("flops", "params")
    assert b.limits({"flops": 4e6, "params": 3e6}) == {"flops": 2e6, "params": 1e6}


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("flops", "'flops'"),
        ("speed=10ms", "'speed=10ms'"),
        ("latency=10", "'latency=10'"),
        ("flops=10ms", "'flops=10ms'"),
        ("flops=150%", "'flops=150%'"),
        ("flops=50%,flops=40%", "'flops=40%'"),
        ("flops=-3M", "'flops=-3M'"),
        ("", "empty budget"),
    ],
)
def test_malformed_budget_names_the_token(text, names):
    with pytest.raises(UserError, match=names):
        parse_budget(text)


def test_format_cost():
    assert format_cost("flops", 1.82e9) == "1.82G"
    assert format_cost("latency", 9840) == "9.84 ms"
    assert format_cost("latency", 800) == "800 us"


def test_within_and_excess_are_the_one_budget_test():
    """The search's clip, NetAdapt, the measured check and the report all ask these: a cost at its limit (up to the
    rounding of a sum) is within; over it, the excess says by how much, per broken limit."""
    from autoprune.budget import excess, within

    assert within(10.0, 10.0) and within(10.0 + 1e-12, 10.0) and not within(10.01, 10.0)
    assert excess({"flops": 60.0, "latency": 9.0}, {"flops": 50.0, "latency": 10.0}) == {"flops": 1.2}
    assert excess({"flops": 50.0}, {"flops": 50.0}) == {}
