"""Progress output: a Rich bar (rate, ETA) on a terminal, nothing with ``--json`` or a pipe.

The terminal is a real pseudo-terminal (``os.openpty``) that ``mragw`` runs in as a child
process, so Rich decides by itself, as it would for an operator, that it may draw.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.cli.registry_cmd import VALIDATE_SPINNER_MIN_BYTES
from gateway.cli.status_watch import CatchUp, format_eta
from tests.gateway.nodes import bulk_records, jsonl

runner = CliRunner()
MRAGW = [sys.executable, "-m", "gateway.cli.main"]
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
# Several chunks, so the bar moves during the publish, not only at its end.
ENV = {"MRAGW_LIMITS__PUBLISH_CHUNK": "500", "COLUMNS": "140", "LINES": "40", "TERM": "xterm"}
RECORDS = 3000


class Terminal:
    """A child process whose stdin, stdout and stderr are one pseudo-terminal."""

    def __init__(self, args: list[str]) -> None:
        leader, follower = os.openpty()
        self._leader = leader
        env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "CI")}
        self.process = subprocess.Popen(
            [*MRAGW, *args],
            stdin=follower,
            stdout=follower,
            stderr=follower,
            env={**env, **ENV},
            close_fds=True,
        )
        os.close(follower)
        self.output = bytearray()

    def read_until(self, done: Callable[[bytes], bool], deadline_s: float = 60) -> bytes:
        """Read until ``done(output)`` or the child closed the terminal; bounded."""
        end = time.monotonic() + deadline_s
        while not done(bytes(self.output)):
            left = end - time.monotonic()
            assert left > 0, f"timed out; output so far: {bytes(self.output)[-2000:]!r}"
            ready, _, _ = select.select([self._leader], [], [], min(left, 1.0))
            if not ready:
                continue
            try:
                chunk = os.read(self._leader, 65536)
            except OSError:  # EIO: the child closed the terminal (it exited)
                break
            if not chunk:
                break
            self.output += chunk
        return bytes(self.output)

    def finish(self, deadline_s: float = 60) -> int:
        self.read_until(lambda _: False, deadline_s)
        code = self.process.wait(timeout=deadline_s)
        os.close(self._leader)
        return code


def run_piped(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*MRAGW, *args], capture_output=True, env={**os.environ, **ENV}, timeout=120, check=False
    )


def init(home: Path, admin: str) -> str:
    listeners = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
    result = runner.invoke(
        app, ["init", "--admin", admin, "--home", str(home), *listeners, "--json"]
    )
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)["fingerprint"])


@pytest.fixture
def eu_home(tmp_path: Path) -> Path:
    home = tmp_path / "eu"
    init(home, "EU")
    return home


@pytest.fixture
def records_file(tmp_path: Path) -> Path:
    file = tmp_path / "records.jsonl"
    file.write_bytes(jsonl(bulk_records(RECORDS)))
    return file


# -- publish -------------------------------------------------------------------------------


def test_publish_on_a_terminal_shows_a_bar_with_rate_and_eta(
    eu_home: Path, records_file: Path
) -> None:
    terminal = Terminal(["publish", str(records_file), "--home", str(eu_home)])
    assert terminal.finish() == 0
    text = ANSI.sub(b"", bytes(terminal.output)).decode()
    assert "publishing" in text
    assert f"{RECORDS}/{RECORDS}" in text
    assert "100%" in text
    assert re.search(r"[\d,]+ records/s", text), text[-1000:]
    assert "ETA" in text
    # The bar was drawn while publishing too, not only once at the end.
    assert re.search(r"\b(500|1000|1500|2000|2500)/3000\b", text), text[-2000:]
    assert f"appended {RECORDS}, duplicates 0, log size {RECORDS}" in text


def test_publish_with_json_on_a_terminal_prints_only_the_document(
    eu_home: Path, records_file: Path
) -> None:
    terminal = Terminal(["publish", str(records_file), "--home", str(eu_home), "--json"])
    assert terminal.finish() == 0
    output = bytes(terminal.output)
    assert b"\x1b[" not in output  # no cursor movement, no colour: nothing drawn
    report = json.loads(output.decode())
    assert (report["appended"], report["tree_size"]) == (RECORDS, RECORDS)


def test_publish_into_a_pipe_prints_no_progress(eu_home: Path, records_file: Path) -> None:
    result = run_piped(["publish", str(records_file), "--home", str(eu_home), "--json"])
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    assert json.loads(result.stdout)["appended"] == RECORDS
    again = run_piped(["publish", str(records_file), "--home", str(eu_home)])
    assert again.returncode == 0, again.stderr
    assert again.stderr == b""  # no bar, no spinner, no escape codes
    assert again.stdout == f"appended 0, duplicates {RECORDS}, log size {RECORDS}\n".encode()


# -- status --watch ------------------------------------------------------------------------


@pytest.fixture
def jp_with_partner(tmp_path: Path, eu_home: Path) -> Path:
    """JP with EU pinned (no gateway running: status comes from the database)."""
    jp = tmp_path / "jp"
    init(jp, "JP")
    bundle = tmp_path / "eu.bundle"
    exported = runner.invoke(
        app, ["partner", "export", "--home", str(eu_home), "--out", str(bundle), "--json"]
    )
    assert exported.exit_code == 0, exported.output
    fingerprint = json.loads(exported.stdout)["fingerprint"]
    added = runner.invoke(
        app, ["partner", "add", str(bundle), "--home", str(jp), "--fingerprint", fingerprint]
    )
    assert added.exit_code == 0, added.output
    return jp


def test_status_watch_on_a_terminal_draws_a_live_view_until_ctrl_c(
    jp_with_partner: Path,
) -> None:
    terminal = Terminal(["status", "--home", str(jp_with_partner), "--watch", "--interval", "0.2"])
    # Two refreshes drawn: the view redraws in place, then Ctrl-C ends it (exit 0).
    terminal.read_until(lambda out: ANSI.sub(b"", out).count(b"JP: log size 0") >= 2)
    terminal.process.send_signal(signal.SIGINT)
    assert terminal.finish() == 0
    text = ANSI.sub(b"", bytes(terminal.output)).decode()
    assert "partner size" in text
    assert "ETA" in text
    assert re.search(r"EU\s+│\s+not connected", text), text[-1500:]
    assert "Traceback" not in text


def test_status_watch_into_a_pipe_prints_plain_lines(jp_with_partner: Path) -> None:
    process = subprocess.Popen(
        [*MRAGW, "status", "--home", str(jp_with_partner), "--watch", "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **ENV},
    )
    assert process.stdout is not None
    lines = [process.stdout.readline() for _ in range(4)]  # two refreshes, blocking reads
    process.send_signal(signal.SIGINT)
    rest, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors
    assert errors == b""
    assert b"\x1b[" not in b"".join(lines) + rest
    assert re.fullmatch(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ JP: log size 0\n", lines[0])
    assert re.fullmatch(
        rb"\S+   EU: not connected, verified 0/0 \(100.0%\), stored 0, rate -, eta -\n", lines[1]
    )
    assert b"rate 0/s" in lines[3]  # second refresh: a rate (nothing moved), still no ETA


def test_status_watch_refuses_json_and_a_bad_interval(jp_with_partner: Path) -> None:
    refused = runner.invoke(app, ["status", "--home", str(jp_with_partner), "--watch", "--json"])
    assert refused.exit_code == 2
    assert "--watch with --json" in refused.stderr
    assert refused.stdout == ""
    bad = runner.invoke(
        app, ["status", "--home", str(jp_with_partner), "--watch", "--interval", "0"]
    )
    assert bad.exit_code == 2
    assert "--interval 0.0" in bad.stderr


def test_catch_up_rate_and_eta_follow_the_verified_entries() -> None:
    catch_up = CatchUp(window=3)

    def report(entries: int, unverified: int, tree_size: int) -> dict[str, object]:
        partner = {"admin": "EU", "entries": entries, "unverified": unverified}
        partner |= {"tree_size": tree_size, "quarantined": False, "suspended": False}
        return {"partners": [{**partner, "connected": True}]}

    (first,) = catch_up.update(report(1000, 1000, 10_000), now=100.0)
    assert (first.verified, first.target, first.rate, first.eta_s) == (0, 10_000, None, None)
    (second,) = catch_up.update(report(3000, 1000, 10_000), now=102.0)
    assert second.rate == 1000.0  # 2000 verified in 2 s
    assert second.eta_s == 8.0  # 8000 left
    assert format_eta(second.eta_s) == "0:08"
    catch_up.update(report(5000, 0, 10_000), now=104.0)
    (fourth,) = catch_up.update(report(10_000, 0, 10_000), now=106.0)
    assert fourth.rate == 2000.0  # the window of 3 starts at t=102: 8000 more in 4 s
    assert fourth.eta_s is None  # caught up
    assert fourth.fraction == 1.0
    # Stored ahead of a stale checkpoint: the target is what we hold, never less.
    (ahead,) = catch_up.update(report(12_000, 0, 10_000), now=107.0)
    assert ahead.target == 12_000
    # A replica that went back (re-pinned) starts the rate afresh.
    (reset,) = catch_up.update(report(10, 0, 10_000), now=108.0)
    assert reset.rate is None
    assert format_eta(3725.4) == "1:02:05"


# -- registry validate ---------------------------------------------------------------------


@pytest.fixture
def large_dataset(tmp_path: Path) -> Path:
    """A valid dataset over the spinner threshold: the packaged one, arrangements repeated
    under new ids."""
    document = json.loads(resources.files("registry").joinpath("data/mra-facts.json").read_bytes())
    originals = list(document["arrangements"])
    copy = 0
    while len(json.dumps(document)) < VALIDATE_SPINNER_MIN_BYTES * 1.2:
        copy += 1
        document["arrangements"].extend({**a, "id": f"{a['id']}-c{copy}"} for a in originals)
    file = tmp_path / "large-facts.json"
    file.write_text(json.dumps(document), encoding="utf-8")
    return file


def test_registry_validate_of_a_large_file_shows_activity_only_on_a_terminal(
    large_dataset: Path,
) -> None:
    terminal = Terminal(["registry", "validate", str(large_dataset)])
    assert terminal.finish() == 0
    text = ANSI.sub(b"", bytes(terminal.output)).decode()
    assert f"validating {large_dataset.name}" in text
    assert f"{large_dataset}: valid" in text
    as_json = Terminal(["registry", "validate", str(large_dataset), "--json"])
    assert as_json.finish() == 0
    assert json.loads(bytes(as_json.output).decode())["valid"] is True
    piped = run_piped(["registry", "validate", str(large_dataset)])
    assert piped.returncode == 0
    assert piped.stderr == b""
    assert piped.stdout.startswith(f"{large_dataset}: valid".encode())
