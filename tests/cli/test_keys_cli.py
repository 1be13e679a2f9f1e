"""``mragw keys`` and ``mragw trust``: exit codes, JSON documents, 0600 key files, and nothing
changed on refusal."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_node_cli import init, run


def keys_of(home: Path) -> list[dict[str, Any]]:
    result = run("keys", "list", "--home", str(home), "--json")
    assert result.exit_code == 0, result.output
    return list(json.loads(result.stdout)["keys"])


def version(home: Path) -> int:
    result = run("trust", "show", "--home", str(home), "--json")
    assert result.exit_code == 0, result.output
    return int(json.loads(result.stdout)["trust_version"])


def test_rotate_each_key_then_renew(tmp_path: Path) -> None:
    home = tmp_path / "jp"
    fingerprint = init(home, "JP", 17100)
    (root,) = [k for k in keys_of(home) if k["kind"] == "root"]
    assert root["key_id"] == fingerprint
    (signing,) = [k for k in keys_of(home) if k["kind"] == "signing"]
    assert signing["state"] == "active"

    result = run("keys", "rotate", "--signing", "--home", str(home), "--overlap", "3600", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["trust_version"] == 2
    states = {k["key_id"]: k["state"] for k in keys_of(home) if k["kind"] == "signing"}
    assert states[signing["key_id"]] == "active"
    assert sorted(states.values()) == ["active", "pending"]
    for key in home.glob("keys/**/*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key

    result = run("keys", "rotate", "--tls", "--home", str(home), "--overlap", "3600", "--json")
    assert result.exit_code == 0, result.output
    assert len([k for k in keys_of(home) if k["kind"] == "tls-ca"]) == 2
    for key in (home / "tls" / "next").glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    # A second TLS rotation before the first switched is refused and changes nothing.
    again = run("keys", "rotate", "--tls", "--home", str(home))
    assert again.exit_code == 2
    assert "already pending" in again.stderr
    assert version(home) == 3

    result = run("keys", "rotate", "--root", "--home", str(home), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["root_key"] != fingerprint
    assert len(list((home / "keys").glob("root-retired-*.key"))) == 1

    result = run("trust", "renew", "--home", str(home), "--days", "400", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["trust_version"] == 5
    shown = json.loads(run("trust", "show", "--home", str(home), "--json").stdout)
    assert shown["expiry"]["state"] == "valid"

    # The bundle a new partner would pin still verifies from the original fingerprint.
    out = tmp_path / "jp.bundle"
    exported = run("partner", "export", "--home", str(home), "--out", str(out), "--json")
    assert exported.exit_code == 0, exported.output
    assert json.loads(exported.stdout)["fingerprint"] == json.loads(result.stdout)["root_key"]
    other = tmp_path / "eu"
    init(other, "EU", 17110)
    pinned = run("partner", "add", str(out), "--home", str(other), "--fingerprint", fingerprint)
    assert pinned.exit_code == 0, pinned.output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["keys", "rotate"], "exactly one of"),
        (["keys", "rotate", "--signing", "--root"], "exactly one of"),
        (["keys", "revoke", "00" * 32, "--reason", "lost"], "not a signing key"),
        (["keys", "revoke", "SIGNING", "--reason", "lost"], "last Ed25519 signing key"),
        (["keys", "revoke", "SIGNING", "--reason", "lost", "--from-index", "5"], "log size 0"),
        (["trust", "renew", "--days", "0"], "--days"),
    ],
)
def test_refusals_name_the_problem_and_change_nothing(
    tmp_path: Path, args: list[str], words: str
) -> None:
    home = tmp_path / "jp"
    init(home, "JP", 17120)
    (signing,) = [k["key_id"] for k in keys_of(home) if k["kind"] == "signing"]
    if "--from-index" in args:
        # Another key exists, so only the index is wrong.
        assert run("keys", "rotate", "--signing", "--home", str(home)).exit_code == 0
    before = version(home)
    result = run(*[signing if a == "SIGNING" else a for a in args], "--home", str(home))
    assert result.exit_code == 2, result.output
    assert words in result.output
    assert version(home) == before


def test_status_warns_before_our_statement_expires(tmp_path: Path) -> None:
    home = tmp_path / "jp"
    init(home, "JP", 17140)
    status = json.loads(run("status", "--home", str(home), "--json").stdout)
    assert status["trust"]["state"] == "valid"
    assert run("trust", "renew", "--home", str(home), "--days", "10").exit_code == 0
    status = json.loads(run("status", "--home", str(home), "--json").stdout)
    assert status["trust"]["state"] == "renew_soon"
    assert status["trust"]["version"] == 2
    text = run("status", "--home", str(home))
    assert "WARNING trust statement version 2 of JP expires" in text.stdout


def test_the_root_key_kept_offline_is_asked_for(tmp_path: Path) -> None:
    home = tmp_path / "jp"
    init(home, "JP", 17130)
    offline = tmp_path / "root.key"
    (home / "keys" / "root.key").rename(offline)
    result = run("trust", "renew", "--home", str(home))
    assert result.exit_code == 2
    assert "kept offline" in result.stderr
    assert version(home) == 1
    offline.rename(home / "keys" / "root.key")
    assert run("trust", "renew", "--home", str(home)).exit_code == 0
    assert version(home) == 2
