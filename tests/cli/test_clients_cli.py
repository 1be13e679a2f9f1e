"""``mragw clients add|list|revoke``: files, modes, the table, the audit trail, and refusals
that leave no state behind. On a SQLite node and on a PostgreSQL node."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from sqlalchemy import select

import gateway.clients
from crypto.keys import PublicKey, load_private_key
from crypto.pki import verify_issued_by
from gateway.node import Node
from gateway.storage.schema import local_clients, node_state
from tests.cli.test_node_cli import run
from tests.gateway.conftest import fresh_pg_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def home(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    db = "" if request.param == "sqlite" else asyncio.run(fresh_pg_database())
    home = tmp_path / "jp"
    result = run(
        "init", "--admin", "JP", "--home", str(home), "--listen", "127.0.0.1:0",
        "--admin-listen", "127.0.0.1:0", "--db", db,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return home


def clients(home: Path, *args: str) -> Any:
    return run("clients", *args, "--home", str(home))


def add(home: Path, name: str, role: str, out: Path, *extra: str) -> Any:
    return clients(home, "add", name, "--role", role, "--out", str(out), *extra)


async def _table_state(home: Path) -> tuple[list[tuple[Any, ...]], int]:
    node = Node.open(home, environ={})
    try:
        async with node.engine.connect() as conn:
            rows = [tuple(r) for r in (await conn.execute(select(local_clients))).all()]
            bumps = (
                await conn.execute(select(node_state.c.value).where(node_state.c.key == "clients"))
            ).scalar_one_or_none()
    finally:
        await node.close()
    return rows, int(bumps or 0)


def state(home: Path) -> tuple[list[tuple[Any, ...]], int, str]:
    """Everything a refused command must leave alone: client rows, the clients counter a
    running gateway watches, and the audit trail."""
    rows, bumps = asyncio.run(_table_state(home))
    trail = run("audit", "--home", str(home), "--json")
    assert trail.exit_code == 0, trail.output
    return rows, bumps, trail.stdout


def test_add_issues_a_role_certificate_from_the_node_ca(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "handover" / "border-police"  # missing parents are made
    result = add(home, "border-police", "agency", out, "--days", "30", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert sorted(p.name for p in out.iterdir()) == ["ca.pem", "client.key", "client.pem"]
    assert stat.S_IMODE((out / "client.key").stat().st_mode) == 0o600
    assert report["files"]["key"] == str(out / "client.key")
    cert = x509.load_pem_x509_certificate((out / "client.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    node_ca = x509.load_pem_x509_certificate((home / "tls" / "ca.pem").read_bytes())
    assert ca == node_ca
    now = dt.datetime.now(tz=dt.UTC)
    assert verify_issued_by(cert, node_ca, now=now, expected_code="JP") == ("JP", "agency")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "border-police"
    assert dt.timedelta(days=29) < cert.not_valid_after_utc - now <= dt.timedelta(days=30)
    key = load_private_key(out / "client.key")  # unencrypted: the client must use it as is
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert key.public_key.key_id == PublicKey.from_der(spki).key_id  # the key of the certificate
    assert report["fingerprint"] == cert.fingerprint(hashes.SHA256()).hex()
    assert (report["name"], report["role"], report["state"]) == (
        "border-police",
        "agency",
        "active",
    )

    listed = clients(home, "list", "--json")
    assert listed.exit_code == 0
    [row] = json.loads(listed.stdout)["clients"]
    assert {k: row[k] for k in ("name", "role", "state", "fingerprint", "serial")} == {
        k: report[k] for k in ("name", "role", "state", "fingerprint", "serial")
    }
    assert int(row["serial"], 16) == cert.serial_number
    trail = json.loads(run("audit", "--home", str(home), "--json").stdout)
    added = trail["actions"][-1]
    assert (added["actor"], added["action"]) == ("cli", "clients.add")
    assert added["detail"]["name"] == "border-police"
    assert added["detail"]["fingerprint"] == report["fingerprint"]
    assert trail["chain"]["intact"] is True
    # An agency client's checks are audited under a keyed hash: its key exists from now on.
    assert stat.S_IMODE((home / "keys" / "audit-operator.key").stat().st_mode) == 0o600


def test_revoke_is_audited_and_shown_in_list(home: Path, tmp_path: Path) -> None:
    assert add(home, "risk-1", "risk-engine", tmp_path / "r").exit_code == 0
    result = clients(home, "revoke", "risk-1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["state"] == "revoked"
    [row] = json.loads(clients(home, "list", "--json").stdout)["clients"]
    assert row["state"] == "revoked"
    assert row["revoked_at"] is not None
    text = run("audit", "--home", str(home))
    assert text.exit_code == 0
    lines = text.stdout.splitlines()
    assert " cli clients.revoke " in lines[-2]
    assert '"name":"risk-1"' in lines[-2]
    assert lines[-1] == "chain intact: 3 action(s)"


def _file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("x")
    return path


def _non_empty(tmp_path: Path) -> Path:
    folder = tmp_path / "used"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")
    return folder


@pytest.mark.parametrize(
    ("name", "role", "out", "extra", "message"),
    [
        ("Border Police", "agency", None, (), "client name 'Border Police'"),
        ("../escape", "agency", None, (), "client name '../escape'"),
        ("x" * 65, "agency", None, (), "client name"),
        ("_under", "agency", None, (), "client name '_under'"),
        ("ok", "query", None, (), "--role 'query': unknown"),
        ("ok", "superuser", None, (), "--role 'superuser': unknown"),
        ("ok", "agency", _non_empty, (), "folder is not empty"),
        ("ok", "agency", _file, (), "exists and is not a folder"),
        ("ok", "agency", lambda t: _file(t) / "sub", (), "cannot create it"),
        ("ok", "agency", None, ("--days", "0"), "--days 0"),
        ("ok", "agency", None, ("--days", "99999"), "--days 99999"),
        ("first", "agency", None, (), "client 'first' already exists"),
    ],
    ids=[
        "space-upper", "path", "too-long", "leading-underscore", "legacy-role", "unknown-role",
        "out-not-empty", "out-is-file", "out-under-file", "days-zero", "days-huge", "existing",
    ],
)  # fmt: skip
def test_bad_add_is_refused_with_no_state_change(  # noqa: PLR0917 - parametrised
    home: Path, tmp_path: Path, name: str, role: str, out: Any, extra: tuple[str, ...],
    message: str,
) -> None:  # fmt: skip
    assert add(home, "first", "risk-engine", tmp_path / "first").exit_code == 0
    target = out(tmp_path) if out is not None else tmp_path / "new"
    listing = sorted(tmp_path.rglob("*"))
    before = state(home)
    result = add(home, name, role, target, *extra)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert state(home) == before
    assert sorted(tmp_path.rglob("*")) == listing  # no file or folder left behind


def test_a_failed_write_rolls_the_row_back_and_removes_the_files(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = open

    def failing_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if str(path).endswith("ca.pem") and mode == "xb":
            raise OSError(28, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(gateway.clients, "open", failing_open, raising=False)
    before = state(home)
    out = tmp_path / "deep" / "out"
    result = add(home, "border-police", "agency", out)
    assert result.exit_code == 2
    assert "cannot write: No space left on device" in result.stderr
    assert state(home) == before
    assert not (tmp_path / "deep").exists()  # the key and certificate written first are gone


@pytest.mark.parametrize(
    ("name", "message"),
    [("nobody", "client 'nobody': no such client"), ("Bad Name", "client name 'Bad Name'")],
)
def test_bad_revoke_is_refused_with_no_state_change(
    home: Path, tmp_path: Path, name: str, message: str
) -> None:
    assert add(home, "risk-1", "risk-engine", tmp_path / "r").exit_code == 0
    before = state(home)
    result = clients(home, "revoke", name)
    assert result.exit_code == 2
    assert message in result.stderr
    assert state(home) == before


def test_revoking_twice_is_refused_the_second_time(home: Path, tmp_path: Path) -> None:
    assert add(home, "risk-1", "risk-engine", tmp_path / "r").exit_code == 0
    assert clients(home, "revoke", "risk-1").exit_code == 0
    before = state(home)
    again = clients(home, "revoke", "risk-1")
    assert again.exit_code == 2
    assert "client 'risk-1': already revoked at " in again.stderr
    assert state(home) == before
    # A revoked name stays taken, so the audit trail's names stay unambiguous.
    reuse = add(home, "risk-1", "risk-engine", tmp_path / "r2")
    assert reuse.exit_code == 2
    assert "already exists" in reuse.stderr


def test_audit_operator_filter_needs_the_homes_key(home: Path) -> None:
    result = run("audit", "--home", str(home), "--operator", "DE000000000000003")
    assert result.exit_code == 2
    assert "no audit operator key in this home" in result.stderr
    empty = run("audit", "--home", str(home), "--operator", "   ")
    assert empty.exit_code == 2
    assert "--operator: empty identifier" in empty.stderr
