"""Key lifecycle: renewing the trust statement, rotating keys, revoking a signing key.

Every change is a new trust statement (version n+1, signed by the root; a root rotation by the
old and the new root), stored in ``trust_statements``; partners fetch it with
``GetTrustStatement`` and accept it by the chain rules of :mod:`gateway.trust`. Nothing needs
a restart: a running gateway reads its statement for every append and its TLS material per
handshake.

Rotation without downtime (planned):
- signing: the new key is published now with ``valid_from = now + overlap``; the node starts
  signing with it at that time (:meth:`Node.active_signers` picks the newest key in its
  window) and the old key's window ends one overlap later. During the overlap checkpoints are
  signed by every valid key, so a partner that has not fetched the new statement yet still
  verifies them. The next statement (any later change or ``trust renew``) retires keys whose
  window has ended by revoking them from the current tree size: entries they signed stay valid.
- TLS: a new CA and certificates are made in ``tls/next`` with a switch time one overlap away;
  the statement lists both CAs, so partners trust either while each side switches at its own
  pace. The next statement after the switch drops the old CA.
- root: the new statement carries the new root and is signed by both roots; the old root's
  file is kept aside as ``keys/root-retired-<id>.key`` (0600) for the operator to destroy.

Revocation (compromise) is bound to the log: ``revoke`` publishes ``revoked_at_index = N``;
our own entries at or after N signed by that key become unusable here at once, and
``republish`` re-signs their records with a valid key as new entries.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from crypto.envelope import envelope_to_json
from crypto.keys import PrivateKeySigner, Scheme, save_private_key
from crypto.pki import (
    certificate_to_pem,
)
from gateway.audit import record_action
from gateway.datasets import active_recogniser
from gateway.disclosure import decode_own
from gateway.errors import InputError
from gateway.issuer_log import IssuerLog, prepare
from gateway.node import Node, make_tls_material, now_utc
from gateway.storage.schema import entries, logs, node_state, records, trust_statements
from gateway.trust import (
    MAX_BUNDLE_BYTES,
    MAX_SIGNING_KEYS,
    SigningKey,
    TrustStatement,
    bundle_bytes,
    sign_statement,
    tls_ca_certificates,
)

RETIRED_REASON = "retired: validity window ended"
TLS_FILES = ("ca", "node", "admin")


class KeyCommandError(InputError):
    """A key command cannot be carried out as asked."""


@dataclass(frozen=True)
class KeyInfo:
    kind: str  # root | signing | tls-ca
    key_id: str
    scheme: str
    state: str  # active | pending | retiring | retired | revoked | next
    valid_from: str | None
    valid_until: str | None
    revoked_at_index: int | None
    reason: str | None
    private_key_here: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key_id": self.key_id,
            "scheme": self.scheme,
            "state": self.state,
            "valid_from": self.valid_from,
            "valid_until": self.valid_until,
            "revoked_at_index": self.revoked_at_index,
            "reason": self.reason,
            "private_key_here": self.private_key_here,
        }


def _iso(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key_state(key: SigningKey, moment: dt.datetime, active: set[str]) -> str:
    if key.revoked_at_index is not None:
        return "retired" if key.revocation_reason == RETIRED_REASON else "revoked"
    if moment < key.valid_from:
        return "pending"
    if key.valid_until is not None and moment >= key.valid_until:
        return "expired"
    return "active" if key.key_id in active else "retiring"


async def list_keys(node: Node) -> list[KeyInfo]:
    """Root, signing keys and TLS CAs as the current statement publishes them."""
    async with node.engine.connect() as conn:
        statement = await node.trust_statement(conn)
        try:
            checkpoint, entry = await node.active_signers(conn)
            active = {checkpoint.key_id, entry.key_id}
        except InputError:
            active = set()
    moment = now_utc()
    out = [
        KeyInfo(
            "root",
            statement.root_key.key_id,
            statement.root_key.scheme.value,
            "active",
            None,
            None,
            None,
            None,
            node.paths.root_key.exists(),
        )
    ]
    out += [
        KeyInfo(
            "signing",
            k.key_id,
            k.public_key.scheme.value,
            _key_state(k, moment, active),
            _iso(k.valid_from),
            _iso(k.valid_until),
            k.revoked_at_index,
            k.revocation_reason,
            node.paths.signing_key(k.key_id).exists(),
        )
        for k in statement.signing_keys
    ]
    in_use = node.ca_certificate().fingerprint(hashes.SHA256()).hex()
    for cert in tls_ca_certificates(statement.tls_ca_pem):
        fingerprint = cert.fingerprint(hashes.SHA256()).hex()
        out.append(
            KeyInfo(
                "tls-ca",
                fingerprint,
                "ecdsa-p256",
                "active" if fingerprint == in_use else "next-or-old",
                _iso(cert.not_valid_before_utc),
                _iso(cert.not_valid_after_utc),
                None,
                None,
                True,
            )
        )
    return out


async def _log_size(conn: AsyncConnection, admin: str) -> int:
    return int((await conn.execute(select(logs.c.size).where(logs.c.code == admin))).scalar_one())


def _retire_ended(statement: TrustStatement, size: int, moment: dt.datetime) -> TrustStatement:
    """Keys whose window has ended are revoked from the current size: what they signed before
    stays valid, nothing after it can be."""
    keys = tuple(
        replace(k, revoked_at_index=size, revocation_reason=RETIRED_REASON)
        if k.revoked_at_index is None and k.valid_until is not None and moment >= k.valid_until
        else k
        for k in statement.signing_keys
    )
    return replace(statement, signing_keys=keys)


def _current_cas(node: Node, statement: TrustStatement) -> TrustStatement:
    """Publish exactly the CAs on disk: the one in use and a pending one. After a switch,
    ``tls/next`` is promoted to ``tls/`` first, so the old CA drops out."""
    if node.tls_switch_at() is not None and node.tls_dir() == node.paths.tls_next:
        _promote_tls(node)
    return replace(statement, tls_ca_pem=node.own_ca_pem().decode("ascii"))


def _promote_tls(node: Node) -> None:
    """Copy ``tls/next`` over ``tls/`` file by file (each replaced atomically, so a process
    reading meanwhile sees the old or the new file, both valid), then end the schedule."""
    paths = node.paths
    stamp = now_utc().strftime("%Y%m%dT%H%M%S.%fZ")
    retired = paths.tls / f"retired-{stamp}"
    retired.mkdir(mode=0o700, exist_ok=True)
    for name in TLS_FILES:
        for suffix in (".pem", ".key"):
            current = paths.tls_file(name + suffix)
            if current.exists():
                shutil.copy2(current, retired / current.name)
            staged = paths.tls / f".{name}{suffix}.new"
            shutil.copy2(paths.tls_next / f"{name}{suffix}", staged)
            os.replace(staged, current)
    paths.tls_switch.unlink()
    shutil.rmtree(paths.tls_next)


async def publish_statement(
    node: Node,
    conn: AsyncConnection,
    statement: TrustStatement,
    *,
    actor: str,
    action: str,
    detail: dict[str, Any],
    extra_root_signers: Sequence[PrivateKeySigner] = (),
    root: PrivateKeySigner | None = None,
) -> TrustStatement:
    """Store ``statement`` as the next version, signed by the root (and any extra root)."""
    current = await node.trust_statement(conn)
    statement = replace(statement, version=current.version + 1, issued=now_utc())
    if len(statement.signing_keys) > MAX_SIGNING_KEYS:
        raise KeyCommandError(
            f"the statement would list {len(statement.signing_keys)} signing keys, more than "
            f"the {MAX_SIGNING_KEYS} partners accept"
        )
    signer = root or node.root_signer()
    envelope = sign_statement(statement, [signer, *extra_root_signers])
    chain = [*await node.trust_chain(conn), envelope]
    if len(bundle_bytes(chain)) > MAX_BUNDLE_BYTES:
        raise KeyCommandError(
            f"the partner bundle would exceed {MAX_BUNDLE_BYTES} bytes; partners would refuse it"
        )
    # What partners will parse must parse: refuse here rather than strand them.
    TrustStatement.from_payload(envelope.payload)
    await conn.execute(
        trust_statements.insert().values(
            version=statement.version,
            envelope=envelope_to_json(envelope),
            created_at=now_utc().timestamp(),
        )
    )
    await conn.execute(
        update(node_state)
        .where(node_state.c.key == "partners")
        .values(value=node_state.c.value + 1)
    )
    await record_action(conn, actor, action, {"trust_version": statement.version, **detail})
    return statement


async def _housekept(node: Node, conn: AsyncConnection) -> TrustStatement:
    statement = await node.trust_statement(conn)
    size = await _log_size(conn, node.admin)
    return _current_cas(node, _retire_ended(statement, size, now_utc()))


async def renew(node: Node, *, days: int | None = None, actor: str = "cli") -> TrustStatement:
    """A new statement version with a fresh expiry (and ended keys retired)."""
    lifetime = dt.timedelta(
        days=days if days is not None else node.config.keys.trust_statement_days
    )
    if lifetime <= dt.timedelta(0):
        raise KeyCommandError("--days must be positive")
    node.root_signer()  # fail before changing anything when the root key is offline
    async with node.engine.begin() as conn:
        statement = await _housekept(node, conn)
        statement = replace(statement, expires=now_utc() + lifetime)
        return await publish_statement(
            node,
            conn,
            statement,
            actor=actor,
            action="trust.renew",
            detail={"expires": _iso(statement.expires)},
        )


async def rotate_signing(
    node: Node, *, overlap: dt.timedelta | None = None, actor: str = "cli"
) -> TrustStatement:
    overlap = _overlap(node, overlap)
    node.root_signer()
    moment = now_utc()
    switch = moment + overlap
    new_keys = [PrivateKeySigner.generate(Scheme.ED25519)]
    if node.config.keys.signing_algorithm != "ed25519":
        new_keys.append(PrivateKeySigner.generate(Scheme.ECDSA_P256_SHA256))
    async with node.engine.begin() as conn:
        statement = await _housekept(node, conn)
        old = tuple(
            replace(k, valid_until=switch + overlap)
            if k.revoked_at_index is None
            and (k.valid_until is None or k.valid_until > switch + overlap)
            else k
            for k in statement.signing_keys
        )
        added = tuple(SigningKey(public_key=k.public_key, valid_from=switch) for k in new_keys)
        # Key files first: a statement must never list a key this node cannot use.
        for key in new_keys:
            save_private_key(key, node.paths.signing_key(key.key_id), node.passphrase)
        return await publish_statement(
            node,
            conn,
            replace(statement, signing_keys=old + added),
            actor=actor,
            action="keys.rotate.signing",
            detail={"new_keys": [k.key_id for k in new_keys], "switch_at": _iso(switch)},
        )


async def rotate_root(node: Node, *, actor: str = "cli") -> TrustStatement:
    old_root = node.root_signer()
    new_root = PrivateKeySigner.generate(Scheme.ED25519)
    staged = node.paths.keys / f"root-{new_root.key_id}.key"
    save_private_key(new_root, staged, node.passphrase)
    async with node.engine.begin() as conn:
        statement = await _housekept(node, conn)
        result = await publish_statement(
            node,
            conn,
            replace(statement, root_key=new_root.public_key),
            actor=actor,
            action="keys.rotate.root",
            detail={"old_root": old_root.key_id, "new_root": new_root.key_id},
            root=new_root,
            extra_root_signers=[old_root],
        )
    # Only after the statement is stored does the new root replace the old one on disk: keep
    # the old file under another name first, then swap atomically, so root.key always exists.
    retired = node.paths.keys / f"root-retired-{old_root.key_id}.key"
    if not retired.exists():
        os.link(node.paths.root_key, retired)
    os.replace(staged, node.paths.root_key)
    return result


async def rotate_tls(
    node: Node, *, overlap: dt.timedelta | None = None, actor: str = "cli"
) -> TrustStatement:
    overlap = _overlap(node, overlap)
    # Partners can fetch the statement naming the new CA only over TLS with the old one: give
    # them at least two refreshes before we switch (see ADR 0007 for one offline longer).
    least = dt.timedelta(seconds=2 * node.config.trust.refresh_interval_s)
    if overlap < least:
        raise KeyCommandError(
            f"--overlap {overlap.total_seconds():g}s: a TLS rotation needs at least two "
            f"trust refresh intervals ({least.total_seconds():g}s) so partners learn the new CA "
            "before the switch"
        )
    node.root_signer()
    if node.tls_switch_at() is not None and node.tls_dir() != node.paths.tls_next:
        raise KeyCommandError("a TLS rotation is already pending; wait for its switch time")
    next_dir = node.paths.tls_next
    moment = now_utc()
    switch = moment + overlap
    try:
        async with node.engine.begin() as conn:
            statement = await _housekept(node, conn)  # promotes a finished rotation first
            if next_dir.exists():  # a leftover of an attempt that never committed
                shutil.rmtree(next_dir)
            next_dir.mkdir(mode=0o700)
            ca_pem = _make_tls(node, next_dir, moment)
            statement = replace(statement, tls_ca_pem=ca_pem + statement.tls_ca_pem)
            tls_ca_certificates(statement.tls_ca_pem)
            result = await publish_statement(
                node,
                conn,
                statement,
                actor=actor,
                action="keys.rotate.tls",
                detail={
                    "new_ca": x509.load_pem_x509_certificate(ca_pem.encode("ascii"))
                    .fingerprint(hashes.SHA256())
                    .hex(),
                    "switch_at": _iso(switch),
                },
            )
    except BaseException:
        shutil.rmtree(next_dir, ignore_errors=True)
        raise
    # Only once the statement listing the new CA is committed does the switch get scheduled:
    # until this file exists no process looks at tls/next (a crash here leaves the node on
    # its old, still published CA).
    staged = next_dir / ".switch-at.new"
    staged.write_text(f"{switch.timestamp():.3f}\n", encoding="ascii")
    os.replace(staged, node.paths.tls_switch)
    return result


def _make_tls(node: Node, folder: Path, moment: dt.datetime) -> str:
    leaf_days = dt.timedelta(days=node.config.keys.tls_leaf_days)
    ca_cert = make_tls_material(folder, node.admin, moment, leaf_days, node.passphrase)
    return certificate_to_pem(ca_cert).decode("ascii")


def _overlap(node: Node, overlap: dt.timedelta | None) -> dt.timedelta:
    value = (
        overlap
        if overlap is not None
        else dt.timedelta(seconds=node.config.trust.rotation_overlap_s)
    )
    if value < dt.timedelta(0):
        raise KeyCommandError("--overlap must not be negative")
    return value


async def revoke(
    node: Node,
    key_id: str,
    *,
    reason: str,
    from_index: int | None = None,
    actor: str = "cli",
) -> TrustStatement:
    """Revoke a signing key from log index N (default: the current size); our own entries at or
    after N signed by it become unusable at once (re-publish them with :func:`republish`)."""
    if not reason.strip():
        raise KeyCommandError("--reason is required: say why the key is revoked")
    node.root_signer()
    async with node.engine.begin() as conn:
        statement = await _housekept(node, conn)
        key = statement.signing_key(key_id)
        if key is None:
            raise KeyCommandError(f"key {key_id}: not a signing key of our trust statement")
        size = await _log_size(conn, node.admin)
        index = size if from_index is None else from_index
        if not 0 <= index <= size:
            raise KeyCommandError(
                f"--from-index {index}: must be between 0 and the log size {size}"
            )
        if key.revoked_at_index is not None and key.revoked_at_index <= index:
            raise KeyCommandError(
                f"key {key_id} is already revoked from index {key.revoked_at_index}"
            )
        remaining = [
            k
            for k in statement.signing_keys
            if k.key_id != key_id
            and k.revoked_at_index is None
            and k.public_key.scheme is Scheme.ED25519
            and node.paths.signing_key(k.key_id).exists()
        ]
        if not remaining:
            raise KeyCommandError(
                f"key {key_id} is our last Ed25519 signing key: run `mragw keys rotate "
                "--signing --overlap 0` first"
            )
        revoked = replace(key, revoked_at_index=index, revocation_reason=reason[:500])
        # A key made for later use becomes valid now, so the node can keep signing.
        moment = now_utc()
        keys = tuple(
            revoked
            if k.key_id == key_id
            else replace(k, valid_from=moment)
            if k in remaining and k.valid_from > moment
            else k
            for k in statement.signing_keys
        )
        result = await publish_statement(
            node,
            conn,
            replace(statement, signing_keys=keys),
            actor=actor,
            action="keys.revoke",
            detail={"key_id": key_id, "from_index": index, "reason": reason[:500]},
        )
        await conn.execute(
            update(entries)
            .where(
                entries.c.log == node.admin,
                entries.c.signer == key_id,
                entries.c.idx >= index,
                entries.c.sig_state == "valid",
            )
            .values(sig_state="revoked")
        )
        # In the same transaction: partners must never see our head signed only by a key
        # revoked below its size.
        await IssuerLog(node).resign_head_in(conn)
    return result


async def republish(node: Node, *, actor: str = "cli") -> int:
    """Re-sign, with a valid key, the records of our entries a revocation made unusable; they
    are appended as new entries (fresh salt) and the revoked ones stay in the log as history.

    Idempotent and safe to re-run after a crash: each new entry's digest names the revoked
    entry it re-signs. A revoked entry whose authorisation has a later usable entry is
    skipped (re-appending it would bring an outdated status back). Returns how many records
    were re-published."""
    later = records.alias("later")
    later_entry = entries.alias("later_entry")
    superseded = (
        select(later.c.idx)
        .select_from(
            later.join(
                later_entry,
                (later_entry.c.log == later.c.log) & (later_entry.c.idx == later.c.idx),
            )
        )
        .where(
            later.c.log == records.c.log,
            later.c.issuer == records.c.issuer,
            later.c.authorisation == records.c.authorisation,
            later.c.aeo_type == records.c.aeo_type,
            later.c.idx > records.c.idx,
            later_entry.c.sig_state == "valid",
        )
        .exists()
    )
    async with node.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(entries.c.idx, records.c.disclosed_to)
                .select_from(
                    entries.join(
                        records,
                        (records.c.log == entries.c.log) & (records.c.idx == entries.c.idx),
                    )
                )
                .where(
                    entries.c.log == node.admin,
                    entries.c.sig_state == "revoked",
                    ~superseded,
                )
                .order_by(entries.c.idx)
            )
        ).all()
        if not rows:
            return 0
        decoded = await decode_own(conn, node.admin, [int(r.idx) for r in rows])
        recogniser = await active_recogniser(conn)
        checkpoint_signers = await node.checkpoint_signers(conn)
        _, entry_signer = await node.active_signers(conn)
    prepared = [
        prepare(
            decoded[int(r.idx)],
            entry_signer,
            disclosed_to=r.disclosed_to,
            republished_from=int(r.idx),
        )
        for r in rows
        if int(r.idx) in decoded
    ]
    log = IssuerLog(node)
    appended = 0
    for start in range(0, len(prepared), node.config.limits.publish_chunk):
        result = await log.append(
            prepared[start : start + node.config.limits.publish_chunk],
            recogniser=recogniser,
            day=node.config.today(),
            checkpoint_signers=checkpoint_signers,
            actor=actor,
        )
        appended += result.appended
    return appended
