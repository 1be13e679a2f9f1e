"""`mragw demo`: three real gateway processes, end to end, cleaned up afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_runs_end_to_end_and_cleans_up(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "COLUMNS": "160"}
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", "demo"],
        capture_output=True, text=True, timeout=240, env=env, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    # The answers the arrangements dictate (EU-JP and US-EU recognise only AEOS/AEOF holders;
    # the EU recognises C-TPAT from 2013-01-31; no consent means no disclosure).
    assert "yes, EU-JP" in out
    assert "no, UNKNOWN_OPERATOR" in out
    assert "no, NOT_YET_EFFECTIVE" in out
    assert "STATUS_NOT_ACTIVE" in out
    assert "unexpected answers" not in out
    # The rotation step: partners followed the new statement; the evidence step verified.
    assert "followed to statement v2" in out
    assert "VERIFIED: evidence produced by JP" in out
    # Every gateway was stopped and the temporary directory removed.
    assert not any(p.name.startswith("mragw-demo-") for p in tmp_path.iterdir())
