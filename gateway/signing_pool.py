"""Entry signing, in this process or in worker processes, for publishing.

Ed25519 signing costs about 33 µs per entry on one core, as much as the rest of publishing:
done on the event loop it halves the publish rate and stalls every other request. A publish
that spans several chunks therefore signs them in worker processes while the event loop
appends the chunk before (:class:`SigningPool`); a small publish signs in process, where a
pool would cost more than it saves.

The workers are plain child interpreters running :func:`_serve` over their stdin and stdout,
not a ``multiprocessing`` pool: ``spawn`` re-imports the parent's ``__main__`` in every worker
(the whole CLI or server, over a second under load, during which nothing is signed) and
``fork`` would copy a process that runs an event loop, database threads and gRPC.

Invariants:
- One function, :func:`sign_payloads`, makes the envelope bytes in both places: the exact bytes
  signed are ``PAE(payload_type, payload)`` of payloads encoded by the caller, so an entry
  signed by a worker is byte-identical to one signed in process (Ed25519 is deterministic).
- A worker's private key reaches it only as a message on its stdin pipe (never on a
  command line, in the environment or in a log) and lives only in that worker's memory.
- A worker that dies (or answers nonsense) fails the chunk it held with
  :class:`SigningWorkerError`; the publish stops before it appends that chunk (what was
  committed stays whole), and the next use starts new workers. A worker exits when its stdin
  closes, so it never outlives its parent.
- The pool is created lazily and closed by :func:`close_shared_pool` (registered with
  ``atexit``; a server may call it at shutdown). Closing twice, or a pool never started, is fine.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from crypto.envelope import pae
from crypto.keys import PrivateKeySigner
from crypto.merkle import leaf_hash
from gateway.errors import UnreachableError
from mra.v1 import envelope_pb2

# (payload_type, payload) in, (envelope, leaf_hash) out.
PayloadItem = tuple[str, bytes]
SignedItem = tuple[bytes, bytes]

__all__ = [
    "PayloadItem",
    "SignedItem",
    "SigningPool",
    "SigningWorkerError",
    "close_shared_pool",
    "default_workers",
    "envelope_bytes",
    "shared_pool",
    "sign_payloads",
]

# How long close() waits for a worker to exit after its stdin closed, before killing it.
_EXIT_GRACE_S = 5.0


class SigningWorkerError(UnreachableError):
    """A signing worker died or could not start: nothing of the chunk it held was stored, and
    re-running the publish completes it (publishing is idempotent)."""


def envelope_bytes(payload_type: str, payload: bytes, signer: PrivateKeySigner) -> bytes:
    message = envelope_pb2.Envelope(payload=payload, payload_type=payload_type)
    message.signatures.add(key_id=signer.key_id, sig=signer.sign(pae(payload_type, payload)))
    return bytes(message.SerializeToString(deterministic=True))


def sign_payloads(signer: PrivateKeySigner, items: Sequence[PayloadItem]) -> list[SignedItem]:
    """Sign each payload as one entry: its envelope bytes and their Merkle leaf hash."""
    out: list[SignedItem] = []
    for payload_type, payload in items:
        envelope = envelope_bytes(payload_type, payload, signer)
        out.append((envelope, leaf_hash(envelope)))
    return out


def default_workers() -> int:
    """One core stays with the event loop (it hashes, encodes and writes while workers sign);
    the others sign. At least one worker, at most four (beyond that the appends bound)."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


# --- the worker side -------------------------------------------------------------------------

# What a worker interpreter runs: the parent's import path first (the same interpreter, so the
# same packages), then the serving loop. Nothing secret is on this command line.
_BOOTSTRAP = (
    "import pickle, sys\n"
    "sys.path[:] = pickle.load(sys.stdin.buffer)\n"
    "from gateway.signing_pool import _serve\n"
    "_serve()\n"
)


def _load_key(key_der: bytes) -> PrivateKeySigner:
    key = serialization.load_der_private_key(key_der, password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise TypeError("signing worker: the key is neither Ed25519 nor ECDSA")
    return PrivateKeySigner(key)


def _serve() -> None:
    """A worker's loop: read the key (unencrypted PKCS#8 DER), say which key it holds, then
    answer each list of payloads with their signed entries until stdin closes."""
    # Interrupts go to the parent, which closes our stdin; a Ctrl-C in a terminal must not
    # kill a worker in the middle of a chunk the parent is waiting for.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Replies go to a private copy of stdout; anything else printed goes to stderr, so no
    # stray output can corrupt a reply.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    # Pickle is safe here: both ends of this private pipe are this module, in one trust domain.
    signer = _load_key(pickle.load(requests))  # noqa: S301
    _reply(replies, ("ready", signer.key_id))
    while True:
        try:
            items = pickle.load(requests)  # noqa: S301 - from our parent only
        except EOFError:
            return
        try:
            _reply(replies, ("signed", sign_payloads(signer, items)))
        except Exception as error:
            # Reported to the parent, which fails the chunk (the type only: no data echoed).
            _reply(replies, ("error", type(error).__name__))


def _reply(stream: IO[bytes], message: tuple[str, Any]) -> None:
    pickle.dump(message, stream, protocol=pickle.HIGHEST_PROTOCOL)
    stream.flush()


# --- the parent side -------------------------------------------------------------------------


class _Worker:
    """One worker interpreter and its pipes; used by one thread at a time."""

    def __init__(self, key_der: bytes, key_id: str) -> None:
        self.key_id = key_id
        self._ready = False
        # One conversation at a time on the pipes (the readiness probe and a chunk may race).
        self._lock = threading.Lock()
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and bootstrap
            [sys.executable, "-c", _BOOTSTRAP],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        if self.process.stdin is None or self.process.stdout is None:  # pragma: no cover
            raise SigningWorkerError("a signing worker has no pipes")
        self._requests: IO[bytes] = self.process.stdin
        self._replies: IO[bytes] = self.process.stdout
        try:
            # Both fit in the pipe's buffer, so this never waits for the worker to start.
            self._send(list(sys.path))
            self._send(key_der)
        except OSError as error:
            self.close()
            raise SigningWorkerError("a signing worker could not be started") from error

    def _send(self, message: object) -> None:
        pickle.dump(message, self._requests, protocol=pickle.HIGHEST_PROTOCOL)
        self._requests.flush()

    def _receive(self) -> tuple[str, Any]:
        reply = pickle.load(self._replies)  # noqa: S301 - from our own worker only
        if not (isinstance(reply, tuple) and len(reply) == 2 and isinstance(reply[0], str)):
            raise SigningWorkerError("a signing worker answered something unexpected")
        return reply

    def wait_ready(self) -> None:
        """Block until the worker has loaded its key (it says so once, after starting)."""
        with self._lock:
            self._wait_ready()

    def _wait_ready(self) -> None:
        if self._ready:
            return
        try:
            kind, key_id = self._receive()
        except (EOFError, OSError, ValueError, pickle.UnpicklingError) as error:
            raise self._failed() from error
        if kind != "ready" or key_id != self.key_id:
            raise SigningWorkerError("a signing worker did not load the key it was sent")
        self._ready = True

    def sign(self, items: list[PayloadItem]) -> list[SignedItem]:
        with self._lock:
            self._wait_ready()
            try:
                self._send(items)
                kind, value = self._receive()
            except (EOFError, OSError, ValueError, pickle.UnpicklingError) as error:
                raise self._failed() from error
        if kind != "signed" or not isinstance(value, list) or len(value) != len(items):
            raise SigningWorkerError(f"a signing worker failed to sign a chunk ({value})")
        return value

    def _failed(self) -> SigningWorkerError:
        # EOF or a broken pipe: the worker died; ValueError: its pipes were closed by close().
        code = self.process.poll()
        return SigningWorkerError(
            f"a signing worker exited (status {code})"
            if code is not None
            else "a signing worker stopped answering"
        )

    def close(self) -> None:
        """Close its stdin (the worker exits), and kill it if it does not within the grace."""
        with contextlib.suppress(OSError):
            self._requests.close()
        try:
            self.process.wait(_EXIT_GRACE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        with contextlib.suppress(OSError):
            self._replies.close()


@dataclass
class _Workers:
    """The workers of one key, and a thread per worker that waits on its pipes."""

    key_id: str
    workers: list[_Worker]
    threads: ThreadPoolExecutor
    idle: queue.SimpleQueue[_Worker] = field(default_factory=queue.SimpleQueue)
    broken: bool = False
    # One per worker, submitted before any chunk: done once that worker has loaded its key.
    probes: list[Future[None]] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return all(p.done() and p.exception() is None for p in self.probes)

    def sign(self, items: list[PayloadItem]) -> list[SignedItem]:
        worker = self.idle.get()
        try:
            return worker.sign(items)
        except SigningWorkerError:
            # Its pipes may hold half a reply: never use this set of workers again.
            self.broken = True
            raise
        finally:
            self.idle.put(worker)

    def close(self, *, wait_for_work: bool) -> None:
        # Chunks already handed over finish first unless we are shutting down.
        self.threads.shutdown(wait=wait_for_work, cancel_futures=not wait_for_work)
        for worker in self.workers:
            worker.close()


class SigningPool:
    """Worker processes that sign payloads with one entry-signing key at a time."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers if workers is not None else default_workers()
        self._lock = threading.Lock()
        self._current: _Workers | None = None

    @property
    def started(self) -> bool:
        with self._lock:
            return self._current is not None and not self._current.broken

    def worker_pids(self) -> list[int]:
        """The process ids of the running workers (for operators and tests)."""
        with self._lock:
            current = self._current
        return [w.process.pid for w in current.workers] if current is not None else []

    def warm_up(self, signer: PrivateKeySigner) -> None:
        """Start the workers for ``signer`` now: an interpreter takes a few hundred
        milliseconds to start, which the caller can overlap with validating its input."""
        self._workers_for(signer)

    def ready(self, signer: PrivateKeySigner) -> bool:
        """Whether every worker holds ``signer``'s key and waits for work (False while they
        start: a caller may rather sign a chunk itself than wait for them)."""
        with self._lock:
            current = self._current
        return (
            current is not None
            and current.key_id == signer.key_id
            and not current.broken
            and current.ready
        )

    def submit(
        self, signer: PrivateKeySigner, items: Sequence[PayloadItem]
    ) -> Future[list[SignedItem]]:
        """Sign ``items`` in a worker holding ``signer``'s key (started for it if needed)."""
        current = self._workers_for(signer)
        return current.threads.submit(current.sign, list(items))

    def close(self) -> None:
        with self._lock:
            current, self._current = self._current, None
        if current is not None:
            current.close(wait_for_work=False)

    def _workers_for(self, signer: PrivateKeySigner) -> _Workers:
        with self._lock:
            current = self._current
            if current is not None and current.key_id == signer.key_id and not current.broken:
                return current
            key_der = signer.cryptography_key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            started: list[_Worker] = []
            try:
                for _ in range(self.workers):
                    started.append(_Worker(key_der, signer.key_id))
            except BaseException:
                for worker in started:
                    worker.close()
                raise
            fresh = _Workers(
                signer.key_id,
                started,
                ThreadPoolExecutor(len(started), thread_name_prefix="signing-worker"),
            )
            for worker in started:
                fresh.idle.put(worker)
                fresh.probes.append(fresh.threads.submit(worker.wait_ready))
            self._current = fresh
        if current is not None:
            # A rotated key or a dead worker: retire the old set in the background (chunks
            # already handed to it finish first; a broken set fails them anyway).
            threading.Thread(
                target=current.close, kwargs={"wait_for_work": True}, daemon=True
            ).start()
        return fresh


class _Shared:
    """The process's one pool (a serving gateway publishes through many IssuerLog objects)."""

    lock = threading.Lock()
    pool: SigningPool | None = None
    at_exit = False


def shared_pool() -> SigningPool:
    """The process's signing pool (created on first use; workers start on first submit)."""
    with _Shared.lock:
        if _Shared.pool is None:
            _Shared.pool = SigningPool()
            if not _Shared.at_exit:
                atexit.register(close_shared_pool)
                _Shared.at_exit = True
        return _Shared.pool


def close_shared_pool() -> None:
    """Stop the process's signing workers, if any (idempotent; safe at exit)."""
    with _Shared.lock:
        pool, _Shared.pool = _Shared.pool, None
    if pool is not None:
        pool.close()
