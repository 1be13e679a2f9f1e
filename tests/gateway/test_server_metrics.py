"""The metrics registry and its text exposition, without a network."""

from __future__ import annotations

import pytest

from gateway.server.metrics import Registry
from tests.gateway.test_server_http import parse_exposition


def test_counter_gauge_histogram_render_in_the_text_format() -> None:
    registry = Registry()
    calls = registry.counter("t_calls_total", "Calls.", ("method",))
    depth = registry.gauge("t_depth", "Depth.")
    latency = registry.histogram("t_seconds", "Latency.", ("method",), buckets=(0.1, 1.0))
    calls.inc("a")
    calls.inc("a", amount=2)
    calls.inc('we"ird\\name\n')
    depth.set(3.5)
    depth.dec()
    latency.observe(0.05, "a")
    latency.observe(0.5, "a")
    latency.observe(5.0, "a")
    samples, types = parse_exposition(registry.render())
    assert types == {"t_calls_total": "counter", "t_depth": "gauge", "t_seconds": "histogram"}
    assert samples[("t_calls_total", frozenset({("method", "a")}))] == 3
    # Label values are escaped (backslash, quote, newline) and read back verbatim-escaped.
    assert samples[("t_calls_total", frozenset({("method", 'we\\"ird\\\\name\\n')}))] == 1
    assert samples[("t_depth", frozenset())] == 2.5
    buckets = {
        le: samples[("t_seconds_bucket", frozenset({("method", "a"), ("le", le)}))]
        for le in ("0.1", "1", "+Inf")
    }
    assert buckets == {"0.1": 1, "1": 2, "+Inf": 3}  # cumulative
    assert samples[("t_seconds_count", frozenset({("method", "a")}))] == 3
    assert samples[("t_seconds_sum", frozenset({("method", "a")}))] == pytest.approx(5.55)


def test_help_text_is_escaped() -> None:
    registry = Registry()
    registry.counter("t_total", "line one\nline \\ two")
    assert "# HELP t_total line one\\nline \\\\ two" in registry.render()


@pytest.mark.parametrize(
    ("name", "labels"),
    [("9bad", ()), ("ok_total", ("le",)), ("ok_total", ("__x",)), ("ok_total", ("a", "a"))],
    ids=["name", "reserved-le", "reserved-prefix", "duplicate"],
)
def test_invalid_names_are_refused(name: str, labels: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match=r"not valid|duplicate"):
        Registry().counter(name, "x", labels)


def test_families_are_registered_once_and_take_their_labels() -> None:
    registry = Registry()
    calls = registry.counter("t_total", "x", ("a",))
    with pytest.raises(ValueError, match="already registered"):
        registry.gauge("t_total", "y")
    with pytest.raises(ValueError, match="takes labels"):
        calls.inc()
    with pytest.raises(ValueError, match="only goes up"):
        calls.inc("x", amount=-1)
