"""Benchmark of the crypto package: signatures, DSSE, and the tiled Merkle log over SQLite.

Run: ``.venv/bin/python bench/bench_crypto.py [--leaves N]`` (default 1,000,000 leaves).

Prints a Markdown table. Raw baselines (hashlib SHA-256 calls, a pure in-memory root over the
same leaves, the ``cryptography`` primitives called directly) are measured in the same run so the
results can be read as ratios independent of the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from crypto.envelope import pae, sign_envelope
from crypto.keys import Scheme, generate_private_key
from crypto.merkle import (
    Frontier,
    MerkleLog,
    TileId,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)


class SqliteTileStore:
    """A TileStore in a real SQLite file; one row per tile, replaced as partial tiles grow."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS tiles (level INTEGER NOT NULL, idx INTEGER NOT NULL, "
            "data BLOB NOT NULL, PRIMARY KEY (level, idx)) WITHOUT ROWID"
        )
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS head (id INTEGER PRIMARY KEY CHECK (id = 1), frontier BLOB)"
        )
        self.reads = 0

    def get_tiles(self, ids: Collection[TileId]) -> Mapping[TileId, bytes]:
        found: dict[TileId, bytes] = {}
        for tile_id in ids:
            row = self.conn.execute(
                "SELECT data FROM tiles WHERE level = ? AND idx = ?", (tile_id.level, tile_id.index)
            ).fetchone()
            self.reads += 1
            if row is not None:
                found[tile_id] = row[0]
        return found

    def put_tiles(self, tiles: Mapping[TileId, bytes]) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO tiles (level, idx, data) VALUES (?, ?, ?)",
            [(t.level, t.index, data) for t, data in tiles.items()],
        )


def timed(count: int, fn: Callable[[int], object]) -> float:
    start = time.perf_counter()
    for i in range(count):
        fn(i)
    return time.perf_counter() - start


def naive_root(leaves: list[bytes]) -> bytes:
    """Baseline: the plainest in-memory RFC 6962 root, hashlib called directly."""
    sha = hashlib.sha256
    level = leaves
    while len(level) > 1:
        nxt = [sha(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=2_000, help="leaves per append transaction")
    parser.add_argument("--proofs", type=int, default=5_000)
    parser.add_argument("--signatures", type=int, default=5_000)
    args = parser.parse_args()
    rows: list[tuple[str, int, float, str]] = []

    def record(name: str, count: int, seconds: float, note: str = "") -> float:
        rate = count / seconds
        rows.append((name, count, seconds, note))
        print(f"  {name}: {rate:,.0f}/s", flush=True)
        return rate

    message = os.urandom(300)  # about the size of a serialized AEO status record
    payload_type = "application/vnd.mra.v1.AeoStatus+protobuf"
    n_sig = args.signatures

    # -- baselines -------------------------------------------------------------------------------
    block = os.urandom(65)
    sha = hashlib.sha256
    raw_sha = record(
        "raw hashlib.sha256 (65-byte input)",
        1_000_000,
        timed(1_000_000, lambda _i: sha(block).digest()),
    )

    raw_ed = ed25519.Ed25519PrivateKey.generate()
    raw_ed_pub = raw_ed.public_key()
    raw_ed_sig = raw_ed.sign(message)
    raw_ed_sign = record(
        "raw cryptography Ed25519 sign", n_sig, timed(n_sig, lambda _i: raw_ed.sign(message))
    )
    raw_ed_verify = record(
        "raw cryptography Ed25519 verify",
        n_sig,
        timed(n_sig, lambda _i: raw_ed_pub.verify(raw_ed_sig, message)),
    )
    raw_ec = ec.generate_private_key(ec.SECP256R1())
    raw_ec_sig = raw_ec.sign(message, ec.ECDSA(hashes.SHA256()))
    raw_ec_sign = record(
        "raw cryptography ECDSA P-256 sign",
        n_sig,
        timed(n_sig, lambda _i: raw_ec.sign(message, ec.ECDSA(hashes.SHA256()))),
    )
    raw_ec_verify = record(
        "raw cryptography ECDSA P-256 verify",
        n_sig,
        timed(
            n_sig,
            lambda _i: raw_ec.public_key().verify(raw_ec_sig, message, ec.ECDSA(hashes.SHA256())),
        ),
    )

    # -- our signatures ----------------------------------------------------------------------------
    ed = generate_private_key(Scheme.ED25519)
    ed_sig = ed.sign(message)
    record(
        "Ed25519 sign (crypto.keys)",
        n_sig,
        timed(n_sig, lambda _i: ed.sign(message)),
        f"raw {raw_ed_sign:,.0f}/s",
    )
    record(
        "Ed25519 verify (crypto.keys)",
        n_sig,
        timed(n_sig, lambda _i: ed.public_key.verify(ed_sig, message)),
        f"raw {raw_ed_verify:,.0f}/s",
    )
    record(
        "PAE + Ed25519 sign (sign_envelope, 300 B)",
        n_sig,
        timed(n_sig, lambda _i: sign_envelope(payload_type, message, [ed])),
    )
    record("PAE alone", 100_000, timed(100_000, lambda _i: pae(payload_type, message)))
    p256 = generate_private_key(Scheme.ECDSA_P256_SHA256)
    p256_sig = p256.sign(message)
    record(
        "ECDSA P-256 sign (crypto.keys)",
        n_sig,
        timed(n_sig, lambda _i: p256.sign(message)),
        f"raw {raw_ec_sign:,.0f}/s",
    )
    record(
        "ECDSA P-256 verify (crypto.keys)",
        n_sig,
        timed(n_sig, lambda _i: p256.public_key.verify(p256_sig, message)),
        f"raw {raw_ec_verify:,.0f}/s",
    )

    # -- Merkle ------------------------------------------------------------------------------------
    n = args.leaves
    print(f"hashing {n:,} leaves ...", flush=True)
    start = time.perf_counter()
    leaves = [leaf_hash(i.to_bytes(8, "big") + message[:56]) for i in range(n)]
    record("leaf_hash (64-byte entries)", n, time.perf_counter() - start)

    start = time.perf_counter()
    expected_root = naive_root(leaves)
    naive = record(
        "raw in-memory root (naive, hashlib)", n, time.perf_counter() - start, "leaves/s"
    )

    start = time.perf_counter()
    frontier_root = Frontier.empty().append(leaves).root
    pure = record("Frontier.append in memory (no I/O)", n, time.perf_counter() - start, "leaves/s")
    assert frontier_root == expected_root

    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "tiles.sqlite"
        store = SqliteTileStore(db_path)
        log = MerkleLog(store)
        batch = args.batch
        start = time.perf_counter()
        for offset in range(0, n, batch):
            # One transaction per batch, as the gateway does: tiles and the log head together.
            store.conn.execute("BEGIN IMMEDIATE")
            log.append(leaves[offset : offset + batch])
            store.conn.execute(
                "INSERT OR REPLACE INTO head (id, frontier) VALUES (1, ?)",
                (log.frontier.to_bytes(),),
            )
            store.conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
        appended = record(
            f"MerkleLog.append into SQLite ({batch}/txn)", n, elapsed, "leaves/s, incl. commits"
        )
        assert log.root() == expected_root
        rows_count, size_bytes = store.conn.execute(
            "SELECT COUNT(*), SUM(LENGTH(data)) FROM tiles"
        ).fetchone()
        store.conn.close()
        db_bytes = db_path.stat().st_size + sum(
            p.stat().st_size for p in db_path.parent.glob("tiles.sqlite-*")
        )

        # Proofs from a fresh connection: nothing cached in Python.
        reader = SqliteTileStore(db_path)
        head = reader.conn.execute("SELECT frontier FROM head").fetchone()[0]
        log2 = MerkleLog(reader, Frontier.from_bytes(head))
        root = log2.root()
        rng = random.Random(6962)
        indices = [rng.randrange(n) for _ in range(args.proofs)]
        start = time.perf_counter()
        proofs = [log2.inclusion_proof(i) for i in indices]
        gen = record(
            f"inclusion proof from SQLite tiles (size {n:,})",
            len(indices),
            time.perf_counter() - start,
        )
        reads_per_proof = reader.reads / len(indices)
        start = time.perf_counter()
        for i, proof in zip(indices, proofs, strict=True):
            verify_inclusion(leaves[i], i, n, proof, root)
        ver = record("inclusion proof verify", len(indices), time.perf_counter() - start)

        olds = [rng.randrange(1, n) for _ in range(args.proofs // 5)]
        start = time.perf_counter()
        cproofs = [log2.consistency_proof(o) for o in olds]
        record(
            f"consistency proof from SQLite tiles (to {n:,})",
            len(olds),
            time.perf_counter() - start,
        )
        old_roots = [naive_root(leaves[:o]) for o in olds[:20]]
        start = time.perf_counter()
        for o, r, p in zip(olds[:20], old_roots, cproofs[:20], strict=True):
            verify_consistency(o, n, p, r, root)
        record("consistency proof verify", 20, time.perf_counter() - start)
        reader.conn.close()

    print()
    print("| operation | count | seconds | rate (/s) | note |")
    print("|---|---:|---:|---:|---|")
    for name, count, seconds, note in rows:
        print(f"| {name} | {count:,} | {seconds:.3f} | {count / seconds:,.0f} | {note} |")
    print()
    print("Ratios (same run):")
    print(f"- in-memory Frontier.append vs naive in-memory root: {pure / naive:.2f}x")
    print(f"- SQLite-persisted append vs naive in-memory root: {appended / naive:.2f}x")
    print(
        "- SQLite-persisted append vs raw sha256 calls: 1 leaf costs "
        f"{raw_sha / appended:.1f} sha256-call-equivalents"
    )
    print(f"- inclusion proof generation: {raw_sha / gen:.0f} sha256-call-equivalents per proof")
    print(f"- inclusion proof verification: {raw_sha / ver:.1f} sha256-call-equivalents per proof")
    print(
        f"Storage: {rows_count:,} tile rows, {size_bytes:,} bytes of hashes "
        f"({size_bytes / n:.1f} B/leaf), SQLite files {db_bytes:,} bytes; "
        f"{reads_per_proof:.1f} tile reads per inclusion proof."
    )


if __name__ == "__main__":
    main()
