"""Entry signature checks that can run in a worker process.

Verifying Ed25519 entry signatures costs about 100 µs each; during a catch-up of a large log
that is the biggest CPU cost of a replica, so the background verifier hands large chunks to a
process pool. What runs there is only this module's pure functions over bytes (the envelope,
the public keys' DER): no database, no trust statement objects, nothing that needs pickling
beyond bytes and strings. What an outcome *means* (valid, revoked, early, invalid) is decided
in :mod:`gateway.verification`, which knows the trust statement.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

from google.protobuf.message import DecodeError

from crypto.envelope import pae
from crypto.errors import CryptoError, VerificationError
from crypto.keys import PublicKey
from gateway import codec
from gateway.errors import GatewayError
from gateway.records import Record
from mra.v1 import envelope_pb2

# (key id, SubjectPublicKeyInfo DER) of every signing key of the issuer's trust statement.
KeyMaterial = tuple[tuple[str, bytes], ...]
# Per signature by a known key, in envelope order: (key id, error or None). The list stops at
# the first signature that does not verify (the entry is invalid from there on).
SignatureResults = tuple[tuple[str, str | None], ...]
# Per entry: (why the bytes are not a signed envelope, or None; results by known keys).
Outcome = tuple[str | None, SignatureResults]

# An entry checked: its signature outcome, its record when a signature by a known key verified
# (decoded here too, so the worker takes that cost off the event loop; bytes are still verified
# before they are parsed), and why the payload did not decode, if it did not.
Checked = tuple[Outcome, Record | None, str | None]

# Chunks with fewer signatures than this are verified in the caller's process: a process
# round trip costs more than verifying them (and live-tail batches stay low-latency).
POOL_MIN_ENVELOPES = 128

_keys: dict[bytes, PublicKey] = {}


def parse_envelope(envelope: bytes) -> envelope_pb2.Envelope:
    message = envelope_pb2.Envelope()
    try:
        message.ParseFromString(envelope)
    except DecodeError as error:
        raise VerificationError(f"entry is not a serialized Envelope: {error}") from error
    if not message.signatures:
        raise VerificationError("entry envelope carries no signature")
    return message


def _public_key(der: bytes) -> PublicKey:
    key = _keys.get(der)
    if key is None:
        key = _keys[der] = PublicKey.from_der(der)
    return key


def verify_envelope(keys: KeyMaterial, envelope: bytes) -> Outcome:
    """Parse ``envelope`` and verify each signature made by a key of ``keys``."""
    try:
        message = parse_envelope(envelope)
    except VerificationError as error:
        return str(error), ()
    known = dict(keys)
    message_bytes = pae(message.payload_type, message.payload)
    results: list[tuple[str, str | None]] = []
    for signature in message.signatures:
        der = known.get(signature.key_id)
        if der is None:
            continue
        try:
            _public_key(der).verify(signature.sig, message_bytes)
        except (VerificationError, CryptoError) as error:
            results.append((signature.key_id, str(error)))
            break
        results.append((signature.key_id, None))
    return None, tuple(results)


def check_envelope(keys: KeyMaterial, envelope: bytes) -> Checked:
    outcome = verify_envelope(keys, envelope)
    malformed, results = outcome
    if malformed is not None or not any(error is None for _, error in results):
        return outcome, None, None
    message = parse_envelope(envelope)
    try:
        record = codec.decode(message.payload_type, bytes(message.payload))
    except (GatewayError, CryptoError) as error:
        return outcome, None, str(error)
    return outcome, record, None


def check_envelopes(keys: KeyMaterial, envelopes: Sequence[bytes]) -> list[Checked]:
    """The worker's entry point: one call per chunk, so bytes cross the process once."""
    return [check_envelope(keys, e) for e in envelopes]


_pool: ProcessPoolExecutor | None = None
_workers = 1


def close_verifier_pool() -> None:
    """Stop the verification workers, if any (idempotent; also registered with atexit)."""
    global _pool  # noqa: PLW0603 - the one process-wide pool
    if _pool is not None:
        _pool.shutdown(wait=False, cancel_futures=True)
        _pool = None


def _background_priority() -> None:
    """Workers yield the CPU to the process that receives and stores batches (the hot path):
    verification is background work that may lag a catch-up, never the other way round."""
    with contextlib.suppress(OSError):
        os.nice(10)


def _get_pool() -> ProcessPoolExecutor:
    global _pool, _workers  # noqa: PLW0603 - the one process-wide pool
    if _pool is None:
        # One core is left to the event loop (receiving and storing batches); "spawn" because
        # forking a process that runs gRPC threads is unsafe.
        _workers = max(1, (os.cpu_count() or 2) - 1)
        _pool = ProcessPoolExecutor(
            _workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_background_priority,
        )
        atexit.register(close_verifier_pool)
    return _pool


async def check_chunk(keys: KeyMaterial, envelopes: Sequence[bytes]) -> list[Checked]:
    """Check a chunk: in the worker pool when it is large, else here."""
    if len(envelopes) < POOL_MIN_ENVELOPES:
        return check_envelopes(keys, envelopes)
    loop = asyncio.get_running_loop()
    try:
        pool = _get_pool()
        # Split across the workers so that all of them are busy on a large chunk.
        parts = max(1, min(len(envelopes) // POOL_MIN_ENVELOPES, _workers))
        size = -(-len(envelopes) // parts)
        futures = [
            loop.run_in_executor(pool, check_envelopes, keys, list(envelopes[i : i + size]))
            for i in range(0, len(envelopes), size)
        ]
        parts_done = await asyncio.gather(*futures)
    except (OSError, RuntimeError):
        # No pool (a broken worker, or the interpreter shutting down): the answer must not
        # depend on where it is computed, so compute it here.
        close_verifier_pool()
        return check_envelopes(keys, envelopes)
    return [outcome for part in parts_done for outcome in part]
