"""Merkle tree tests: RFC 6962 vectors (accept all, reject every mutation), an independent
recursive reference implementation, tile storage, frontier serialization and properties."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto.errors import (
    MalformedInputError,
    MalformedProofError,
    TileStoreError,
    VerificationError,
)
from crypto.merkle import (
    EMPTY_ROOT,
    Frontier,
    MemoryTileStore,
    MerkleLog,
    TileId,
    consistency_proof,
    consistency_proof_from_tiles,
    inclusion_proof,
    inclusion_proof_from_tiles,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    tiles_for_consistency_proof,
    tiles_for_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)
from tests.crypto.conftest import b64, load_vectors

# -- an independent reference: RFC 6962 section 2.1, written recursively from the text ---------


def ref_leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def ref_mth(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf *hashes*."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:])).digest()


def ref_path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    n = len(leaves)
    if n <= 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*ref_path(m, leaves[:k]), ref_mth(leaves[k:])]
    return [*ref_path(m - k, leaves[k:]), ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if b else [ref_mth(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*ref_subproof(m, leaves[:k], b), ref_mth(leaves[k:])]
    return [*ref_subproof(m - k, leaves[k:], False), ref_mth(leaves[:k])]


def ref_proof(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    if m in (0, len(leaves)):
        return []
    return ref_subproof(m, leaves, True)


def leaves_n(n: int, salt: bytes = b"") -> list[bytes]:
    return [ref_leaf(salt + i.to_bytes(4, "big")) for i in range(n)]


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# -- vectors ------------------------------------------------------------------------------------

TREE = load_vectors("merkle_tree.json")
INCLUSION = load_vectors("inclusion-valid.json")
CONSISTENCY = load_vectors("consistency-valid.json")


def test_empty_root_is_sha256_of_nothing() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_tree_vectors_leaf_and_roots() -> None:
    leaves: list[bytes] = []
    for entry in TREE:
        lh = leaf_hash(entry["leaf_data"].encode())
        assert lh == b64(entry["leaf_hash"])
        leaves.append(lh)
        assert root_from_leaf_hashes(leaves) == b64(entry["root_hash"])
        log = MerkleLog(MemoryTileStore())
        log.append(leaves)
        assert log.root() == b64(entry["root_hash"])


def test_tree_vectors_incremental_appends_match_every_head() -> None:
    log = MerkleLog(MemoryTileStore())
    for entry in TREE:
        assert log.append([b64(entry["leaf_hash"])]) == b64(entry["root_hash"])
    for size, entry in enumerate(TREE, start=1):
        assert log.root_at(size) == b64(entry["root_hash"])


def test_node_hash_against_vector() -> None:
    a, b = (b64(TREE[i]["leaf_hash"]) for i in (0, 1))
    assert node_hash(a, b) == b64(TREE[1]["root_hash"])


def _incl_args(v: dict[str, Any]) -> tuple[bytes, int, int, list[bytes], bytes]:
    return (
        b64(v["leaf_hash"]),
        v["leaf_index"],
        v["tree_size"],
        [b64(p) for p in v["inclusion_path"]],
        b64(v["root_hash"]),
    )


def _cons_args(v: dict[str, Any]) -> tuple[int, int, list[bytes], bytes, bytes]:
    return (
        v["old_size"],
        v["new_size"],
        [b64(p) for p in v["consistency_path"]],
        b64(v["old_root"]),
        b64(v["new_root"]),
    )


@pytest.mark.parametrize("vector", INCLUSION, ids=lambda v: f"{v['leaf_index']}-{v['tree_size']}")
def test_inclusion_vectors_accepted(vector: dict[str, Any]) -> None:
    verify_inclusion(*_incl_args(vector))


@pytest.mark.parametrize("vector", CONSISTENCY, ids=lambda v: f"{v['old_size']}-{v['new_size']}")
def test_consistency_vectors_accepted(vector: dict[str, Any]) -> None:
    verify_consistency(*_cons_args(vector))


# RFC 9162 sections 2.1.3.2 and 2.1.4.2 verification, transcribed from the RFC text, as a second
# independent oracle. Our verifier uses a different (decomposition) formulation; where a
# mutation changes only a size, the two must agree (some size changes are undetectable by any
# verifier: e.g. leaf 0 of size 9, 10 or 11 hashes the same path the same way).


def _h(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def rfc_verify_inclusion(
    leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes
) -> bool:
    if index < 0 or size < 0 or index >= size:
        return False
    if any(len(p) != 32 for p in path) or len(leaf) != 32 or len(root) != 32:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _h(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _h(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def rfc_verify_consistency(
    old: int, new: int, path: Sequence[bytes], old_root: bytes, new_root: bytes
) -> bool:
    if old < 0 or new < 0 or old > new:
        return False
    if any(len(p) != 32 for p in [*path, old_root, new_root]):
        return False
    if old == new:
        return not path and old_root == new_root
    if old == 0:  # the vectors' rule: the empty tree is a prefix of everything
        return not path and old_root == hashlib.sha256(b"").digest()
    if not path:
        return False
    path = list(path)
    if old & (old - 1) == 0:
        path = [old_root, *path]
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = _h(c, fr)
            sr = _h(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = _h(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0


def _accepts(fn: Any, *args: Any) -> bool:
    try:
        fn(*args)
    except VerificationError:
        return False
    return True


Mutation = tuple[str, tuple[Any, ...]]


def _inclusion_mutations(v: dict[str, Any]) -> tuple[list[Mutation], list[Mutation]]:
    """(mutations that must be rejected, size-only mutations checked against the RFC oracle)."""
    lh, idx, size, path, root = _incl_args(v)
    out: list[Mutation] = []
    for bit in range(256):
        out.append((f"leaf bit {bit}", (flip(lh, bit), idx, size, path, root)))
        out.append((f"root bit {bit}", (lh, idx, size, path, flip(root, bit))))
        for i in range(len(path)):
            bad = [*path]
            bad[i] = flip(bad[i], bit)
            out.append((f"path[{i}] bit {bit}", (lh, idx, size, bad, root)))
    for d in (-1, 1):
        out.append((f"index {d:+}", (lh, idx + d, size, path, root)))
    out.append(("index = size", (lh, size, size, path, root)))
    out.append(("size 0", (lh, 0, 0, path, root)))
    out.append(("size = index", (lh, idx, idx, path, root)))
    out.append(("overlong path", (lh, idx, size, [*path, root], root)))
    out.append(("overlong path leaf", (lh, idx, size, [*path, lh], root)))
    out.append(("short leaf", (lh[:31], idx, size, path, root)))
    out.append(("long root", (lh, idx, size, path, root + b"\x00")))
    if path:
        out.append(("empty path", (lh, idx, size, [], root)))
        out.append(("dropped last", (lh, idx, size, path[:-1], root)))
        out.append(("dropped first", (lh, idx, size, path[1:], root)))
        out.append(("doubled", (lh, idx, size, path * 2, root)))
        out.append(("short element", (lh, idx, size, [path[0][:31], *path[1:]], root)))
        out.append(("long element", (lh, idx, size, [path[0] + b"\x00", *path[1:]], root)))
        out.append(("leaf for root", (lh, idx, size, path, lh)))
    sizes: list[Mutation] = [
        (f"size {name}", (lh, idx, new_size, path, root))
        for name, new_size in (
            ("-1", size - 1),
            ("+1", size + 1),
            ("*2", size * 2),
            ("/2", size // 2),
        )
    ]
    return out, sizes


@pytest.mark.parametrize("vector", INCLUSION, ids=lambda v: f"{v['leaf_index']}-{v['tree_size']}")
def test_inclusion_vector_mutations_rejected(vector: dict[str, Any]) -> None:
    must_reject, size_changes = _inclusion_mutations(vector)
    assert len(must_reject) > 256
    assert rfc_verify_inclusion(*_incl_args(vector))  # the oracle accepts the original
    for name, args in must_reject:
        assert not _accepts(verify_inclusion, *args), f"mutation {name} was accepted"
        assert not rfc_verify_inclusion(*args), f"oracle accepts mutation {name}"
    for name, args in size_changes:
        assert _accepts(verify_inclusion, *args) == rfc_verify_inclusion(*args), name
    # *2 changes the path shape for every vector: never accepted.
    assert not _accepts(verify_inclusion, *size_changes[2][1])


def _consistency_mutations(v: dict[str, Any]) -> tuple[list[Mutation], list[Mutation]]:
    old, new, path, old_root, new_root = _cons_args(v)
    out: list[Mutation] = []
    for bit in range(256):
        out.append((f"old root bit {bit}", (old, new, path, flip(old_root, bit), new_root)))
        # From the empty tree nothing constrains the new root (see verify_consistency).
        if old != 0:
            out.append((f"new root bit {bit}", (old, new, path, old_root, flip(new_root, bit))))
        for i in range(len(path)):
            bad = [*path]
            bad[i] = flip(bad[i], bit)
            out.append((f"path[{i}] bit {bit}", (old, new, bad, old_root, new_root)))
    out.append(("old -1", (old - 1, new, path, old_root, new_root)))
    out.append(("old +1", (old + 1, new, path, old_root, new_root)))
    out.append(("old > new", (new + 1, new, path, old_root, new_root)))
    out.append(("overlong path", (old, new, [*path, new_root], old_root, new_root)))
    out.append(("short old root", (old, new, path, old_root[:31], new_root)))
    out.append(("long new root", (old, new, path, old_root, new_root + b"\x00")))
    if path:
        out.append(("empty path", (old, new, [], old_root, new_root)))
        out.append(("dropped last", (old, new, path[:-1], old_root, new_root)))
        out.append(("dropped first", (old, new, path[1:], old_root, new_root)))
        out.append(("short element", (old, new, [path[0][:31], *path[1:]], old_root, new_root)))
    if old_root != new_root:
        out.append(("swapped roots", (old, new, path, new_root, old_root)))
    sizes: list[Mutation] = [
        (f"new {name}", (old, n, path, old_root, new_root))
        for name, n in (("-1", new - 1), ("+1", new + 1), ("*2", new * 2 + 1), ("/2", new // 2))
    ]
    return out, sizes


@pytest.mark.parametrize("vector", CONSISTENCY, ids=lambda v: f"{v['old_size']}-{v['new_size']}")
def test_consistency_vector_mutations_rejected(vector: dict[str, Any]) -> None:
    must_reject, size_changes = _consistency_mutations(vector)
    assert len(must_reject) > 256
    assert rfc_verify_consistency(*_cons_args(vector))
    for name, args in must_reject:
        assert not _accepts(verify_consistency, *args), f"mutation {name} was accepted"
        assert not rfc_verify_consistency(*args), f"oracle accepts mutation {name}"
    for name, args in size_changes:
        assert _accepts(verify_consistency, *args) == rfc_verify_consistency(*args), name


def test_inclusion_proofs_for_vector_tree_match_vectors() -> None:
    leaves = [b64(e["leaf_hash"]) for e in TREE]
    for v in INCLUSION:
        size = v["tree_size"]
        assert inclusion_proof(leaves, v["leaf_index"], size) == [
            b64(p) for p in v["inclusion_path"]
        ]
    for v in CONSISTENCY:
        assert consistency_proof(leaves, v["old_size"], v["new_size"]) == [
            b64(p) for p in v["consistency_path"]
        ]


def test_rejection_messages_name_the_problem() -> None:
    lh = leaf_hash(b"a")
    with pytest.raises(MalformedProofError, match="out of range"):
        verify_inclusion(lh, 3, 3, [], lh)
    with pytest.raises(MalformedProofError, match="negative"):
        verify_inclusion(lh, -1, 3, [], lh)
    with pytest.raises(MalformedProofError, match="32-byte"):
        verify_inclusion(lh[:5], 0, 1, [], lh)
    with pytest.raises(MalformedProofError, match=r"wrong .* length: got 1 hashes, expected 0"):
        verify_inclusion(lh, 0, 1, [lh], lh)
    with pytest.raises(VerificationError, match="does not match the root"):
        verify_inclusion(lh, 0, 1, [], leaf_hash(b"b"))
    with pytest.raises(MalformedProofError, match="larger than new size"):
        verify_consistency(2, 1, [], lh, lh)
    with pytest.raises(VerificationError, match="different roots"):
        verify_consistency(1, 1, [], lh, leaf_hash(b"b"))


# -- reference equivalence over a range of sizes -------------------------------------------------


def test_exhaustive_small_trees_against_reference() -> None:
    leaves = leaves_n(70, b"exh")
    log = MerkleLog(MemoryTileStore())
    log.append(leaves)
    for n in range(1, 71):
        root = ref_mth(leaves[:n])
        assert log.root_at(n) == root
        for m in range(n):
            proof = log.inclusion_proof(m, n)
            assert proof == ref_path(m, leaves[:n])
            verify_inclusion(leaves[m], m, n, proof, root)
        for m in range(n + 1):
            proof = log.consistency_proof(m, n)
            assert proof == ref_proof(m, leaves[:n])
            verify_consistency(m, n, proof, ref_mth(leaves[:m]), root)


def test_large_tree_crossing_tile_levels() -> None:
    # 70_000 leaves: level-0, level-1 and level-2 tiles (nodes at tree level 16 exist).
    n = 70_000
    leaves = leaves_n(n, b"big")
    store = MemoryTileStore()
    log = MerkleLog(store)
    for start in range(0, n, 9_999):  # odd chunk size: partial tiles get extended
        log.append(leaves[start : start + 9_999])
    root = root_from_leaf_hashes(leaves)
    assert log.root() == root
    assert TileId(2, 0) in store.tiles
    assert len(store.tiles[TileId(2, 0)]) == 32  # one complete level-16 node (65536 leaves)
    for m in (0, 1, 255, 256, 65_535, 65_536, 69_999):
        proof = log.inclusion_proof(m)
        verify_inclusion(leaves[m], m, n, proof, root)
        assert len(tiles_for_inclusion_proof(m, n)) <= 6
    for old in (1, 256, 65_536, 65_537, 69_999):
        old_root = root_from_leaf_hashes(leaves[:old])
        verify_consistency(old, n, log.consistency_proof(old), old_root, root)
        assert len(tiles_for_consistency_proof(old, n)) <= 6
    # Proofs for older sizes are served from the (now wider) current tiles.
    verify_inclusion(leaves[300], 300, 513, log.inclusion_proof(300, 513), ref_mth(leaves[:513]))


# -- frontier, tiles and stores -----------------------------------------------------------------


def test_frontier_serialization_round_trip_and_strictness() -> None:
    frontier = Frontier.empty().append(leaves_n(13)).frontier
    data = frontier.to_bytes()
    assert len(data) == 8 + 32 * 3  # 13 = 0b1101
    assert data[:8] == (13).to_bytes(8, "big")
    assert Frontier.from_bytes(data) == frontier
    assert Frontier.from_bytes(data).root() == ref_mth(leaves_n(13))
    for bad in (data[:-1], data + b"\x00", data[:7], (12).to_bytes(8, "big") + data[8:]):
        with pytest.raises(MalformedInputError):
            Frontier.from_bytes(bad)
    assert Frontier.from_bytes(Frontier.empty().to_bytes()).root() == EMPTY_ROOT


def test_frontier_resumes_after_reload() -> None:
    leaves = leaves_n(600, b"resume")
    store = MemoryTileStore()
    log = MerkleLog(store)
    log.append(leaves[:333])
    saved = log.frontier.to_bytes()
    resumed = MerkleLog(store, Frontier.from_bytes(saved))
    assert resumed.append(leaves[333:]) == ref_mth(leaves)
    assert Frontier.from_tiles(600, store.tiles) == resumed.frontier


def test_append_updates_are_right_edge_only() -> None:
    result = Frontier.empty().append(leaves_n(300))
    widths = {u.tile_id: (u.start, u.width) for u in result.updates}
    assert widths == {TileId(0, 0): (0, 256), TileId(0, 1): (0, 44), TileId(1, 0): (0, 1)}
    more = result.frontier.append(leaves_n(3, b"x"))
    assert {u.tile_id: (u.start, u.width) for u in more.updates} == {TileId(0, 1): (44, 47)}


def test_tile_update_refuses_gap_or_overlap() -> None:
    first = Frontier.empty().append(leaves_n(5))
    second = first.frontier.append(leaves_n(2, b"y")).updates[0]
    with pytest.raises(TileStoreError, match="expected 5"):
        second.apply(None)
    with pytest.raises(TileStoreError):
        second.apply(first.updates[0].data + b"\x00" * 32)


def test_missing_or_short_tiles_are_reported() -> None:
    store = MemoryTileStore()
    MerkleLog(store).append(leaves_n(300))
    with pytest.raises(TileStoreError, match="missing"):
        inclusion_proof_from_tiles(3, 300, {})
    short = {TileId(0, 1): store.tiles[TileId(0, 1)][:64], TileId(0, 0): store.tiles[TileId(0, 0)]}
    with pytest.raises(TileStoreError, match="needs at least"):
        consistency_proof_from_tiles(10, 300, {**store.tiles, **short})


def test_log_rejects_sizes_beyond_its_head() -> None:
    log = MerkleLog(MemoryTileStore())
    log.append(leaves_n(4))
    with pytest.raises(MalformedInputError):
        log.inclusion_proof(0, 5)
    with pytest.raises(MalformedInputError):
        log.consistency_proof(1, 5)
    assert log.leaf_hash_at(3) == leaves_n(4)[3]


def test_append_rejects_bad_leaf() -> None:
    with pytest.raises(MalformedInputError):
        Frontier.empty().append([b"short"])


# -- properties -----------------------------------------------------------------------------------

MAX_LEAVES = 300
_LEAVES = leaves_n(MAX_LEAVES, b"prop")
_PREFIX_ROOTS = [ref_mth(_LEAVES[:n]) for n in range(MAX_LEAVES + 1)]


def _chunked_log(chunks: Sequence[int]) -> MerkleLog:
    log = MerkleLog(MemoryTileStore())
    position = 0
    for size in chunks:
        log.append(_LEAVES[position : position + size])
        position += size
    log.append(_LEAVES[position:])
    return log


@given(
    chunks=st.lists(st.integers(min_value=0, max_value=80), max_size=6),
    size=st.integers(min_value=1, max_value=MAX_LEAVES),
    data=st.data(),
)
def test_property_inclusion(chunks: list[int], size: int, data: st.DataObject) -> None:
    log = _chunked_log(chunks)
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    proof = log.inclusion_proof(index, size)
    assert proof == ref_path(index, _LEAVES[:size])
    assert proof == inclusion_proof(_LEAVES, index, size)
    root = _PREFIX_ROOTS[size]
    verify_inclusion(_LEAVES[index], index, size, proof, root)
    assert rfc_verify_inclusion(_LEAVES[index], index, size, proof, root)
    if proof:
        element = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        bit = data.draw(st.integers(min_value=0, max_value=255))
        bad = [*proof]
        bad[element] = flip(bad[element], bit)
        with pytest.raises(VerificationError):
            verify_inclusion(_LEAVES[index], index, size, bad, root)
    bit = data.draw(st.integers(min_value=0, max_value=255))
    with pytest.raises(VerificationError):
        verify_inclusion(flip(_LEAVES[index], bit), index, size, proof, root)
    with pytest.raises(VerificationError):
        verify_inclusion(_LEAVES[index], index, size, proof, flip(root, bit))


@given(
    chunks=st.lists(st.integers(min_value=0, max_value=80), max_size=6),
    new=st.integers(min_value=0, max_value=MAX_LEAVES),
    data=st.data(),
)
def test_property_consistency(chunks: list[int], new: int, data: st.DataObject) -> None:
    log = _chunked_log(chunks)
    old = data.draw(st.integers(min_value=0, max_value=new))
    proof = log.consistency_proof(old, new)
    assert proof == ref_proof(old, _LEAVES[:new])
    assert proof == consistency_proof(_LEAVES, old, new)
    old_root, new_root = _PREFIX_ROOTS[old], _PREFIX_ROOTS[new]
    verify_consistency(old, new, proof, old_root, new_root)
    assert rfc_verify_consistency(old, new, proof, old_root, new_root)
    bit = data.draw(st.integers(min_value=0, max_value=255))
    if proof:
        element = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        bad = [*proof]
        bad[element] = flip(bad[element], bit)
        with pytest.raises(VerificationError):
            verify_consistency(old, new, bad, old_root, new_root)
    with pytest.raises(VerificationError):
        verify_consistency(old, new, proof, flip(old_root, bit), new_root)
    if old:
        with pytest.raises(VerificationError):
            verify_consistency(old, new, proof, old_root, flip(new_root, bit))


def test_every_index_and_size_up_to_300_via_tiles() -> None:
    """The bounded exhaustive version of the properties above (deterministic, ~45k proofs)."""
    log = _chunked_log([1, 255, 1, 7])
    for size in itertools.chain(range(1, 40), range(250, 262), (MAX_LEAVES,)):
        root = _PREFIX_ROOTS[size]
        for index in range(size):
            verify_inclusion(_LEAVES[index], index, size, log.inclusion_proof(index, size), root)
        for old in range(size + 1):
            proof = log.consistency_proof(old, size)
            verify_consistency(old, size, proof, _PREFIX_ROOTS[old], root)
