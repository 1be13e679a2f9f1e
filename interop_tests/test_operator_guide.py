"""docs/operator-guide.md works as written: its tested shell blocks, run in order on two hosts.

A block is tested when its first line is a marker comment::

    # test: HOST [background] [until: REGEX]

``HOST`` is ``eu`` or ``jp``: the block runs with ``bash -euo pipefail`` inside that host's
network namespace, in that administration's working directory, with the venv's ``mragw`` first
on PATH. ``background`` starts it as a long-running process (``mragw serve``) and waits until
``mragw health`` passes; ``until: REGEX`` re-runs the block until its stdout matches (a bounded
deadline, for replication). Blocks without the marker (placeholders, systemd units, PostgreSQL
commands, commands of other sections) are not run.

The out-of-band steps of onboarding are played by the test, as two operators would: a
``*.bundle`` file written on one host is handed to the other, and a fingerprint a block prints
is what the other operator confirmed (``EU_FINGERPRINT`` / ``JP_FINGERPRINT``). The guide's
example host names are mapped to the hosts' addresses. The run ends with the EU gateway
answering RECOGNISED for the record the Japanese gateway published.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from interop_tests.harness import SPEED_ENV, Host, Network

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "operator-guide.md"
BIN = str(Path(sys.executable).parent)
SH_BLOCK = re.compile(r"^[ \t]*```sh\n(?P<body>.*?)^[ \t]*```$", re.M | re.S)
MARKER = re.compile(
    r"#\s*test:\s*(?P<host>\w+)(?P<background>\s+background)?(?:\s+until:\s*(?P<until>.+))?"
)
HOST_NAMES = {"EU": "gw.customs-eu.example", "JP": "gw.customs-jp.example"}
FINGERPRINT = re.compile(r"^[0-9a-f]{64}$", re.M)
UNTIL_DEADLINE_S = 90.0


@dataclass(frozen=True)
class Step:
    host: str
    script: str
    background: bool
    until: str | None


def marked_steps(text: str) -> list[Step]:
    steps = []
    for match in SH_BLOCK.finditer(text):
        lines = [line.strip() for line in match["body"].strip("\n").split("\n")]
        marker = MARKER.fullmatch(lines[0]) if lines else None
        if marker is None:
            continue
        steps.append(
            Step(
                host=marker["host"].upper(),
                script="\n".join(lines[1:]),
                background=marker["background"] is not None,
                until=marker["until"],
            )
        )
    return steps


def test_the_guide_marks_the_whole_journey_for_testing() -> None:
    steps = marked_steps(GUIDE.read_text(encoding="utf-8"))
    scripts = " ".join(s.script for s in steps)
    for command in (
        "mragw init",
        "partner export",
        "partner add",
        "mragw serve",
        "publish",
        "mragw check",
        "mragw backup",
        "mragw restore",
        "db upgrade",
    ):
        assert command in scripts, command
    assert {s.host for s in steps} == {"EU", "JP"}
    assert sum(s.background for s in steps) == 2
    assert steps[-1].host == "JP"


class Operator:
    """One administration's operator: a working directory and a shell on the gateway host."""

    def __init__(self, net: Network, host: Host, site: Path) -> None:
        self.net = net
        self.host = host
        self.site = site
        site.mkdir(parents=True, exist_ok=True)

    def env(self, shared: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MRAGW_")}
        env.update(SPEED_ENV)
        env.update(shared)
        env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
        return env

    def run(self, script: str, shared: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.host.ns, "bash", "-euo", "pipefail", "-c", script],
            cwd=self.site,
            env=self.env(shared),
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    def start(self, script: str, shared: dict[str, str]) -> None:
        assignments = [f"{k}={v}" for k, v in self.env(shared).items() if k.isidentifier()]
        self.net.spawn_in(
            self.host,
            ["env", "-C", str(self.site), *assignments, "bash", "-c", f"exec {script}"],
            self.host.log_path,
        )
        home = f"./{self.host.code.lower()}"
        deadline = time.monotonic() + 60
        while self.run(f"mragw health --home {home}", shared).returncode != 0:
            assert time.monotonic() < deadline, (
                f"{self.host.code}: not healthy\n{self.host.log_text()}"
            )
            time.sleep(0.2)


def test_operator_guide_from_empty_machines_to_two_gateways_exchanging(
    network: Network, tmp_path: Path
) -> None:
    text = GUIDE.read_text(encoding="utf-8")
    operators = {
        code: Operator(network, network.add_host(code), tmp_path / f"{code.lower()}-site")
        for code in ("EU", "JP")
    }
    for code, name in HOST_NAMES.items():
        text = text.replace(name, operators[code].host.addr)
    shared: dict[str, str] = {}
    recognised = False
    for number, step in enumerate(marked_steps(text), start=1):
        operator = operators[step.host]
        where = f"step {number} on {step.host}:\n{step.script}"
        if step.background:
            operator.start(step.script, shared)
            continue
        deadline = time.monotonic() + UNTIL_DEADLINE_S
        while True:
            done = operator.run(step.script, shared)
            assert done.returncode == 0, (
                f"{where}\nexit {done.returncode}\n{done.stderr}{done.stdout}"
            )
            if step.until is None or re.search(step.until, done.stdout, re.M):
                break
            assert time.monotonic() < deadline, (
                f"{where}\nnever matched {step.until!r}:\n{done.stdout}"
            )
            time.sleep(0.5)
        if step.until and "RECOGNISED" in step.until:
            recognised = True
            assert "NOT RECOGNISED" not in done.stdout
        # The out-of-band channel: bundles go to the other operator, a printed fingerprint is
        # what the other operator confirms.
        for bundle in operator.site.glob("*.bundle"):
            for other in operators.values():
                if other is not operator and not (other.site / bundle.name).exists():
                    shutil.copyfile(bundle, other.site / bundle.name)
        printed = FINGERPRINT.findall(done.stdout)
        if "partner export" in step.script and printed:
            shared[f"{step.host}_FINGERPRINT"] = printed[-1]
    assert recognised, "the guide never checked a record across the two gateways"
    assert not (operators["JP"].site / "restore-drill").exists()
    assert list(operators["JP"].site.glob("jp-backup-*.tar"))
