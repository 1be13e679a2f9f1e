"""RFC 6962 / RFC 9162 Merkle tree hashing and proofs over compactly persisted node hashes.

Hashing: leaf hash = SHA-256(0x00 || data), node hash = SHA-256(0x01 || left || right), the root
of the empty tree is SHA-256(""). All hashes are raw 32-byte ``bytes``; proofs are ``list[bytes]``
in RFC 9162 order (deepest sibling first).

Storage model (after C2SP tlog-tiles), so the gateway can persist the tree inside its own
database transaction while hashing stays pure and I/O stays with the caller:

* A node is ``(level, index)``: level 0 are leaves, node ``(h, i)`` covers leaves
  ``[i * 2**h, (i + 1) * 2**h)``. Only *complete* subtrees are ever persisted, and only at tree
  levels that are multiples of 8.
* Those hashes are grouped in *tiles* of up to 256 hashes: tile ``(L, N)`` holds the hashes of
  nodes ``(8L, 256N) .. (8L, 256N + 255)``, concatenated (32 bytes each). A tile may be partial
  (fewer than 256 hashes, its width). Because the log is append-only, a wider version of a tile
  always starts with the bytes of every narrower version, so a current tile serves proofs for
  any older tree size.
* Any complete node ``(h, i)`` is recomputed from one tile: its 2**(h mod 8) descendants at level
  ``8 * (h // 8)``. Any other range hash a proof needs (the ragged right edge) is the RFC 6962 fold
  of complete nodes. Hence a proof reads O(log n) tiles: at each tile level, at most the tile on
  the leaf's path and the tile on the right edge.
* A :class:`Frontier` (the compact range ``[0, size)``: one complete-subtree hash per set bit of
  ``size``, O(log n) hashes) is all the state appending needs. ``Frontier.append`` returns the
  new frontier, the new root and the :class:`TileUpdate` s (hashes to add to the right-edge
  tiles, at most a few per tile level plus the full tiles in between) the caller persists.

Invariants: functions here never perform I/O except through a :class:`TileStore` handed to
:class:`MerkleLog`; every verification rejection raises :class:`~crypto.errors.VerificationError`
(malformed shapes: its subclass :class:`~crypto.errors.MalformedProofError`) naming what failed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from crypto.errors import (
    MalformedInputError,
    MalformedProofError,
    TileStoreError,
    VerificationError,
)

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "AppendResult",
    "Frontier",
    "MemoryTileStore",
    "MerkleLog",
    "TileId",
    "TileStore",
    "TileUpdate",
    "consistency_proof",
    "consistency_proof_from_tiles",
    "inclusion_proof",
    "inclusion_proof_from_tiles",
    "leaf_hash",
    "node_hash",
    "root_from_leaf_hashes",
    "root_from_tiles",
    "tiles_for_consistency_proof",
    "tiles_for_inclusion_proof",
    "tiles_for_root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
EMPTY_ROOT = hashlib.sha256(b"").digest()
# Tree sizes are serialized as unsigned 64-bit integers (as in every CT/tlog implementation).
MAX_TREE_SIZE = (1 << 64) - 1

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || data)."""
    return _sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: SHA-256(0x01 || left || right)."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def _check_hash(value: object, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        got = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
        raise MalformedProofError(f"{what} must be a {HASH_SIZE}-byte hash, got {got}")
    return value


def _check_size(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedProofError(f"{what} must be an int, got {type(value).__name__}")
    if value < 0:
        raise MalformedProofError(f"{what} must not be negative, got {value}")
    if value > MAX_TREE_SIZE:
        raise MalformedProofError(f"{what} {value} exceeds the 64-bit tree size limit")
    return value


def root_from_leaf_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """Root of the tree over ``leaf_hashes`` (all in memory; O(n) hashes).

    Pairs nodes level by level and promotes an odd last node unchanged, which yields exactly
    the RFC 6962 MTH (the left subtree is always the largest power of two).
    """
    level = [_check_hash(h, f"leaf hash {i}") for i, h in enumerate(leaf_hashes)]
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


# -- proof shapes (pure index arithmetic) ------------------------------------------------------


def _split(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose hashes form RFC 9162 PATH(index, D[0:size]), deepest first."""
    ranges: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
    ranges.reverse()
    return ranges


def _consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose hashes form RFC 9162 PROOF(old_size, D[0:new_size]), deepest first."""
    if old_size in (0, new_size):
        return []
    ranges: list[tuple[int, int]] = []
    lo, hi, m, complete_old = 0, new_size, old_size, True
    while True:
        n = hi - lo
        if m == n:
            # SUBPROOF(m, D[m], b): the old subtree itself, unless the verifier already has it.
            if not complete_old:
                ranges.append((lo, hi))
            break
        k = _split(n)
        if m <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
            m -= k
            complete_old = False
    ranges.reverse()
    return ranges


def _range_nodes(start: int, end: int) -> list[tuple[int, int]]:
    """Decompose ``[start, end)`` into maximal complete subtrees ``(level, index)``, left first.

    Proof ranges always start at a multiple of a power of two at least their length, so this
    is the binary expansion of ``end - start`` from the largest part down.
    """
    nodes: list[tuple[int, int]] = []
    while start < end:
        level = (end - start).bit_length() - 1
        if start:
            level = min(level, (start & -start).bit_length() - 1)
        nodes.append((level, start >> level))
        start += 1 << level
    return nodes


def _range_hash(start: int, end: int, node: Callable[[int, int], bytes]) -> bytes:
    """RFC 6962 MTH of leaves ``[start, end)`` from complete-subtree hashes."""
    parts = _range_nodes(start, end)
    acc = node(*parts[-1])
    for level, index in reversed(parts[:-1]):
        acc = node_hash(node(level, index), acc)
    return acc


# -- tiles -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class TileId:
    """Tile coordinates: ``level`` L holds tree level 8L, ``index`` N holds nodes 256N.."""

    level: int
    index: int


def _tile_slot(level: int, index: int) -> tuple[TileId, int, int]:
    """Where node ``(level, index)``'s stored descendants live: tile, first slot, slot count."""
    tile_level, sub = divmod(level, TILE_HEIGHT)
    first = index << sub
    return TileId(tile_level, first >> TILE_HEIGHT), first & (TILE_WIDTH - 1), 1 << sub


def _tile_ids(ranges: Iterable[tuple[int, int]]) -> list[TileId]:
    seen: dict[TileId, None] = {}
    for start, end in ranges:
        for level, index in _range_nodes(start, end):
            seen.setdefault(_tile_slot(level, index)[0], None)
    return list(seen)


def _tile_node_source(tiles: Mapping[TileId, bytes]) -> Callable[[int, int], bytes]:
    def node(level: int, index: int) -> bytes:
        tile_id, slot, count = _tile_slot(level, index)
        data = tiles.get(tile_id)
        need = (slot + count) * HASH_SIZE
        if data is None:
            raise TileStoreError(f"tile {tile_id.level}/{tile_id.index} is missing")
        if len(data) < need or len(data) % HASH_SIZE:
            raise TileStoreError(
                f"tile {tile_id.level}/{tile_id.index} has {len(data)} bytes, "
                f"node {level}/{index} needs at least {need}"
            )
        if count == 1:
            return data[slot * HASH_SIZE : need]
        # Recompute the intermediate levels inside the tile (never stored). The first level
        # hashes adjacent pairs straight out of the tile bytes (no per-hash slicing).
        step = 2 * HASH_SIZE
        hashes = [
            _sha256(_NODE_PREFIX + data[o : o + step]).digest()
            for o in range(slot * HASH_SIZE, need, step)
        ]
        while len(hashes) > 1:
            hashes = [
                _sha256(_NODE_PREFIX + hashes[i] + hashes[i + 1]).digest()
                for i in range(0, len(hashes), 2)
            ]
        return hashes[0]

    return node


def _leaf_node_source(leaf_hashes: Sequence[bytes]) -> Callable[[int, int], bytes]:
    def node(level: int, index: int) -> bytes:
        return root_from_leaf_hashes(leaf_hashes[index << level : (index + 1) << level])

    return node


def _check_inclusion_args(index: int, size: int) -> None:
    _check_size(index, "leaf index")
    _check_size(size, "tree size")
    if index >= size:
        raise MalformedProofError(f"leaf index {index} is out of range for tree size {size}")


def _check_consistency_args(old_size: int, new_size: int) -> None:
    _check_size(old_size, "old tree size")
    _check_size(new_size, "new tree size")
    if old_size > new_size:
        raise MalformedProofError(f"old tree size {old_size} is larger than new size {new_size}")


def tiles_for_inclusion_proof(index: int, tree_size: int) -> list[TileId]:
    """Tiles (of tree ``tree_size`` or any larger one) that an inclusion proof reads."""
    _check_inclusion_args(index, tree_size)
    return _tile_ids(_inclusion_ranges(index, tree_size))


def tiles_for_consistency_proof(old_size: int, new_size: int) -> list[TileId]:
    """Tiles that a consistency proof from ``old_size`` to ``new_size`` reads."""
    _check_consistency_args(old_size, new_size)
    return _tile_ids(_consistency_ranges(old_size, new_size))


def tiles_for_root(tree_size: int) -> list[TileId]:
    """Tiles needed to recompute the root (or frontier) of the tree at ``tree_size``."""
    _check_size(tree_size, "tree size")
    return _tile_ids([(0, tree_size)] if tree_size else [])


def inclusion_proof_from_tiles(
    index: int, tree_size: int, tiles: Mapping[TileId, bytes]
) -> list[bytes]:
    """Build the inclusion proof for leaf ``index`` in tree ``tree_size`` from fetched tiles."""
    _check_inclusion_args(index, tree_size)
    node = _tile_node_source(tiles)
    return [_range_hash(a, b, node) for a, b in _inclusion_ranges(index, tree_size)]


def consistency_proof_from_tiles(
    old_size: int, new_size: int, tiles: Mapping[TileId, bytes]
) -> list[bytes]:
    """Build the consistency proof from ``old_size`` to ``new_size`` from fetched tiles."""
    _check_consistency_args(old_size, new_size)
    node = _tile_node_source(tiles)
    return [_range_hash(a, b, node) for a, b in _consistency_ranges(old_size, new_size)]


def root_from_tiles(tree_size: int, tiles: Mapping[TileId, bytes]) -> bytes:
    """Root of the tree at ``tree_size`` from fetched tiles (see :func:`tiles_for_root`)."""
    _check_size(tree_size, "tree size")
    if tree_size == 0:
        return EMPTY_ROOT
    return _range_hash(0, tree_size, _tile_node_source(tiles))


def inclusion_proof(
    leaf_hashes: Sequence[bytes], index: int, tree_size: int | None = None
) -> list[bytes]:
    """Inclusion proof from an in-memory list of leaf hashes (tree size defaults to all)."""
    size = len(leaf_hashes) if tree_size is None else tree_size
    _check_inclusion_args(index, size)
    if size > len(leaf_hashes):
        raise MalformedInputError(f"tree size {size} exceeds the {len(leaf_hashes)} leaves given")
    node = _leaf_node_source(leaf_hashes)
    return [_range_hash(a, b, node) for a, b in _inclusion_ranges(index, size)]


def consistency_proof(
    leaf_hashes: Sequence[bytes], old_size: int, new_size: int | None = None
) -> list[bytes]:
    """Consistency proof from an in-memory list of leaf hashes (new size defaults to all)."""
    size = len(leaf_hashes) if new_size is None else new_size
    _check_consistency_args(old_size, size)
    if size > len(leaf_hashes):
        raise MalformedInputError(f"tree size {size} exceeds the {len(leaf_hashes)} leaves given")
    node = _leaf_node_source(leaf_hashes)
    return [_range_hash(a, b, node) for a, b in _consistency_ranges(old_size, size)]


# -- verification ------------------------------------------------------------------------------


def _inclusion_shape(index: int, size: int) -> tuple[int, int]:
    """(inner, border): proof elements below the split from the right edge, and along it."""
    inner = (index ^ (size - 1)).bit_length()
    border = (index >> inner).bit_count()
    return inner, border


def _check_proof(proof: Sequence[bytes], expected: int, what: str) -> list[bytes]:
    if isinstance(proof, bytes | str) or not isinstance(proof, Sequence):
        raise MalformedProofError(f"{what} must be a sequence of hashes")
    if len(proof) != expected:
        raise MalformedProofError(
            f"wrong {what} length: got {len(proof)} hashes, expected {expected}"
        )
    return [_check_hash(h, f"{what} element {i}") for i, h in enumerate(proof)]


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Return if ``proof`` shows ``leaf_hash`` at ``index`` in the tree with ``root``."""
    _check_hash(leaf_hash, "leaf hash")
    _check_hash(root, "root hash")
    _check_inclusion_args(index, tree_size)
    inner, border = _inclusion_shape(index, tree_size)
    path = _check_proof(proof, inner + border, f"inclusion proof for {index} in {tree_size}")
    acc = leaf_hash
    for level, sibling in enumerate(path[:inner]):
        acc = node_hash(sibling, acc) if (index >> level) & 1 else node_hash(acc, sibling)
    for sibling in path[inner:]:
        acc = node_hash(sibling, acc)
    if acc != root:
        raise VerificationError(
            f"inclusion proof for leaf {index} in tree size {tree_size} does not match the root"
        )


def verify_consistency(
    old_size: int,
    new_size: int,
    proof: Sequence[bytes],
    old_root: bytes,
    new_root: bytes,
) -> None:
    """Return if ``proof`` shows the tree ``old_root`` (``old_size``) is a prefix of ``new_root``.

    Following the RFC 6962 test vectors, ``old_size == 0`` is accepted with an empty proof (an
    empty tree is a prefix of every tree), provided ``old_root`` is the empty-tree root; such a
    proof says nothing about ``new_root``.
    """
    _check_hash(old_root, "old root hash")
    _check_hash(new_root, "new root hash")
    _check_consistency_args(old_size, new_size)
    what = f"consistency proof from {old_size} to {new_size}"
    if old_size == new_size:
        _check_proof(proof, 0, what)
        if old_root != new_root:
            raise VerificationError(f"trees of equal size {old_size} have different roots")
        return
    if old_size == 0:
        _check_proof(proof, 0, what)
        if old_root != EMPTY_ROOT:
            raise VerificationError("old root of the empty tree is not SHA-256 of the empty string")
        return
    # The old tree's last leaf (old_size - 1) lies on a path from a complete subtree of size
    # 2**shift; the proof is that subtree's hash (omitted if it is the whole old tree) followed
    # by the top of an inclusion proof of leaf old_size - 1 in the new tree.
    shift = (old_size & -old_size).bit_length() - 1
    inner, border = _inclusion_shape(old_size - 1, new_size)
    inner -= shift
    seed_given = old_size != 1 << shift
    path = _check_proof(proof, int(seed_given) + inner + border, what)
    if seed_given:
        seed, path = path[0], path[1:]
    else:
        seed = old_root
    mask = (old_size - 1) >> shift
    old_acc = new_acc = seed
    for level, sibling in enumerate(path[:inner]):
        if (mask >> level) & 1:
            old_acc = node_hash(sibling, old_acc)
            new_acc = node_hash(sibling, new_acc)
        else:
            new_acc = node_hash(new_acc, sibling)
    for sibling in path[inner:]:
        old_acc = node_hash(sibling, old_acc)
        new_acc = node_hash(sibling, new_acc)
    if old_acc != old_root:
        raise VerificationError(f"{what} does not match the old root")
    if new_acc != new_root:
        raise VerificationError(f"{what} does not match the new root")


# -- appending ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TileUpdate:
    """Hashes to add to tile ``tile_id`` starting at slot ``start`` (its current width)."""

    tile_id: TileId
    start: int
    data: bytes

    @property
    def width(self) -> int:
        """Width of the tile after the update."""
        return self.start + len(self.data) // HASH_SIZE

    def apply(self, existing: bytes | None) -> bytes:
        """The new tile bytes, given the stored ones (``None`` when the tile is new)."""
        current = existing or b""
        if len(current) != self.start * HASH_SIZE:
            raise TileStoreError(
                f"tile {self.tile_id.level}/{self.tile_id.index} holds "
                f"{len(current) // HASH_SIZE} hashes, expected {self.start} before appending"
            )
        return current + self.data


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Outcome of :meth:`Frontier.append`: persist ``updates``, then keep ``frontier``."""

    frontier: Frontier
    root: bytes
    updates: tuple[TileUpdate, ...]


@dataclass(frozen=True, slots=True)
class Frontier:
    """Right edge of a tree: the hashes of the complete subtrees covering ``[0, size)``.

    ``hashes[0]`` is the largest (leftmost) subtree; there is one hash per set bit of ``size``.
    """

    size: int
    hashes: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _check_size(self.size, "frontier size")
        if len(self.hashes) != self.size.bit_count():
            raise MalformedInputError(
                f"frontier of size {self.size} needs {self.size.bit_count()} hashes, "
                f"got {len(self.hashes)}"
            )
        for i, h in enumerate(self.hashes):
            _check_hash(h, f"frontier hash {i}")

    @classmethod
    def empty(cls) -> Frontier:
        return cls(0, ())

    def root(self) -> bytes:
        """Tree root: fold the subtree hashes from the right (smallest) end."""
        if not self.hashes:
            return EMPTY_ROOT
        acc = self.hashes[-1]
        for h in reversed(self.hashes[:-1]):
            acc = node_hash(h, acc)
        return acc

    def to_bytes(self) -> bytes:
        """Compact form: 8-byte big-endian size, then the hashes (32 * popcount(size) bytes)."""
        return self.size.to_bytes(8, "big") + b"".join(self.hashes)

    @classmethod
    def from_bytes(cls, data: bytes) -> Frontier:
        """Parse :meth:`to_bytes` output strictly."""
        if len(data) < 8:
            raise MalformedInputError(f"serialized frontier too short: {len(data)} bytes")
        size = int.from_bytes(data[:8], "big")
        expected = 8 + HASH_SIZE * size.bit_count()
        if len(data) != expected:
            raise MalformedInputError(
                f"serialized frontier of size {size} must be {expected} bytes, got {len(data)}"
            )
        body = data[8:]
        return cls(size, tuple(body[o : o + HASH_SIZE] for o in range(0, len(body), HASH_SIZE)))

    @classmethod
    def from_tiles(cls, tree_size: int, tiles: Mapping[TileId, bytes]) -> Frontier:
        """Rebuild the frontier at ``tree_size`` from stored tiles (see :func:`tiles_for_root`)."""
        _check_size(tree_size, "tree size")
        node = _tile_node_source(tiles)
        return cls(tree_size, tuple(node(lv, ix) for lv, ix in _range_nodes(0, tree_size)))

    def append(self, leaf_hashes: Iterable[bytes]) -> AppendResult:
        """Append leaves; return the new frontier, root and the tile hashes to persist.

        Works like a binary counter: a new leaf merges with equal-sized subtrees on the right
        edge. Every complete node created at a level that is a multiple of 8 lands in a tile.
        """
        stack = list(self.hashes)
        size = self.size
        # (tile level, tile index) -> [first slot, accumulated hashes]
        pending: dict[tuple[int, int], tuple[int, bytearray]] = {}
        sha = _sha256
        for position, leaf in enumerate(leaf_hashes):
            if not isinstance(leaf, bytes) or len(leaf) != HASH_SIZE:
                raise MalformedInputError(f"appended leaf {position} is not a 32-byte hash")
            if size >= MAX_TREE_SIZE:
                raise MalformedInputError("tree size would exceed the 64-bit limit")
            acc = leaf
            level = 0
            index = size
            while True:
                if not level & (TILE_HEIGHT - 1):
                    key = (level >> 3, index >> TILE_HEIGHT)
                    slot = pending.get(key)
                    if slot is None:
                        pending[key] = (index & (TILE_WIDTH - 1), bytearray(acc))
                    else:
                        slot[1].extend(acc)
                if not (size >> level) & 1:
                    break
                acc = sha(_NODE_PREFIX + stack.pop() + acc).digest()
                level += 1
                index >>= 1
            stack.append(acc)
            size += 1
        frontier = Frontier(size, tuple(stack))
        updates = tuple(
            TileUpdate(TileId(level, index), start, bytes(data))
            for (level, index), (start, data) in pending.items()
        )
        return AppendResult(frontier=frontier, root=frontier.root(), updates=updates)

    def __repr__(self) -> str:
        return f"Frontier(size={self.size}, root={self.root().hex()})"


# -- storage -----------------------------------------------------------------------------------


class TileStore(Protocol):
    """Synchronous tile storage keyed by :class:`TileId`; values are concatenated hashes.

    ``put_tiles`` replaces whole tiles (a wider version of a partial tile supersedes it).
    Implementations decide transactions; :class:`MerkleLog` calls ``put_tiles`` once per append.
    """

    def get_tiles(self, ids: Collection[TileId]) -> Mapping[TileId, bytes]:
        """Return the stored tiles among ``ids``; absent ones are simply left out."""
        ...

    def put_tiles(self, tiles: Mapping[TileId, bytes]) -> None:
        """Store (insert or replace) every tile in ``tiles``."""
        ...


class MemoryTileStore:
    """A dict-backed :class:`TileStore` for tests and tools."""

    def __init__(self) -> None:
        self.tiles: dict[TileId, bytes] = {}

    def get_tiles(self, ids: Collection[TileId]) -> Mapping[TileId, bytes]:
        return {tile_id: self.tiles[tile_id] for tile_id in ids if tile_id in self.tiles}

    def put_tiles(self, tiles: Mapping[TileId, bytes]) -> None:
        self.tiles.update(tiles)


class MerkleLog:
    """An append-only tree over a :class:`TileStore`, keeping only the frontier in memory.

    The caller persists :attr:`frontier` (``frontier.to_bytes()``) alongside the tiles to resume.
    Not thread-safe; the gateway serializes appends through its database lock.
    """

    def __init__(self, store: TileStore, frontier: Frontier | None = None) -> None:
        self._store = store
        self._frontier = frontier if frontier is not None else Frontier.empty()

    @property
    def frontier(self) -> Frontier:
        return self._frontier

    @property
    def size(self) -> int:
        return self._frontier.size

    def root(self) -> bytes:
        return self._frontier.root()

    def append(self, leaf_hashes: Iterable[bytes]) -> bytes:
        """Append leaf hashes, persist the touched tiles in one ``put_tiles``; return the root."""
        result = self._frontier.append(leaf_hashes)
        extended = [u.tile_id for u in result.updates if u.start]
        existing = self._store.get_tiles(extended) if extended else {}
        self._store.put_tiles({u.tile_id: u.apply(existing.get(u.tile_id)) for u in result.updates})
        self._frontier = result.frontier
        return result.root

    def _check_size(self, tree_size: int) -> None:
        if tree_size > self.size:
            raise MalformedInputError(f"tree size {tree_size} exceeds the log size {self.size}")

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> list[bytes]:
        size = self.size if tree_size is None else tree_size
        self._check_size(size)
        tiles = self._store.get_tiles(tiles_for_inclusion_proof(index, size))
        return inclusion_proof_from_tiles(index, size, tiles)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        size = self.size if new_size is None else new_size
        self._check_size(size)
        tiles = self._store.get_tiles(tiles_for_consistency_proof(old_size, size))
        return consistency_proof_from_tiles(old_size, size, tiles)

    def root_at(self, tree_size: int) -> bytes:
        self._check_size(tree_size)
        return root_from_tiles(tree_size, self._store.get_tiles(tiles_for_root(tree_size)))

    def leaf_hash_at(self, index: int) -> bytes:
        """The stored hash of leaf ``index`` (from its level-0 tile)."""
        _check_inclusion_args(index, self.size)
        tiles = self._store.get_tiles([TileId(0, index >> TILE_HEIGHT)])
        return _tile_node_source(tiles)(0, index)
