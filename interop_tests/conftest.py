"""Shared fixtures: a per-test network of hosts, torn down even when the test fails, with
every host's log attached to the report of a failed test."""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

from interop_tests.harness import Network, netns_unavailable

_UNAVAILABLE: list[str | None] = []


def _why_unavailable() -> str | None:
    if not _UNAVAILABLE:
        _UNAVAILABLE.append(netns_unavailable())
    return _UNAVAILABLE[0]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    rep: pytest.TestReport = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
    net: Network | None = getattr(item, "_mragw_network", None)
    if net is not None and rep.failed and rep.when in ("setup", "call"):
        rep.sections.append(("mragw host logs", net.logs()))


@pytest.fixture
def network(request: pytest.FixtureRequest, tmp_path: Path) -> Generator[Network, None, None]:
    """A bridge and namespaces for this test; build hosts with ``network.build([...])``."""
    why = _why_unavailable()
    if why is not None:
        if os.environ.get("MRAGW_REQUIRE_NETNS") == "1":
            pytest.fail(f"MRAGW_REQUIRE_NETNS=1 but {why}")
        pytest.skip(why)
    net = Network(tmp_path)
    request.node._mragw_network = net
    try:
        net.setup()
        yield net
    finally:
        net.close()


_TIMINGS: list[tuple[str, str, object]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Collect the convergence times tests record (``record_property(..._s, value)``)."""
    if report.when == "call":
        for name, value in report.user_properties:
            if name.endswith("_s"):
                _TIMINGS.append((report.nodeid, name, value))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print them in every run (CI included), not only with ``-s``."""
    if _TIMINGS:
        terminalreporter.section("interop convergence times")
        for nodeid, name, value in _TIMINGS:
            terminalreporter.write_line(f"{name} = {value} s  ({nodeid})")
