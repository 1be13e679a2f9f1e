#!/usr/bin/env python3
"""Check an mra-gateway evidence bundle with the Python standard library and `openssl` only.

This program shares no code with mra-gateway: it is the proof that the trust, signature and
inclusion parts of a bundle (docs/evidence.md) can be checked by anyone, from the published
formats alone. It imports nothing outside the standard library and does every signature check
with the `openssl` command (OpenSSL 3):

  Ed25519:          openssl pkeyutl -verify -pubin -inkey KEY.pem -rawin -in MSG -sigfile SIG
  ECDSA P-256:      openssl dgst -sha256 -verify KEY.pem -signature SIG MSG
  key ids:          SHA-256 of `openssl pkey -pubin -in KEY.pem -outform DER` (the SPKI DER)

Checks, in order:
1. the issuer's trust statements (DSSE JSON envelopes over canonical JSON) form a chain from
   version 1, whose root key id is one of the --trust fingerprints: each statement signed by
   its own root and the previous one (so a root rotation is signed by both), version n+1;
2. the entry (a protobuf mra.v1.Envelope, read by the small wire-format reader below) is signed
   over DSSE PAE(payload_type, payload) by a signing key of the newest statement that is not
   revoked at or before the entry's index;
3. the checkpoint note is signed, as the log origin, by an Ed25519 signing key of that statement
   (C2SP signed-note key hint) not revoked below the tree size;
4. SHA-256(0x00 || envelope) is included at the entry's index in that tree (RFC 9162 2.1.3.2);
5. each witness whose version-1 root is a --trust fingerprint has a valid chain and a valid
   C2SP cosignature/v1 on the checkpoint; other witnesses are reported as unverified;
6. the bundle's record is what the signed payload (a protobuf mra.v1.AeoStatus) says, and the
   embedded registry dataset's SHA-256 is its version.
Re-deriving the recognition answer needs the registry rules: that is left to `mragw verify`.

Usage:  python3 evidence_openssl_check.py BUNDLE --trust ROOT_FINGERPRINT [--trust ...]
Exit 0 when every check passed, 1 when one failed (the message names it), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

EVIDENCE_TYPE = "mra-gateway/evidence/v1"
STATEMENT_TYPE = "application/vnd.mra.trust-statement.v1+json"
STATEMENT_SCHEMA = "mra-gateway/trust-statement/v1"
MAX_BYTES = 8 * 1024 * 1024
# An Ed25519 SubjectPublicKeyInfo is this 12-byte DER prefix and the 32-byte raw key (RFC 8410).
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
# The named-curve OID of P-256 (1.2.840.10045.3.1.7), as it appears in its SPKI DER.
P256_OID = bytes.fromhex("06082a8648ce3d030107")
EM_DASH = "\u2014 "


class CheckFailedError(Exception):
    """One check failed; the message starts with the part that failed."""


def fail(part: str, detail: str) -> CheckFailedError:
    return CheckFailedError(f"{part}: {detail}")


def b64(value: Any, what: str) -> bytes:
    """Standard padded base64, canonical (one encoding per value)."""
    if not isinstance(value, str):
        raise fail("format", f"{what} is not a base64 string")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise fail("format", f"{what} is not base64") from None
    if base64.b64encode(raw).decode("ascii") != value:
        raise fail("format", f"{what} is not canonical base64")
    return raw


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


# --- openssl ------------------------------------------------------------------------------------


class OpenSSL:
    """Runs the openssl command on files in a private temporary directory."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("openssl")
        if exe is None:
            raise SystemExit("error: the openssl command is not on PATH")
        self.exe = exe
        self.workdir = workdir
        self.count = 0

    def file(self, data: bytes) -> str:
        self.count += 1
        path = self.workdir / f"f{self.count}"
        path.write_bytes(data)
        return str(path)

    def run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([self.exe, *args], capture_output=True, timeout=60, check=False)

    def spki_der(self, pem: str) -> bytes:
        done = self.run("pkey", "-pubin", "-in", self.file(pem.encode("ascii")), "-outform", "DER")
        if done.returncode != 0:
            raise fail("key", "openssl cannot read a public key: " + done.stderr.decode()[:200])
        return done.stdout

    def key_id(self, pem: str) -> str:
        return hashlib.sha256(self.spki_der(pem)).hexdigest()

    def verify(self, pem: str, message: bytes, signature: bytes) -> bool:
        """Verify with whatever key type the PEM holds: Ed25519 (pure, over the message) or
        ECDSA P-256 with SHA-256 (DER signature)."""
        der = self.spki_der(pem)
        key = self.file(pem.encode("ascii"))
        msg, sig = self.file(message), self.file(signature)
        if der.startswith(ED25519_SPKI_PREFIX) and len(der) == 44:
            done = self.run(
                "pkeyutl", "-verify", "-pubin", "-inkey", key, "-rawin", "-in", msg, "-sigfile", sig
            )
        elif P256_OID in der:
            done = self.run("dgst", "-sha256", "-verify", key, "-signature", sig, msg)
        else:
            raise fail("key", "neither an Ed25519 nor a P-256 public key")
        return done.returncode == 0 and b"Verified" in done.stdout

    def ed25519_raw(self, pem: str) -> bytes | None:
        der = self.spki_der(pem)
        if der.startswith(ED25519_SPKI_PREFIX) and len(der) == 44:
            return der[len(ED25519_SPKI_PREFIX) :]
        return None


# --- protobuf wire format: just mra.v1.Envelope ------------------------------------------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(10):
        if pos >= len(buf):
            raise fail("format", "truncated varint in the envelope")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise fail("format", "varint longer than 10 bytes in the envelope")


def _fields(buf: bytes, allowed: set[int], what: str) -> list[tuple[int, bytes]]:
    """Every (field number, bytes) of a message whose fields are all length-delimited."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire_type = tag >> 3, tag & 7
        if number not in allowed or wire_type != 2:
            raise fail("format", f"{what}: unexpected field {number} (wire type {wire_type})")
        size, pos = _varint(buf, pos)
        if pos + size > len(buf):
            raise fail("format", f"{what}: field {number} runs past the end")
        out.append((number, buf[pos : pos + size]))
        pos += size
    return out


AEO_STATUS_TYPE = "application/vnd.mra.v1.AeoStatus+protobuf"
SCHEMES = {1: "EORI", 2: "MID", 3: "TIN", 4: "NATIONAL", 5: "AUTH"}
STATUSES = {1: "ACTIVE", 2: "SUSPENDED", 3: "REVOKED", 4: "ANNULLED", 5: "WITHDRAWN"}
STATUSES[6] = "CONSENT_WITHDRAWN"
# AeoStatus field numbers (proto/mra/v1/records.proto) -> record member; 2 and 13 repeat.
AEO_STATUS_TEXT = {1: "issuer", 3: "name", 4: "country", 5: "authorisation", 6: "type"}
AEO_STATUS_TEXT |= {8: "status_date", 9: "valid_from", 10: "valid_until", 11: "last_validation"}


def _wire(buf: bytes, what: str) -> list[tuple[int, int | bytes]]:
    """Every (field number, value) of a message: varints as int, length-delimited as bytes."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, pos = _varint(buf, pos)
            out.append((number, value))
        elif wire_type == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise fail("record", f"{what}: field {number} runs past the end")
            out.append((number, buf[pos : pos + size]))
            pos += size
        else:
            raise fail("record", f"{what}: field {number} has wire type {wire_type}")
    return out


def decode_aeo_status(payload: bytes) -> dict[str, Any]:
    """The record an AeoStatus payload holds, in the bundle's ``record`` form."""
    record: dict[str, Any] = {
        "kind": "aeo_status",
        "operator_ids": [],
        "status": None,
        "valid_from": None,
        "valid_until": None,
        "last_validation": None,
        "consent": False,
        "audience": [],
    }
    for number, value in _wire(payload, "AeoStatus"):
        if number in AEO_STATUS_TEXT and isinstance(value, bytes):
            record[AEO_STATUS_TEXT[number]] = value.decode("utf-8")
        elif number == 2 and isinstance(value, bytes):
            inner = dict(_wire(value, "OperatorId"))
            scheme, text = inner.get(1, 0), inner.get(2, b"")
            if not isinstance(scheme, int) or not isinstance(text, bytes):
                raise fail("record", "malformed OperatorId")
            record["operator_ids"].append(
                {"scheme": SCHEMES.get(scheme, "?"), "value": text.decode("utf-8")}
            )
        elif number == 7 and isinstance(value, int):
            record["status"] = STATUSES.get(value, "?")
        elif number == 12 and isinstance(value, int):
            record["consent"] = value == 1
        elif number == 13 and isinstance(value, bytes):
            record["audience"].append(value.decode("utf-8"))
        elif number != 14:  # 14 is the salt: it only hides the leaf hash's content
            raise fail("record", f"AeoStatus field {number} is unexpected")
    # proto3 leaves an empty valid_from out; the record says null.
    record["valid_from"] = record["valid_from"] or None
    return record


def parse_envelope(buf: bytes) -> tuple[bytes, str, list[tuple[str, bytes]]]:
    """mra.v1.Envelope {1 bytes payload, 2 string payload_type, 3 repeated Signature {1 string
    key_id, 2 bytes sig}}; a repeated singular field is refused (no "last one wins")."""
    payload, payload_type, signatures = b"", "", []
    seen: set[int] = set()
    for number, value in _fields(buf, {1, 2, 3}, "Envelope"):
        if number in seen and number != 3:
            raise fail("format", f"Envelope field {number} appears twice")
        seen.add(number)
        if number == 1:
            payload = value
        elif number == 2:
            payload_type = value.decode("utf-8")
        else:
            key_id, sig, inner = "", b"", set()
            for n, v in _fields(value, {1, 2}, "Signature"):
                if n in inner:
                    raise fail("format", f"Signature field {n} appears twice")
                inner.add(n)
                if n == 1:
                    key_id = v.decode("utf-8")
                else:
                    sig = v
            signatures.append((key_id, sig))
    return payload, payload_type, signatures


# --- 1. trust chains ---------------------------------------------------------------------------


def canonical(document: Any) -> bytes:
    """RFC 8785 for documents of strings, integers, booleans, nulls, lists and objects with
    ASCII member names (all a trust statement holds): sorted members, no whitespace, UTF-8."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def statement_of(envelope: Any, what: str) -> tuple[dict[str, Any], bytes]:
    if not isinstance(envelope, dict) or set(envelope) != {"payload", "payloadType", "signatures"}:
        raise fail(what, "not a DSSE envelope")
    if envelope["payloadType"] != STATEMENT_TYPE:
        raise fail(what, f"payload type {envelope['payloadType']!r}")
    payload = b64(envelope["payload"], "payload")
    doc = json.loads(payload)
    if not isinstance(doc, dict) or doc.get("_type") != STATEMENT_SCHEMA:
        raise fail(what, "not a trust statement")
    if canonical(doc) != payload:
        raise fail(what, "the payload is not canonical JSON")
    return doc, pae(STATEMENT_TYPE, payload)


def signed_by(
    ssl: OpenSSL, envelope: dict[str, Any], message: bytes, pem: str, key_id: str
) -> bool:
    return any(
        s.get("keyid") == key_id and ssl.verify(pem, message, b64(s.get("sig"), "sig"))
        for s in envelope["signatures"]
    )


def verify_chain(
    ssl: OpenSSL, chain: Any, anchors: set[str], admin: str, what: str
) -> tuple[dict[str, Any], str] | None:
    """The newest statement and the chain's root fingerprint; None when version 1's root is
    not an anchor (nothing in the chain is then believed)."""
    if not isinstance(chain, list) or not chain:
        raise fail(what, "no statements")
    previous: dict[str, Any] | None = None
    anchor = ""
    for position, envelope in enumerate(chain):
        doc, message = statement_of(envelope, what)
        root_pem = doc["root_key"]["public_key"]
        root_id = ssl.key_id(root_pem)
        if root_id != doc["root_key"]["key_id"]:
            raise fail(what, f"statement {position + 1}: root key id does not match its key")
        for key in doc["signing_keys"]:
            if ssl.key_id(key["public_key"]) != key["key_id"]:
                raise fail(what, f"signing key {key['key_id']} does not match its key")
        if previous is None:
            if doc["version"] != 1:
                raise fail(what, "the chain does not start at version 1")
            if root_id not in anchors:
                return None
            anchor = root_id
            if not signed_by(ssl, envelope, message, root_pem, root_id):
                raise fail(what, "version 1 is not signed by its root")
        else:
            old = previous["root_key"]
            if doc["version"] != previous["version"] + 1 or doc["admin"] != previous["admin"]:
                raise fail(what, f"statement {position + 1} is not version n+1 of the same admin")
            if not signed_by(ssl, envelope, message, old["public_key"], old["key_id"]):
                raise fail(what, f"version {doc['version']} is not signed by the previous root")
            if root_id != old["key_id"] and not signed_by(
                ssl, envelope, message, root_pem, root_id
            ):
                raise fail(what, f"version {doc['version']} is not signed by its new root")
        previous = doc
    assert previous is not None  # noqa: S101 - the chain is not empty
    if previous["admin"] != admin:
        raise fail(what, f"the chain is {previous['admin']}'s, not {admin}'s")
    if previous["log_origin"] != f"{admin.lower()}.mragw/log":
        raise fail(what, "log origin is not bound to the administration")
    return previous, anchor


# --- 2-5. entry, checkpoint, inclusion, cosignatures --------------------------------------------


def verify_entry(ssl: OpenSSL, entry: dict[str, Any], statement: dict[str, Any]) -> str:
    envelope = b64(entry["envelope"], "entry.envelope")
    payload, payload_type, signatures = parse_envelope(envelope)
    if payload != b64(entry["payload"], "entry.payload") or payload_type != entry["payload_type"]:
        raise fail("format", "entry.payload/payload_type differ from the envelope")
    keys = {k["key_id"]: k for k in statement["signing_keys"]}
    index = entry["index"]
    message = pae(payload_type, payload)
    revoked = ""
    for key_id, sig in signatures:
        key = keys.get(key_id)
        if key is None:
            continue
        if not ssl.verify(key["public_key"], message, sig):
            raise fail("entry signature", f"the signature by key {key_id} does not verify")
        if key["revoked_at_index"] is not None and index >= key["revoked_at_index"]:
            revoked = f"key {key_id} is revoked from index {key['revoked_at_index']}"
            continue
        return key_id
    raise fail("entry signature", revoked or "no signature by a signing key of the issuer")


def split_note(text: str) -> tuple[bytes, list[tuple[str, bytes]]]:
    end = text.find("\n\n")
    if end < 0 or not text.endswith("\n"):
        raise fail("checkpoint", "not a signed note")
    body, lines = text[: end + 1], text[end + 2 :].splitlines()
    signatures = []
    for line in lines:
        if not line.startswith(EM_DASH) or line.count(" ") != 2:
            raise fail("checkpoint", f"malformed signature line {line!r}")
        name, blob = line[len(EM_DASH) :].split(" ")
        signatures.append((name, b64(blob, "signature line")))
    return body.encode("utf-8"), signatures


def key_hint(name: str, kind: bytes, raw: bytes) -> bytes:
    return hashlib.sha256(name.encode("utf-8") + b"\n" + kind + raw).digest()[:4]


def verify_checkpoint(ssl: OpenSSL, note: str, statement: dict[str, Any]) -> tuple[int, bytes, str]:
    body, signatures = split_note(note)
    origin, size_text, root_text = body.decode("utf-8").split("\n")[:3]
    if origin != statement["log_origin"]:
        raise fail("checkpoint", f"origin {origin!r} is not {statement['log_origin']!r}")
    if not re.fullmatch(r"0|[1-9][0-9]*", size_text):
        raise fail("checkpoint", "tree size is not a decimal")
    size, root = int(size_text), b64(root_text, "root hash")
    for key in statement["signing_keys"]:
        raw = ssl.ed25519_raw(key["public_key"])
        if raw is None:
            continue
        hint = key_hint(origin, b"\x01", raw)
        for name, blob in signatures:
            if name != origin or blob[:4] != hint:
                continue
            if not ssl.verify(key["public_key"], body, blob[4:]):
                raise fail("checkpoint", f"the signature by key {key['key_id']} does not verify")
            revoked = key["revoked_at_index"]
            if revoked is None or size <= revoked:
                return size, root, key["key_id"]
    raise fail("checkpoint", f"no valid signature by {origin} with an unrevoked key")


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_inclusion(index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes) -> None:
    """RFC 9162 section 2.1.3.2."""
    if index >= size:
        raise fail("inclusion proof", f"index {index} is not below tree size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise fail("inclusion proof", "the proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or r != root:
        raise fail("inclusion proof", f"leaf {index} is not in the tree of size {size}")


def verify_cosignature(
    ssl: OpenSSL, note: str, admin: str, statement: dict[str, Any]
) -> tuple[str, int]:
    body, signatures = split_note(note)
    name = f"{admin.lower()}.mragw/witness"
    for key in statement["signing_keys"]:
        raw = ssl.ed25519_raw(key["public_key"])
        if raw is None or key["revoked_at_index"] is not None:
            continue
        hint = key_hint(name, b"\x04", raw)
        for line_name, blob in signatures:
            if line_name != name or blob[:4] != hint:
                continue
            if len(blob) != 4 + 8 + 64:
                raise fail(f"cosignature of {admin}", "wrong length")
            (stamp,) = struct.unpack(">Q", blob[4:12])
            message = b"cosignature/v1\ntime %d\n" % stamp + body
            if not ssl.verify(key["public_key"], message, blob[12:]):
                raise fail(f"cosignature of {admin}", "the signature does not verify")
            return key["key_id"], stamp
    raise fail(f"cosignature of {admin}", "no cosignature by a key of its trust statement")


BUNDLE_MEMBERS = {
    "": {"_type", "produced_at", "producer", "question", "answer", "entry", "inclusion_proof"}
    | {"checkpoint", "issuer_chain", "witnesses", "record", "dataset"},
    "entry": {"log", "index", "envelope", "leaf_hash", "payload_type", "payload", "signatures"},
    "inclusion_proof": {"index", "tree_size", "hashes"},
    "dataset": {"version", "content"},
}


def check_members(bundle: Any) -> None:
    """Exactly the documented members: nothing hides in an extra one."""
    for where, names in BUNDLE_MEMBERS.items():
        doc = bundle[where] if where else bundle
        if not isinstance(doc, dict) or set(doc) != names:
            raise fail("format", f"{where or 'bundle'}: members are not {sorted(names)}")
    for witness in bundle["witnesses"]:
        if not isinstance(witness, dict) or set(witness) != {"admin", "chain"}:
            raise fail("format", "a witness is not {admin, chain}")


def check(ssl: OpenSSL, bundle: dict[str, Any], anchors: set[str]) -> list[str]:
    """Every check; returns what was proven, one line each."""
    check_members(bundle)
    if bundle["_type"] != EVIDENCE_TYPE:
        raise fail("format", f"_type is not {EVIDENCE_TYPE}")
    entry, proof = bundle["entry"], bundle["inclusion_proof"]
    log = entry["log"]
    # 1. The issuer's chain.
    verified = verify_chain(ssl, bundle["issuer_chain"], anchors, log, "issuer trust chain")
    if verified is None:
        raise fail("issuer trust chain", f"the root of {log} is not among the --trust anchors")
    statement, root = verified
    # 2. The entry's signature.
    entry_key = verify_entry(ssl, entry, statement)
    # 3. The checkpoint.
    size, tree_root, checkpoint_key = verify_checkpoint(ssl, bundle["checkpoint"], statement)
    if proof["tree_size"] != size or proof["index"] != entry["index"]:
        raise fail("inclusion proof", "index or tree size differ from the entry and checkpoint")
    # 4. Inclusion.
    leaf = hashlib.sha256(b"\x00" + b64(entry["envelope"], "entry.envelope")).digest()
    if leaf != b64(entry["leaf_hash"], "entry.leaf_hash"):
        raise fail("inclusion proof", "entry.leaf_hash is not SHA-256(0x00 || envelope)")
    hashes = [b64(h, "proof hash") for h in proof["hashes"]]
    verify_inclusion(entry["index"], size, leaf, hashes, tree_root)
    proven = [
        f"trust: {log} root {root}, statement v{statement['version']}",
        f"entry: {entry['index']} signed by key {entry_key}",
        f"checkpoint: {statement['log_origin']} size {size} signed by key {checkpoint_key}",
        f"inclusion: leaf {leaf.hex()} at {entry['index']} of {size}",
    ]
    # 6. The record and the dataset's version.
    payload = b64(entry["payload"], "entry.payload")
    if entry["payload_type"] != AEO_STATUS_TYPE:
        raise fail("record", f"payload type {entry['payload_type']!r} is not an AeoStatus")
    decoded = decode_aeo_status(payload)
    if decoded != bundle["record"]:
        differ = sorted(k for k in decoded if decoded[k] != bundle["record"].get(k))
        raise fail("record", f"the bundle's record differs from the payload in {differ}")
    content = b64(bundle["dataset"]["content"], "dataset.content")
    if hashlib.sha256(content).hexdigest() != bundle["dataset"]["version"]:
        raise fail("dataset", "the content's SHA-256 is not dataset.version")
    proven.append(
        f"record: {decoded['issuer']} {decoded['type']} {decoded['authorisation']} "
        f"{decoded['status']} since {decoded['status_date']}"
    )
    proven.append(f"dataset: {bundle['dataset']['version']} (answer not re-derived here)")
    # 5. Witnesses.
    for witness in bundle["witnesses"]:
        admin = witness["admin"]
        what = f"cosignature of {admin}"
        if admin == log:
            raise fail(what, f"{admin} issued the log; it cannot also be a witness of it")
        found = verify_chain(ssl, witness["chain"], anchors, admin, what)
        if found is None:
            proven.append(f"witness: {admin} unverified (root not trusted)")
            continue
        key_id, stamp = verify_cosignature(ssl, bundle["checkpoint"], admin, found[0])
        proven.append(f"witness: {admin} verified, key {key_id}, time {stamp}")
    return proven


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--trust", action="append", required=True, metavar="ROOT_FINGERPRINT")
    args = parser.parse_args(argv)
    anchors = {t.strip().lower() for t in args.trust}
    if any(not re.fullmatch(r"[0-9a-f]{64}", t) for t in anchors):
        print("error: --trust takes 64 hex characters", file=sys.stderr)
        return 2
    try:
        data = args.bundle.read_bytes()
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        if len(data) > MAX_BYTES:
            raise fail("format", "file too large")
        try:
            bundle = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise fail("format", f"not a JSON document (truncated?): {error}") from None
        with tempfile.TemporaryDirectory() as workdir:
            proven = check(OpenSSL(Path(workdir)), bundle, anchors)
    except CheckFailedError as error:
        print(f"NOT VERIFIED: {error}", file=sys.stderr)
        return 1
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        # A member missing or of the wrong type: the file is not a well-formed bundle.
        print(f"NOT VERIFIED: format: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print("VERIFIED (trust, signatures, inclusion, record; checked with openssl)")
    print("\n".join(proven))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
