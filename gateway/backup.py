"""Backups of a node and their restore: one tar archive, a manifest, every member hashed.

Archive layout (``mragw-backup/1``; an uncompressed POSIX tar, members in this order)::

    manifest.sha256        SHA-256 (hex) of manifest.json: checked before it is parsed
    manifest.json          what the archive holds (below)
    home/mragw.toml        the node's config
    home/keys/...          root, signing and audit keys (private: the archive is 0600)
    home/tls/...           TLS CA, node and admin certificates and keys
    database/mragw.db      SQLite only: a consistent copy made with SQLite's online backup API

The manifest names the node, the database kind, the schema revision, the size and root of our
own log and the checkpoint signing them at backup time, when it was made, and the size and
SHA-256 of every other member. On PostgreSQL the archive holds the home only: the database is
backed up with ``pg_dump`` or point-in-time recovery (see docs/operator-guide.md).

Consistency while ``mragw serve`` writes: the database is copied first, in one read
transaction of SQLite's backup API (WAL lets writers go on meanwhile); the key files are
copied after it. Keys are only ever added (a rotation writes the key file before it commits the
trust statement naming it), so the copied home holds every key the copied database names.

Restore is fail closed. Before anything is written where the node will live, the archive is
read member by member into a private staging folder: only regular files with safe names, each
at most its kind's size limit, each matching the size and SHA-256 the manifest gives (bytes are
checked before anything parses them); then the config is validated and the copied log is
verified (root over every leaf == the head == the tiles == the manifest, checkpoint signed by a
key of our trust statement). Only then is the staging folder moved into place.

A restore can roll our log back: partners may have verified checkpoints beyond the backup's
size. A gateway started on such a log does not notice (nothing in its own database says so).
Each partner notices as soon as it reconnects: it subscribes from its cursor, beyond our size,
and quarantines us as a rollback (tests/gateway/test_backup.py shows it); and our next append
(a publish, or the disclosure job at start) signs a second history of positions partners
already hold, which witnesses report as a split view of our log. So restore refuses unless it
can show the log is not rolled back (the home it replaces held the same log, at most as long
and consistent with it) or the operator says ``--accept-rollback`` after checking every
partner's size of our log.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.engine import make_url

from crypto.checkpoint import verify_checkpoint
from crypto.envelope import envelope_from_json
from crypto.errors import CryptoError
from crypto.keys import Scheme
from crypto.merkle import Frontier, TileId, root_from_tiles, tiles_for_root
from gateway.config import CONFIG_FILE, Config, build_config, default_database_url, load_config
from gateway.errors import InputError
from gateway.server.runtime import read_runtime
from gateway.storage.database import (
    create_engine,
    head_revision,
    is_sqlite,
    known_revision,
    schema_revision,
)
from gateway.storage.schema import logs
from gateway.trust import TrustStatement

FORMAT = "mragw-backup/1"
MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.sha256"
DATABASE_MEMBER = "database/mragw.db"
HOME_PREFIX = "home/"
#: What of a home is backed up: the config and the key material (not the database, which is
#: copied through SQLite's backup API, nor ``run/`` of a running gateway).
HOME_PARTS = (CONFIG_FILE, "keys", "tls")
MAX_MANIFEST_BYTES = 1024 * 1024
#: Config, keys and certificates are a few kilobytes; anything bigger is not ours.
MAX_HOME_FILE_BYTES = 1024 * 1024
MAX_MEMBERS = 10_000
#: A generous cap on the database member, so a crafted archive cannot fill the disk.
MAX_DATABASE_BYTES = 1024**4
_CHUNK = 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")
_REVISION = re.compile(r"[0-9A-Za-z_]{1,32}")
_ADMIN = re.compile(r"[A-Z]{2,4}")
_NAME_PART = re.compile(r"[A-Za-z0-9._-]{1,128}")


class BackupError(InputError):
    """A backup or restore refused: the message names the problem; nothing was written."""


class RollbackRefusedError(BackupError):
    """Restoring this archive may roll our log back below what partners have verified."""


# -- manifest -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    sha256: str
    mode: int


@dataclass(frozen=True)
class LogAtBackup:
    size: int
    root: str
    checkpoint: str


@dataclass(frozen=True)
class Manifest:
    node: str
    database: str  # "sqlite" or "postgresql"
    schema_revision: str
    log: LogAtBackup
    created_at: str
    members: tuple[Member, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "node": self.node,
            "database": self.database,
            "schema_revision": self.schema_revision,
            "log": {
                "size": self.log.size,
                "root": self.log.root,
                "checkpoint": self.log.checkpoint,
            },
            "created_at": self.created_at,
            "members": [
                {"name": m.name, "size": m.size, "sha256": m.sha256, "mode": m.mode}
                for m in self.members
            ],
        }

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        """A manifest from its bytes, strictly: exact keys, types and formats."""
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            raise BackupError(f"{MANIFEST}: not a JSON document ({error})") from error
        _exact(
            doc,
            {"format", "node", "database", "schema_revision", "log", "created_at", "members"},
            MANIFEST,
        )
        if doc["format"] != FORMAT:
            raise BackupError(f"{MANIFEST}: format {doc['format']!r}, this software reads {FORMAT}")
        node = _text(doc["node"], "node", _ADMIN)
        database = doc["database"]
        if database not in ("sqlite", "postgresql"):
            raise BackupError(f"{MANIFEST}: database {database!r} is not sqlite or postgresql")
        revision = _text(doc["schema_revision"], "schema_revision", _REVISION)
        log_doc = doc["log"]
        _exact(log_doc, {"size", "root", "checkpoint"}, f"{MANIFEST} log")
        log = LogAtBackup(
            size=_count(log_doc["size"], "log.size"),
            root=_text(log_doc["root"], "log.root", _SHA256),
            checkpoint=_string(log_doc["checkpoint"], "log.checkpoint"),
        )
        created = _string(doc["created_at"], "created_at")
        try:
            dt.datetime.fromisoformat(created)
        except ValueError as error:
            raise BackupError(f"{MANIFEST}: created_at {created!r} is not a timestamp") from error
        if not isinstance(doc["members"], list) or len(doc["members"]) > MAX_MEMBERS:
            raise BackupError(f"{MANIFEST}: members must be a list of at most {MAX_MEMBERS}")
        members: list[Member] = []
        seen: set[str] = set()
        for item in doc["members"]:
            _exact(item, {"name", "size", "sha256", "mode"}, f"{MANIFEST} member")
            name = safe_member_name(_string(item["name"], "member name"))
            if name in seen:
                raise BackupError(f"{MANIFEST}: member {name} is listed twice")
            seen.add(name)
            size = _count(item["size"], f"size of {name}")
            if size > member_limit(name):
                raise BackupError(
                    f"{MANIFEST}: member {name} of {size} bytes is larger than "
                    f"{member_limit(name)} bytes"
                )
            mode = _count(item["mode"], f"mode of {name}")
            members.append(
                Member(name, size, _text(item["sha256"], f"sha256 of {name}", _SHA256), mode)
            )
        if CONFIG_FILE_MEMBER not in seen:
            raise BackupError(f"{MANIFEST}: no {CONFIG_FILE_MEMBER} member")
        if (DATABASE_MEMBER in seen) != (database == "sqlite"):
            raise BackupError(
                f"{MANIFEST}: a {database} backup must "
                f"{'' if database == 'sqlite' else 'not '}hold {DATABASE_MEMBER}"
            )
        return cls(node, database, revision, log, created, tuple(members))


CONFIG_FILE_MEMBER = HOME_PREFIX + CONFIG_FILE


def _exact(doc: Any, keys: set[str], where: str) -> None:
    if not isinstance(doc, dict):
        raise BackupError(f"{where}: must be a JSON object")
    if set(doc) != keys:
        missing, extra = sorted(keys - set(doc)), sorted(set(doc) - keys)
        raise BackupError(f"{where}: missing keys {missing}, unknown keys {extra}")


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BackupError(f"{MANIFEST}: {what} must be a string")
    return value


def _text(value: Any, what: str, pattern: re.Pattern[str]) -> str:
    text = _string(value, what)
    if not pattern.fullmatch(text):
        raise BackupError(f"{MANIFEST}: {what} {text[:80]!r} is malformed")
    return text


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BackupError(f"{MANIFEST}: {what} must be a non-negative integer")
    return value


def safe_member_name(name: str) -> str:
    """``name`` if it is one this format writes: relative, no ``..``, no odd characters,
    under ``home/`` (config, keys, tls) or the database member; else :class:`BackupError`."""
    if name in (DATABASE_MEMBER, CONFIG_FILE_MEMBER):
        return name
    path = PurePosixPath(name)
    parts = path.parts
    if (
        path.is_absolute()
        or "\\" in name
        or len(parts) < 3
        or len(parts) > 8
        or parts[0] != HOME_PREFIX.rstrip("/")
        or parts[1] not in HOME_PARTS[1:]
        or any(p in (".", "..") or not _NAME_PART.fullmatch(p) for p in parts)
        or str(path) != name
    ):
        raise BackupError(f"member name {name[:200]!r} is not one a backup holds (unsafe path)")
    return name


def member_limit(name: str) -> int:
    return MAX_DATABASE_BYTES if name == DATABASE_MEMBER else MAX_HOME_FILE_BYTES


# -- backup -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupReport:
    archive: Path
    sha256: str
    manifest: Manifest
    note: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "archive": str(self.archive),
            "sha256": self.sha256,
            "node": self.manifest.node,
            "database": self.manifest.database,
            "schema_revision": self.manifest.schema_revision,
            "log_size": self.manifest.log.size,
            "log_root": self.manifest.log.root,
            "created_at": self.manifest.created_at,
            "members": len(self.manifest.members) + 1,
            "note": self.note,
        }


PG_NOTE = (
    "PostgreSQL: this archive holds the node home only (config and keys); back up the "
    "database with pg_dump --format=custom or point-in-time recovery (docs/operator-guide.md)"
)


def sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError(f"database url {url!r}: not a SQLite file")
    return Path(database)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _home_files(home: Path) -> list[tuple[str, Path]]:
    """(member name, path) of every file of the home that is backed up, sorted."""
    found: list[tuple[str, Path]] = []
    config = home / CONFIG_FILE
    if not config.is_file() or config.is_symlink():
        raise BackupError(f"{config}: no node config here")
    found.append((CONFIG_FILE_MEMBER, config))
    for part in HOME_PARTS[1:]:
        top = home / part
        if not top.exists():
            continue
        for path in sorted(top.rglob("*")):
            relative = path.relative_to(home).as_posix()
            if path.is_symlink():
                # A link may point anywhere; copying its target would back up foreign files.
                raise BackupError(f"{path}: a symbolic link in the node home; not backed up")
            if path.is_dir():
                continue
            if not path.is_file():
                raise BackupError(f"{path}: not a regular file; not backed up")
            found.append((safe_member_name(HOME_PREFIX + relative), path))
    return found


def _copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a live SQLite database: one read transaction of the backup API."""
    if not source.is_file():
        raise BackupError(f"{source}: no SQLite database here")
    # Not mode=ro: on a stopped node's database that would leave -wal/-shm files behind.
    src = sqlite3.connect(source, timeout=30)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # pages=-1: the whole database in one step, one snapshot
        finally:
            dst.close()
    finally:
        src.close()


def _sqlite_head(path: Path, admin: str) -> tuple[str | None, LogAtBackup]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        revision_row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        row = conn.execute(
            "SELECT size, root, checkpoint FROM logs WHERE code = ? AND own", (admin,)
        ).fetchone()
    except sqlite3.DatabaseError as error:
        raise BackupError(f"{path}: not a node database ({error})") from error
    finally:
        conn.close()
    if row is None:
        raise BackupError(f"{path}: holds no log of {admin}")
    return (
        None if revision_row is None else str(revision_row[0]),
        LogAtBackup(int(row[0]), bytes(row[1]).hex(), str(row[2] or "")),
    )


async def _postgres_head(config: Config) -> tuple[str | None, LogAtBackup]:
    engine = create_engine(config.database_url)
    try:
        revision = await schema_revision(engine)
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    select(logs.c.size, logs.c.root, logs.c.checkpoint).where(
                        logs.c.code == config.admin, logs.c.own.is_(True)
                    )
                )
            ).one()
    finally:
        await engine.dispose()
    return revision, LogAtBackup(int(row.size), bytes(row.root).hex(), str(row.checkpoint or ""))


def _private_file(path: Path) -> IO[bytes]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return os.fdopen(fd, "wb")


def backup_node(home: Path, out: Path, *, environ: dict[str, str] | None = None) -> BackupReport:
    """Write a backup archive of the node in ``home`` to ``out`` (mode 0600, never over an
    existing file); safe while ``mragw serve`` runs on the node."""
    home = home.resolve()
    config = load_config(home, environ if environ is not None else dict(os.environ))
    out = out.resolve()
    if out.exists():
        raise BackupError(f"--out {out}: exists; choose a new file (backups are never overwritten)")
    if not out.parent.is_dir():
        raise BackupError(f"--out {out}: the folder {out.parent} does not exist")
    created = dt.datetime.now(tz=dt.UTC).replace(microsecond=0)
    with tempfile.TemporaryDirectory(prefix=".mragw-backup-", dir=out.parent) as scratch:
        os.chmod(scratch, 0o700)
        members: list[tuple[Member, Path]] = []
        note: str | None = None
        if is_sqlite(config.database_url):
            copy = Path(scratch) / "mragw.db"
            # The database first: see the module docstring on why keys are copied after it.
            _copy_sqlite(sqlite_path(config.database_url), copy)
            revision, head = _sqlite_head(copy, config.admin)
            database = "sqlite"
            db_member: tuple[str, Path] | None = (DATABASE_MEMBER, copy)
        else:
            revision, head = asyncio.run(_postgres_head(config))
            database, db_member, note = "postgresql", None, PG_NOTE
        if revision is None:
            raise BackupError("the database has no schema revision: not a node database")
        files = _home_files(home) + ([db_member] if db_member else [])
        for name, path in files:
            size = path.stat().st_size
            if size > member_limit(name):
                raise BackupError(f"{path}: {size} bytes, larger than {member_limit(name)}")
            mode = 0o600 if name == DATABASE_MEMBER else path.stat().st_mode & 0o777
            members.append((Member(name, size, _sha256_file(path), mode), path))
        manifest = Manifest(
            node=config.admin,
            database=database,
            schema_revision=revision,
            log=head,
            created_at=created.isoformat(),
            members=tuple(m for m, _ in members),
        )
        partial = out.parent / f".{out.name}.partial"
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        try:
            with (
                _private_file(partial) as raw,
                tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
            ):
                body = json.dumps(manifest.to_json(), indent=2, sort_keys=True).encode()
                digest_line = hashlib.sha256(body).hexdigest().encode() + b"\n"
                tar.addfile(
                    _tar_info(MANIFEST_DIGEST, len(digest_line), 0o600, created),
                    io.BytesIO(digest_line),
                )
                tar.addfile(_tar_info(MANIFEST, len(body), 0o600, created), io.BytesIO(body))
                for member, path in members:
                    with path.open("rb") as handle:
                        tar.addfile(
                            _tar_info(member.name, member.size, member.mode, created), handle
                        )
            # Re-hash what was written: a file that changed while it was read (it must not)
            # would otherwise make an archive that restore refuses only on the day it is needed.
            _verify_archive_file(partial, manifest)
            digest = _sha256_file(partial)
            os.replace(partial, out)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
    return BackupReport(out, digest, manifest, note)


def _tar_info(name: str, size: int, mode: int, created: dt.datetime) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = int(created.timestamp())
    info.type = tarfile.REGTYPE
    return info


def _verify_archive_file(path: Path, manifest: Manifest) -> None:
    with tempfile.TemporaryDirectory(prefix=".mragw-verify-", dir=path.parent) as scratch:
        with path.open("rb") as handle:
            staged = _stage(handle, Path(scratch))
        if staged != manifest:
            raise BackupError(f"{path}: the written archive does not match its manifest")


# -- reading an archive -------------------------------------------------------------------


def _read_exact(source: IO[bytes], size: int, sink: IO[bytes] | None) -> str:
    digest = hashlib.sha256()
    left = size
    while left:
        chunk = source.read(min(_CHUNK, left))
        if not chunk:
            raise BackupError("the archive ends inside a member (truncated)")
        digest.update(chunk)
        if sink is not None:
            sink.write(chunk)
        left -= len(chunk)
    return digest.hexdigest()


def _stage(archive: IO[bytes], staging: Path) -> Manifest:
    """Read the archive into ``staging`` (files under ``home/`` and ``database/``), checking
    every member against the manifest as its bytes stream in; returns the manifest."""
    try:
        tar = tarfile.open(fileobj=archive, mode="r|")  # noqa: SIM115 - closed in the finally
    except tarfile.TarError as error:
        raise BackupError(f"not a backup archive (tar): {error}") from error
    manifest: Manifest | None = None
    manifest_digest: str | None = None
    expected: dict[str, Member] = {}
    seen: set[str] = set()
    try:
        for info in _members(tar):
            if manifest_digest is None:
                if info.name != MANIFEST_DIGEST or not info.isreg() or info.size != 65:
                    raise BackupError(
                        f"the first member must be {MANIFEST_DIGEST} (65 bytes), "
                        f"not {info.name[:200]!r}"
                    )
                manifest_digest = _member_bytes(tar, info).decode("ascii", "replace").strip()
                if not _SHA256.fullmatch(manifest_digest):
                    raise BackupError(f"{MANIFEST_DIGEST}: not a SHA-256 in hex")
                continue
            if manifest is None:
                if info.name != MANIFEST or not info.isreg():
                    raise BackupError(
                        f"the second member must be {MANIFEST}, not {info.name[:200]!r}"
                    )
                if info.size > MAX_MANIFEST_BYTES:
                    raise BackupError(f"{MANIFEST}: larger than {MAX_MANIFEST_BYTES} bytes")
                body = _member_bytes(tar, info)
                # The manifest's bytes are checked before a parser sees them.
                if hashlib.sha256(body).hexdigest() != manifest_digest:
                    raise BackupError(
                        f"{MANIFEST}: SHA-256 does not match {MANIFEST_DIGEST} "
                        "(altered or corrupted)"
                    )
                manifest = Manifest.parse(body)
                expected = {m.name: m for m in manifest.members}
                continue
            name = info.name
            if not (info.isreg()):
                kind = (
                    "symbolic link"
                    if info.issym()
                    else "hard link"
                    if info.islnk()
                    else ("directory" if info.isdir() else "special file")
                )
                raise BackupError(f"member {name[:200]!r} is a {kind}; a backup holds files only")
            safe_member_name(name)
            member = expected.get(name)
            if member is None:
                raise BackupError(f"member {name} is not listed in the manifest")
            if name in seen:
                raise BackupError(f"member {name} appears twice")
            seen.add(name)
            if info.size > member_limit(name):
                raise BackupError(
                    f"member {name}: {info.size} bytes, larger than {member_limit(name)}"
                )
            if info.size != member.size:
                raise BackupError(
                    f"member {name}: {info.size} bytes, the manifest says {member.size}"
                )
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with _private_file(target) as sink:
                digest = _read_exact(_member_stream(tar, info), info.size, sink)
            if digest != member.sha256:
                raise BackupError(
                    f"member {name}: SHA-256 {digest} does not match the manifest's "
                    f"{member.sha256} (altered or corrupted)"
                )
    except tarfile.TarError as error:
        raise BackupError(f"the archive is damaged: {error}") from error
    finally:
        tar.close()
    if manifest is None:
        raise BackupError("the archive is empty (no manifest)")
    missing = sorted(set(expected) - seen)
    if missing:
        raise BackupError(f"the archive lacks members the manifest lists: {missing}")
    return manifest


def _member_stream(tar: tarfile.TarFile, info: tarfile.TarInfo) -> IO[bytes]:
    source = tar.extractfile(info)
    if source is None:  # pragma: no cover - only regular members get here
        raise BackupError(f"member {info.name}: not a file")
    return source


def _member_bytes(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    return _member_stream(tar, info).read(info.size)


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    count = 0
    while True:
        info = tar.next()
        if info is None:
            return
        count += 1
        if count > MAX_MEMBERS + 2:
            raise BackupError(f"the archive has more than {MAX_MEMBERS} members")
        yield info


# -- verifying what was staged ------------------------------------------------------------


def verify_log_copy(path: Path, manifest: Manifest) -> None:
    """The staged database holds our log exactly as the manifest says: root over every leaf
    == the head row == the root from the tiles == the manifest, and the head checkpoint is
    signed by a key of our newest trust statement for that size and root."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        try:
            revision_row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            head = conn.execute(
                "SELECT size, root, checkpoint FROM logs WHERE code = ? AND own",
                (manifest.node,),
            ).fetchone()
            envelope = conn.execute(
                "SELECT envelope FROM trust_statements ORDER BY version DESC LIMIT 1"
            ).fetchone()
        except sqlite3.DatabaseError as error:
            raise BackupError(f"{DATABASE_MEMBER}: not a node database ({error})") from error
        revision = None if revision_row is None else str(revision_row[0])
        if revision != manifest.schema_revision:
            raise BackupError(
                f"{DATABASE_MEMBER}: schema revision {revision}, the manifest says "
                f"{manifest.schema_revision}"
            )
        if head is None or envelope is None:
            raise BackupError(
                f"{DATABASE_MEMBER}: holds no log or trust statement of {manifest.node}"
            )
        size, root = int(head[0]), bytes(head[1])
        if (size, root.hex()) != (manifest.log.size, manifest.log.root):
            raise BackupError(
                f"{DATABASE_MEMBER}: log size {size} root {root.hex()}, the manifest says "
                f"{manifest.log.size} {manifest.log.root}"
            )
        frontier = Frontier.empty()
        expected_idx = 0
        cursor = conn.execute(
            "SELECT idx, leaf_hash FROM entries WHERE log = ? ORDER BY idx", (manifest.node,)
        )
        while rows := cursor.fetchmany(10_000):
            for idx, _ in rows:
                if int(idx) != expected_idx:
                    raise BackupError(f"{DATABASE_MEMBER}: entry {expected_idx} is missing")
                expected_idx += 1
            frontier = frontier.append(bytes(h) for _, h in rows).frontier
        if frontier.size != size or frontier.root() != root:
            raise BackupError(
                f"{DATABASE_MEMBER}: the root over the {frontier.size} stored leaves does not "
                f"match the log head of size {size}"
            )
        tiles = _read_tiles(conn, manifest.node, tiles_for_root(size))
        if root_from_tiles(size, tiles) != root:
            raise BackupError(f"{DATABASE_MEMBER}: the stored tiles do not give the log root")
        _verify_head_checkpoint(bytes(envelope[0]), str(head[2] or ""), size, root)
    finally:
        conn.close()


def _read_tiles(conn: sqlite3.Connection, log: str, ids: list[TileId]) -> dict[TileId, bytes]:
    found: dict[TileId, bytes] = {}
    for tile in set(ids):
        row = conn.execute(
            "SELECT hashes FROM tiles WHERE log = ? AND level = ? AND idx = ?",
            (log, tile.level, tile.index),
        ).fetchone()
        if row is not None:
            found[tile] = bytes(row[0])
    return found


def _verify_head_checkpoint(envelope: bytes, note: str, size: int, root: bytes) -> None:
    try:
        statement = TrustStatement.from_payload(envelope_from_json(envelope).payload)
    except (CryptoError, InputError, ValueError) as error:
        raise BackupError(
            f"{DATABASE_MEMBER}: our trust statement is unreadable: {error}"
        ) from error
    origin = statement.log_origin
    problems: list[str] = []
    for key in statement.signing_keys:
        if key.public_key.scheme is not Scheme.ED25519:
            continue
        try:
            checkpoint = verify_checkpoint(note, {origin: key.public_key}, origin)
        except (CryptoError, ValueError) as error:
            problems.append(str(error))
            continue
        if (checkpoint.size, checkpoint.root_hash) != (size, root):
            raise BackupError(
                f"{DATABASE_MEMBER}: the head checkpoint is for size {checkpoint.size}, "
                f"the log head is {size}"
            )
        return
    raise BackupError(
        f"{DATABASE_MEMBER}: the head checkpoint is not signed by a key of our trust statement"
        + (f" ({problems[-1]})" if problems else "")
    )


# -- restore ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoreReport:
    home: Path
    manifest: Manifest
    replaced: Path | None
    rollback_accepted: bool
    upgrade_needed: bool
    note: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "home": str(self.home),
            "node": self.manifest.node,
            "database": self.manifest.database,
            "schema_revision": self.manifest.schema_revision,
            "log_size": self.manifest.log.size,
            "log_root": self.manifest.log.root,
            "created_at": self.manifest.created_at,
            "replaced": str(self.replaced) if self.replaced else None,
            "rollback_accepted": self.rollback_accepted,
            "upgrade_needed": self.upgrade_needed,
            "note": self.note,
        }


def _existing_own_log(home: Path) -> tuple[int, bytes] | None:
    """(size, root) of the own log of a SQLite node living in ``home`` now, or None."""
    try:
        config = load_config(home, {})
    except InputError:
        return None
    if not is_sqlite(config.database_url):
        return None
    path = sqlite_path(config.database_url)
    if not path.is_file():
        return None
    # Read-write (it only reads): a read-only connection cannot replay a WAL left by a
    # killed gateway without leaving -wal/-shm files behind, and would under-read the log.
    conn = sqlite3.connect(path, timeout=30)
    try:
        row = conn.execute(
            "SELECT size, root FROM logs WHERE code = ? AND own", (config.admin,)
        ).fetchone()
    except sqlite3.DatabaseError:
        return None
    finally:
        conn.close()
    return None if row is None else (int(row[0]), bytes(row[1]))


def _rollback_problem(
    existing: tuple[int, bytes] | None, staged_db: Path, manifest: Manifest
) -> str | None:
    """Why restoring may roll our log back (None: the replaced home proves it does not)."""
    if existing is None:
        return (
            f"nothing here shows that partners have not verified more of our log than the "
            f"backup's {manifest.log.size} entries (made {manifest.created_at})"
        )
    size, root = existing
    if size > manifest.log.size:
        return (
            f"the node being replaced holds {size} entries of our log, the backup only "
            f"{manifest.log.size}: partners may hold the {size - manifest.log.size} newer ones"
        )
    conn = sqlite3.connect(f"file:{staged_db}?mode=ro", uri=True)
    try:
        at_size = root_from_tiles(size, _read_tiles(conn, manifest.node, tiles_for_root(size)))
    finally:
        conn.close()
    if at_size != root:
        return (
            f"the node being replaced holds a different history of our log at size {size} "
            "than the backup"
        )
    return None


def _move_aside(path: Path, stamp: str) -> Path:
    aside = path.with_name(f"{path.name}.before-restore-{stamp}")
    n = 1
    while aside.exists():  # two restores within one second: never replace a kept copy
        n += 1
        aside = path.with_name(f"{path.name}.before-restore-{stamp}-{n}")
    os.replace(path, aside)
    return aside


def restore_node(
    archive: Path,
    home: Path,
    *,
    force: bool = False,
    accept_rollback: bool = False,
    expect_sha256: str | None = None,
) -> RestoreReport:
    """Restore the archive into ``home``: everything checked first (see the module
    docstring), then moved into place; a replaced home (``--force``) is kept beside it."""
    home = home.absolute()
    if not archive.is_file():
        raise BackupError(f"--from {archive}: no such file")
    if expect_sha256 is not None:
        actual = _sha256_file(archive)
        if actual != expect_sha256.strip().lower():
            raise BackupError(
                f"--from {archive}: SHA-256 {actual}, not the {expect_sha256} given by --sha256"
            )
    running = read_runtime(home) if home.is_dir() else None
    if running is not None:
        raise BackupError(
            f"--home {home}: a gateway (pid {running.pid}) is running on this home; stop it first"
        )
    occupied = home.exists() and (not home.is_dir() or any(home.iterdir()))
    if occupied and not force:
        raise BackupError(f"--home {home}: not empty; restore into an empty folder or use --force")
    if not home.parent.is_dir():
        raise BackupError(f"--home {home}: the folder {home.parent} does not exist")
    staging = Path(tempfile.mkdtemp(prefix=f".{home.name}.restore-", dir=home.parent))
    try:
        os.chmod(staging, 0o700)
        with archive.open("rb") as handle:
            manifest = _stage(handle, staging)
        for member in manifest.members:
            os.chmod(staging / member.name, member.mode & 0o644)
        return _install(staging, home, manifest, occupied, accept_rollback)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _install(
    staging: Path, home: Path, manifest: Manifest, occupied: bool, accept_rollback: bool
) -> RestoreReport:
    new_home = staging / HOME_PREFIX.rstrip("/")
    try:
        document = _load_toml(new_home / CONFIG_FILE)
        config = build_config(home, document, {})
    except InputError as error:
        raise BackupError(f"{CONFIG_FILE_MEMBER}: {error}") from error
    if config.admin != manifest.node:
        raise BackupError(
            f"{CONFIG_FILE_MEMBER}: node {config.admin}, the manifest says {manifest.node}"
        )
    if not known_revision(manifest.schema_revision):
        raise BackupError(
            f"the backup's schema revision {manifest.schema_revision} is newer than this "
            f"software knows (newest {head_revision()}): restore with the version that made it"
        )
    upgrade_needed = manifest.schema_revision != head_revision()
    staged_db = staging / DATABASE_MEMBER
    db_target: Path | None = None
    note: str | None = None
    if manifest.database == "sqlite":
        if not is_sqlite(config.database_url):
            raise BackupError(
                f"{CONFIG_FILE_MEMBER}: a SQLite backup whose config names {config.database.url!r}"
            )
        verify_log_copy(staged_db, manifest)
        db_target = sqlite_path(config.database_url)
        problem = _rollback_problem(
            _existing_own_log(home) if occupied else None, staged_db, manifest
        )
        if problem is not None and not accept_rollback:
            raise RollbackRefusedError(
                f"{problem}. Ask every partner for the size of our log they verified "
                f"(`mragw status --json` on their side: partners[].tree_size for "
                f"{manifest.node}); restore with --accept-rollback only if none exceeds "
                f"{manifest.log.size} (docs/operator-guide.md, Restore)"
            )
        outside = db_target != sqlite_path(default_database_url(home))
        if outside and db_target.exists() and not occupied:
            raise BackupError(f"database.url names {db_target}, which exists; use --force")
    else:
        note = (
            "PostgreSQL: only the home was restored; restore the database with pg_restore "
            "(or PITR) before `mragw serve` (docs/operator-guide.md)"
        )
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    replaced: Path | None = None
    if home.exists():
        if occupied:
            replaced = _move_aside(home, stamp)
        else:
            home.rmdir()
    if db_target is not None:
        outside = db_target != sqlite_path(default_database_url(home))
        if outside:
            for suffix in ("", "-wal", "-shm"):
                old = Path(f"{db_target}{suffix}")
                if old.exists():
                    _move_aside(old, stamp)
            db_target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged_db, db_target)
        else:
            os.replace(staged_db, new_home / db_target.name)
    os.replace(new_home, home)
    os.chmod(home, 0o700)
    return RestoreReport(home, manifest, replaced, accept_rollback, upgrade_needed, note)


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise BackupError(f"not valid TOML: {error}") from error


__all__ = [
    "BackupError",
    "BackupReport",
    "Manifest",
    "RestoreReport",
    "RollbackRefusedError",
    "backup_node",
    "restore_node",
    "safe_member_name",
    "verify_log_copy",
]
