"""The status page of a real gateway, rendered by a real headless Chromium.

JP is a real gateway replicating from a hostile EU (the fake of ``test_hostile_partner``, with
EU's genuine keys and certificate): EU serves part of a checkpoint honestly, so JP lags behind
it, then a tampered entry, so JP rejects the batch and quarantines EU. The page must show that
row, the lag, the rejection and today's recognition graph, with no console error and no CSP
violation, and a screenshot is saved to the test's tmp dir.

Chromium is Debian's (``chromium``, ``chromium-driver``) driven by selenium; it is confined to
loopback (every host name but 127.0.0.1 fails to resolve; background networking, component
updates, sync and the like are off) and runs with a temporary profile. Without Chromium the
test is skipped, except with ``MRAGW_REQUIRE_CHROMIUM=1`` (CI), where it fails instead.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.nodes import eventually
from tests.gateway.test_hostile_partner import HONEST_START, hostile_world

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Everything Chromium would do on its own beyond loading our page, off.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--window-size=1400,1800",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-breakpad",
    "--metrics-recording-only",
    "--safebrowsing-disable-auto-update",
    "--password-store=basic",
    "--use-mock-keychain",
    "--no-proxy-server",
    "--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication,"
    "CertificateTransparencyComponentUpdater,InterestFeedContentSuggestions",
    # Any name but loopback fails to resolve: the browser cannot reach anything else.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    problem = None
    if browser is None or driver is None:
        problem = "Debian chromium and chromium-driver are not installed"
    else:
        try:
            import selenium  # noqa: F401, PLC0415 - only this test needs it
        except ImportError:
            problem = "selenium is not installed (pip install -e '.[dev]')"
    if problem is not None:
        if os.environ.get("MRAGW_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"MRAGW_REQUIRE_CHROMIUM=1 but {problem}")
        pytest.skip(problem)
    assert browser is not None
    assert driver is not None
    return browser, driver


@pytest.fixture
def chromium(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    browser, driver_path = _chromium()
    from selenium import webdriver  # noqa: PLC0415
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    # Selenium's own usage statistics and driver downloads: never (the driver path is given).
    monkeypatch.setenv("SE_AVOID_STATS", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        options=options, service=Service(executable_path=driver_path, log_output=os.devnull)
    )
    try:
        yield driver
    finally:
        driver.quit()


def _tampered_tail(world: Any) -> list[Any]:
    """EU's entries 6..7 under its checkpoint of size 8: 6 honestly (JP then holds 7 of 8: a
    lag of one entry), 7 with its envelope edited after signing (the proof breaks)."""
    honest = world.log.batch(HONEST_START, HONEST_START + 1, world.log.size)
    bad = world.log.batch(HONEST_START + 1, world.log.size)
    envelope = bad.batch.entries[0].envelope
    middle = len(envelope) // 2
    bad.batch.entries[0].envelope = (
        envelope[:middle] + bytes([envelope[middle] ^ 1]) + envelope[middle + 1 :]
    )
    return [honest, bad]


async def test_status_page_in_headless_chromium(chromium: Any, db_url: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By  # noqa: PLC0415

    async with hostile_world(tmp_path, db_url) as world:
        for message in _tampered_tail(world):
            await world.fake.queue.put(message)
        reason = await world.quarantined("bad_proof")
        status = world.gateway.replication.status("EU")
        assert status is not None
        assert [kind for _, kind, _ in status.recent_faults] == ["bad_proof"]

        async def lag_shown() -> dict[str, Any]:
            report = await world.gateway.status()
            (eu,) = report["partners"]
            assert eu["lag_entries"] == 1, eu
            return report

        report = await eventually(lag_shown)
        url = world.gateway.server.listeners.http_url
        assert url.startswith("http://127.0.0.1:")

        # The browser blocks; the gateway keeps serving on this loop meanwhile.
        def load() -> tuple[dict[str, Any], list[dict[str, Any]], bytes]:
            chromium.get(url + "/")
            rows = chromium.find_elements(By.CSS_SELECTOR, "#partners tbody tr[data-admin]")
            cells = {
                cell.get_attribute("class"): cell.text
                for cell in rows[0].find_elements(By.TAG_NAME, "td")
            }
            rejections = [
                {
                    cell.get_attribute("class"): cell.text
                    for cell in row.find_elements(By.TAG_NAME, "td")
                }
                for row in chromium.find_elements(By.CSS_SELECTOR, "#rejections tbody tr")
            ]
            graph = chromium.find_element(By.CSS_SELECTOR, "#graph svg")
            assert graph.size["width"] > 300
            assert graph.size["height"] > 300
            labels = {
                e.get_attribute("data-id")
                for e in graph.find_elements(By.CSS_SELECTOR, "text.node")
            }
            assert "JP" in labels  # the graph is drawn around this administration
            assert "Recognition network on" in graph.text
            cells["_rows"] = str(len(rows))
            shot = tmp_path / "status-page.png"
            assert chromium.save_screenshot(str(shot))
            return cells, rejections, shot.read_bytes()

        cells, rejections, png = await asyncio.to_thread(load)
        logs = await asyncio.to_thread(chromium.get_log, "browser")

        # The log channel works: a page that does fail to load is reported there.
        def load_missing() -> list[dict[str, Any]]:
            chromium.get(url + "/no-such-page")
            return list(chromium.get_log("browser"))

        missing = await asyncio.to_thread(load_missing)

    assert cells["_rows"] == "1"
    assert cells["admin"] == "EU"
    assert cells["state"] == "quarantined"
    assert cells["lag_entries"] == "1"
    assert float(cells["lag_s"]) >= 0
    assert cells["last_checkpoint"].startswith("size 8, root ")
    assert "bad_proof" in cells["reason"]
    assert reason.startswith(cells["reason"][:20])
    assert [r["kind"] for r in rejections] == ["bad_proof"]
    assert rejections[0]["partner"] == "EU"
    assert rejections[0]["message"]
    assert report["rejections"][0]["message"] == rejections[0]["message"]
    # No console error, no CSP violation ("Refused to ..."), no failed load of anything.
    problems = [e for e in logs if e.get("level") in {"SEVERE", "WARNING"}]
    assert problems == [], problems
    assert any("404" in e.get("message", "") for e in missing), missing
    assert png.startswith(PNG_MAGIC)
    assert len(png) > 10_000  # a rendered page, not an empty canvas
    assert (tmp_path / "status-page.png").stat().st_size == len(png)
