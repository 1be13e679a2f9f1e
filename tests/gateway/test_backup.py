"""``mragw backup`` / ``restore``: a consistent copy of a serving node, and a restore that
checks every byte before it writes anything.

The node lives in its home with the default SQLite file (as ``mragw init`` makes it); a real
gateway serves it over mTLS and publishes while backups are taken. The restored node's log is
verified entry by entry against the manifest's root, and the restored node serves and answers
Check over mTLS with the restored admin certificate.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from crypto.merkle import verify_inclusion
from gateway.backup import (
    DATABASE_MEMBER,
    MANIFEST,
    MANIFEST_DIGEST,
    BackupError,
    Manifest,
    RollbackRefusedError,
    backup_node,
    restore_node,
)
from gateway.issuer_log import IssuerLog
from gateway.node import Node, initialise_node
from gateway.serve import Gateway
from gateway.server.tls import local_channel
from gateway.services.query_service import document_from_response
from gateway.storage.schema import entries
from gateway.storage.tiles import inclusion_proof
from mra.v1 import query_pb2, query_pb2_grpc
from tests.gateway.conftest import fresh_pg_database
from tests.gateway.nodes import (
    FAST_ENV,
    assert_log_consistent,
    cluster_of,
    eventually,
    log_head,
    partner_row,
    records_of,
)


def eu_records(start: int, count: int) -> list[dict[str, Any]]:
    """Distinct valid EU status records numbered from ``start`` (batches never collide)."""
    return [
        {
            "kind": "aeo_status",
            "issuer": "DE",
            "operator_ids": [{"scheme": "EORI", "value": f"DE7{n:012d}"}],
            "name": f"Operator {n}",
            "country": "DE",
            "authorisation": f"DEAEOF{n:08d}",
            "type": "AEOF",
            "status": "ACTIVE",
            "status_date": "2020-01-01",
            "valid_from": "2020-01-01",
            "valid_until": None,
            "last_validation": "2020-01-01",
            "consent": True,
            "audience": [],
        }
        for n in range(start, start + count)
    ]


async def make_node(home: Path) -> Node:
    await initialise_node(
        admin="EU",
        home=home,
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        db_url="",  # the default: mragw.db in the home, what a backup copies
    )
    return Node.open(home, environ=dict(FAST_ENV))


async def publish(node: Node, start: int, count: int) -> int:
    result = await IssuerLog(node).publish(
        records_of(eu_records(start, count), "eu"), actor="test", source="eu.jsonl"
    )
    return int(result.tree_size)


@pytest.fixture
async def eu(tmp_path: Path) -> AsyncIterator[Node]:
    node = await make_node(tmp_path / "eu")
    try:
        yield node
    finally:
        await node.close()


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


async def verify_restored_log(node: Node, manifest: Manifest) -> None:
    """Every entry of the restored log proves its inclusion under the manifest's root."""
    head = await assert_log_consistent(node, "EU")
    assert (head.size, head.root.hex()) == (manifest.log.size, manifest.log.root)
    root = bytes.fromhex(manifest.log.root)
    async with node.engine.connect() as conn:
        leaves = [
            bytes(h)
            for h in (
                await conn.execute(
                    select(entries.c.leaf_hash).where(entries.c.log == "EU").order_by(entries.c.idx)
                )
            ).scalars()
        ]
        for index, leaf in enumerate(leaves):
            proof = await inclusion_proof(conn, "EU", index, head.size)
            verify_inclusion(leaf, index, head.size, proof, root)


async def check_over_mtls(node: Node, operator: str) -> dict[str, Any]:
    gateway = Gateway(node)
    listeners = await gateway.server.start()
    try:
        async with local_channel(node, listeners.admin_target) as channel:
            response = await query_pb2_grpc.QueryServiceStub(channel).Check(
                query_pb2.CheckRequest(operator_id=operator, issuer="EU", at="2024-01-15"),
                timeout=20,
            )
        return dict(document_from_response(response))
    finally:
        await gateway.server.stop(0.2)


async def test_backup_of_a_serving_publishing_node_restores_a_verifiable_node(
    eu: Node, tmp_path: Path
) -> None:
    await publish(eu, 0, 50)
    gateway = Gateway(eu)
    await gateway.server.start()
    stop = asyncio.Event()
    under_way = asyncio.Event()
    sizes: list[int] = []

    async def keep_publishing() -> None:
        start = 1000
        while not stop.is_set():
            sizes.append(await publish(eu, start, 40))
            start += 40
            if len(sizes) == 2:
                under_way.set()

    publisher = asyncio.create_task(keep_publishing())
    archives = []
    try:
        await asyncio.wait_for(under_way.wait(), 60)
        for n in range(3):
            out = tmp_path / f"eu-{n}.tar"
            report = await asyncio.to_thread(backup_node, eu.config.home, out, environ={})
            archives.append(report)
    finally:
        stop.set()
        await publisher
        await gateway.server.stop(0.2)
    final = (await log_head(eu, "EU")).size
    assert final > 50
    # Each copy is a state the log really passed through, taken while appends went on.
    for report in archives:
        assert 50 <= report.manifest.log.size <= final
        assert stat.S_IMODE(report.archive.stat().st_mode) == 0o600
        assert report.sha256 == hashlib.sha256(report.archive.read_bytes()).hexdigest()
        assert report.manifest.schema_revision
        names = {m.name for m in report.manifest.members}
        assert {"home/mragw.toml", DATABASE_MEMBER, "home/keys/root.key"} <= names
        assert not any(n.startswith("home/run") for n in names)

    chosen = archives[-1]
    restored_home = tmp_path / "restored"
    result = restore_node(chosen.archive, restored_home, accept_rollback=True)
    assert result.manifest == chosen.manifest
    for key in [*restored_home.glob("keys/**/*.key"), *restored_home.glob("tls/*.key")]:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert stat.S_IMODE(restored_home.stat().st_mode) == 0o700
    restored = Node.open(restored_home, environ=dict(FAST_ENV))
    try:
        await verify_restored_log(restored, chosen.manifest)
        assert await restored.root_fingerprint() == await eu.root_fingerprint()
        answer = await check_over_mtls(restored, "DE7000000000007")
        assert answer["recognised"] is True, answer
        assert answer["operator"]["name"] == "Operator 7"
        assert [(t["status"], t["leaf_index"]) for t in answer["types"]] == [("ACTIVE", 7)]
    finally:
        await restored.close()


async def test_restore_refuses_a_rollback_of_the_home_it_replaces(eu: Node, tmp_path: Path) -> None:
    await publish(eu, 0, 10)
    older = backup_node(eu.config.home, tmp_path / "old.tar", environ={})
    size = await publish(eu, 100, 5)
    same = backup_node(eu.config.home, tmp_path / "same.tar", environ={})
    await eu.close()
    before = listing(eu.config.home)

    with pytest.raises(RollbackRefusedError) as refused:
        restore_node(older.archive, eu.config.home, force=True)
    message = str(refused.value)
    assert f"holds {size} entries" in message
    assert "backup only 10" in message
    assert "--accept-rollback" in message
    assert listing(eu.config.home) == before
    assert (await log_head(eu, "EU")).size == size
    assert not [name for name in listing(tmp_path) if ".restore-" in name]

    # The same log (no entry lost) needs no confirmation; the replaced home is kept aside.
    done = restore_node(same.archive, eu.config.home, force=True)
    assert done.replaced is not None
    assert (done.replaced / "mragw.toml").is_file()
    assert (await log_head(Node.open(eu.config.home, environ={}), "EU")).size == size

    accepted = restore_node(older.archive, eu.config.home, force=True, accept_rollback=True)
    assert accepted.rollback_accepted
    node = Node.open(eu.config.home, environ={})
    try:
        assert (await log_head(node, "EU")).size == 10
    finally:
        await node.close()


async def test_restore_refuses_a_home_that_is_not_empty_or_is_served(
    eu: Node, tmp_path: Path
) -> None:
    report = backup_node(eu.config.home, tmp_path / "eu.tar", environ={})
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(BackupError, match="not empty; restore into an empty folder or use --force"):
        restore_node(report.archive, occupied, accept_rollback=True)
    assert listing(occupied) == ["notes.txt"]

    gateway = Gateway(eu)
    await gateway.server.start()
    try:
        with pytest.raises(BackupError, match=r"a gateway \(pid \d+\) is running on this home"):
            restore_node(report.archive, eu.config.home, force=True, accept_rollback=True)
    finally:
        await gateway.server.stop(0.2)


async def test_restore_checks_the_archive_sha256_when_given(eu: Node, tmp_path: Path) -> None:
    report = backup_node(eu.config.home, tmp_path / "eu.tar", environ={})
    with pytest.raises(BackupError, match=r"not the 0+ given by --sha256"):
        restore_node(report.archive, tmp_path / "r", accept_rollback=True, expect_sha256="0" * 64)
    assert not (tmp_path / "r").exists()
    restore_node(report.archive, tmp_path / "r", accept_rollback=True, expect_sha256=report.sha256)
    assert (tmp_path / "r" / "mragw.toml").is_file()


# -- tampered archives: refused with a clear error, nothing written ------------------------


@pytest.fixture
async def archive(eu: Node, tmp_path: Path) -> Path:
    await publish(eu, 0, 5)
    return backup_node(eu.config.home, tmp_path / "eu.tar", environ={}).archive


def members_of(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tar:
        out = []
        for info in tar.getmembers():
            handle = tar.extractfile(info)
            out.append((info, handle.read() if handle else b""))
        return out


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def with_manifest(
    members: list[tuple[tarfile.TarInfo, bytes]], change: Callable[[dict[str, Any]], None]
) -> list[tuple[tarfile.TarInfo, bytes]]:
    """The members with the manifest edited and its digest member recomputed to match (what
    an attacker who understands the format would do)."""
    out = []
    for info, data in members:
        if info.name != MANIFEST:
            out.append((info, data))
            continue
        doc = json.loads(data)
        change(doc)
        body = json.dumps(doc).encode()
        edited = copy.copy(info)
        edited.size = len(body)
        out[0] = (out[0][0], hashlib.sha256(body).hexdigest().encode() + b"\n")
        out.append((edited, body))
    return out


def assert_refused(archive_path: Path, target: Path, match: str) -> None:
    parent_before = listing(target.parent)
    with pytest.raises(BackupError, match=match):
        restore_node(archive_path, target, accept_rollback=True)
    assert not target.exists()
    assert listing(target.parent) == parent_before


def member_names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


async def test_one_byte_changed_in_any_member_is_refused(archive: Path, tmp_path: Path) -> None:
    one_byte_changes_are_refused(archive, tmp_path)


def one_byte_changes_are_refused(archive: Path, tmp_path: Path) -> None:
    names = member_names(archive)
    assert names[:2] == [MANIFEST_DIGEST, MANIFEST]
    assert DATABASE_MEMBER in names
    with tarfile.open(archive) as tar:
        offsets = {i.name: (i.offset_data, i.size) for i in tar.getmembers()}
    original = archive.read_bytes()
    for name in names:
        offset, size = offsets[name]
        tampered = bytearray(original)
        # A byte in the middle of the member: for the digest member a hex digit, for the
        # manifest a character of its JSON, elsewhere key, certificate or database bytes.
        position = offset + size // 2
        tampered[position] = ord("0") if tampered[position] != ord("0") else ord("1")
        path = tmp_path / f"tampered-{names.index(name)}.tar"
        path.write_bytes(bytes(tampered))
        expected = (
            f"{MANIFEST}: SHA-256 does not match"
            if name in (MANIFEST, MANIFEST_DIGEST)
            else f"member {name}: SHA-256 .* does not match"
        )
        assert_refused(path, tmp_path / "target", expected)


async def test_path_traversal_member_names_are_refused(archive: Path, tmp_path: Path) -> None:
    members = members_of(archive)
    # A member smuggled in that the manifest does not list.
    evil = tarfile.TarInfo("home/keys/../../../evil")
    evil.size = 4
    smuggled = write_tar(tmp_path / "smuggled.tar", [*members, (evil, b"evil")])
    assert_refused(smuggled, tmp_path / "target", "unsafe path")

    # Or listed by a manifest rewritten to match it.
    def traverse(doc: dict[str, Any]) -> None:
        doc["members"][0]["name"] = "home/../../evil"

    listed = write_tar(tmp_path / "listed.tar", with_manifest(members, traverse))
    assert_refused(listed, tmp_path / "target", "unsafe path")
    absolute = tarfile.TarInfo("/etc/evil")
    absolute.size = 4
    assert_refused(
        write_tar(tmp_path / "absolute.tar", [*members[:2], (absolute, b"evil"), *members[2:]]),
        tmp_path / "target",
        "unsafe path",
    )
    assert not (tmp_path / "evil").exists()


async def test_a_symlink_member_is_refused(archive: Path, tmp_path: Path) -> None:
    members = members_of(archive)
    link = tarfile.TarInfo("home/keys/root.key")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    replaced = [(link, b"") if i.name == "home/keys/root.key" else (i, d) for i, d in members]
    assert_refused(
        write_tar(tmp_path / "symlink.tar", replaced),
        tmp_path / "target",
        "member 'home/keys/root.key' is a symbolic link",
    )


async def test_an_oversized_member_is_refused(archive: Path, tmp_path: Path) -> None:
    members = members_of(archive)
    big = b"k" * (1024 * 1024 + 1)
    out = []
    for info, data in members:
        if info.name != "home/keys/root.key":
            out.append((info, data))
            continue
        grown = copy.copy(info)
        grown.size = len(big)
        out.append((grown, big))

    def grow(doc: dict[str, Any]) -> None:
        for member in doc["members"]:
            if member["name"] == "home/keys/root.key":
                member["size"] = len(big)
                member["sha256"] = hashlib.sha256(big).hexdigest()

    assert_refused(
        write_tar(tmp_path / "big.tar", with_manifest(out, grow)),
        tmp_path / "target",
        "member home/keys/root.key of 1048577 bytes is larger than 1048576 bytes",
    )


async def test_a_truncated_or_foreign_archive_is_refused(archive: Path, tmp_path: Path) -> None:
    truncated_or_foreign_archives_are_refused(archive, tmp_path)


def truncated_or_foreign_archives_are_refused(archive: Path, tmp_path: Path) -> None:
    data = archive.read_bytes()
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(data[: len(data) // 2])
    assert_refused(truncated, tmp_path / "target", "truncated|damaged|lacks members")
    foreign = tmp_path / "foreign.tar"
    foreign.write_bytes(b"not a tar at all" * 100)
    assert_refused(foreign, tmp_path / "target", "not a backup archive|damaged|first member")


async def test_a_manifest_that_lies_about_the_log_is_refused(archive: Path, tmp_path: Path) -> None:
    def lie(doc: dict[str, Any]) -> None:
        doc["log"]["size"] = doc["log"]["size"] + 1

    assert_refused(
        write_tar(tmp_path / "lie.tar", with_manifest(members_of(archive), lie)),
        tmp_path / "target",
        "log size 5 root .*, the manifest says 6",
    )


async def test_the_backup_never_overwrites_and_keeps_no_partial_file(
    eu: Node, tmp_path: Path
) -> None:
    out = tmp_path / "eu.tar"
    out.write_bytes(b"precious")
    with pytest.raises(BackupError, match="exists; choose a new file"):
        backup_node(eu.config.home, out, environ={})
    assert out.read_bytes() == b"precious"
    link = eu.config.home / "keys" / "elsewhere.key"
    os.symlink("/etc/hostname", link)
    with pytest.raises(BackupError, match="a symbolic link in the node home"):
        backup_node(eu.config.home, tmp_path / "new.tar", environ={})
    assert not [name for name in listing(tmp_path) if name.startswith(".")]
    link.unlink()


@pytest.mark.postgres
async def test_a_postgresql_node_backs_up_its_home_and_says_how_to_dump_the_database(
    tmp_path: Path,
) -> None:
    url = await fresh_pg_database()
    home = tmp_path / "eu"
    await initialise_node(
        admin="EU",
        home=home,
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        db_url=url,
    )
    node = Node.open(home, environ={})
    try:
        await publish(node, 0, 3)
    finally:
        await node.close()
    report = await asyncio.to_thread(backup_node, home, tmp_path / "eu.tar", environ={})
    assert report.manifest.database == "postgresql"
    assert report.manifest.log.size == 3
    assert report.note is not None
    assert "pg_dump" in report.note
    assert DATABASE_MEMBER not in member_names(report.archive)
    shutil.rmtree(home)
    restored = restore_node(report.archive, home)
    assert restored.note is not None
    assert "pg_restore" in restored.note
    node = Node.open(home, environ={})
    try:  # the database was never touched: the restored home finds it as it was
        assert (await log_head(node, "EU")).size == 3
    finally:
        await node.close()


async def test_why_restore_refuses_a_rollback_partners_quarantine_a_restored_shorter_log(
    tmp_path: Path,
) -> None:
    """What happens when the refusal is overridden with a backup partners are past: as soon
    as the partner reconnects it finds our log shorter than what it verified and quarantines
    us as a rollback; what we append afterwards (a second history) is never stored there."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'node.db'}"
    async with cluster_of(tmp_path, url, ("EU", "JP"), {}, start=True) as cluster:
        await cluster.connect("EU", "JP")
        await cluster.publish("EU", eu_records(0, 10))
        size = (await log_head(cluster.node("EU"), "EU")).size
        await cluster.wait_replicated("JP", "EU", size)
        report = await asyncio.to_thread(
            backup_node, cluster.node("EU").config.home, tmp_path / "eu.tar", environ={}
        )
        await cluster.publish("EU", eu_records(100, 5))
        seen = (await log_head(cluster.node("EU"), "EU")).size
        await cluster.wait_replicated("JP", "EU", seen)
        await cluster.stop("EU")
        await cluster.node("EU").close()

        with pytest.raises(RollbackRefusedError, match=f"holds {seen} entries"):
            restore_node(report.archive, cluster.node("EU").config.home, force=True)
        restore_node(
            report.archive, cluster.node("EU").config.home, force=True, accept_rollback=True
        )
        await cluster.start("EU")
        assert (await log_head(cluster.node("EU"), "EU")).size == size

        async def quarantined() -> bool:
            return bool((await partner_row(cluster.node("JP"), "EU")).quarantined)

        await eventually(quarantined, deadline_s=30)
        reason = str((await partner_row(cluster.node("JP"), "EU")).reason)
        assert reason.startswith(f"rollback: partner's log is smaller than our verified {seen}")
        # Nothing in the restored node stops it from signing a second history of positions
        # JP already holds: the refusal at restore is the only guard.
        await cluster.publish("EU", eu_records(200, 8))
        assert (await log_head(cluster.node("EU"), "EU")).size > seen
