"""gateway.storage.bulk: many-row writes through the driver's executemany on SQLite (SQLAlchemy
on PostgreSQL) store what SQLAlchemy would, in the caller's transaction, with SQLAlchemy's
exceptions. SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.storage import bulk
from gateway.storage.schema import disclosure_state, entries
from gateway.storage.tiles import create_empty_log
from gateway.storage.upsert import insert_ignore, upsert

ENTRY_COLUMNS = (
    "log",
    "idx",
    "leaf_hash",
    "envelope",
    "payload_type",
    "sig_state",
    "signer",
    "content_digest",
    "appended_at",
)


def entry_row(idx: int, *, sig_state: str = "valid") -> tuple[Any, ...]:
    return (
        "EU",
        idx,
        bytes([idx % 256]) * 32,
        b"envelope-%d" % idx,
        "type",
        sig_state,
        "key",
        idx.to_bytes(32, "big"),
        1700000000.25 + idx,
    )


async def stored_entries(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(*(entries.c[c] for c in ENTRY_COLUMNS)).order_by(entries.c.idx)
        )
        return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in rows]


async def with_log(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await create_empty_log(conn, "EU", own=True)


async def test_insert_rows_stores_exactly_the_values_given(engine: AsyncEngine) -> None:
    await with_log(engine)
    rows = [entry_row(k) for k in range(300)]
    async with engine.begin() as conn:
        await bulk.insert_rows(conn, entries, ENTRY_COLUMNS, rows)
    assert await stored_entries(engine) == rows


async def test_a_duplicate_key_raises_sqlalchemys_integrity_error(engine: AsyncEngine) -> None:
    await with_log(engine)
    async with engine.begin() as conn:
        await bulk.insert_rows(conn, entries, ENTRY_COLUMNS, [entry_row(1)])
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await bulk.insert_rows(conn, entries, ENTRY_COLUMNS, [entry_row(2), entry_row(1)])
    # The failed transaction left nothing behind, not even the row before the duplicate.
    assert await stored_entries(engine) == [entry_row(1)]


async def test_rows_are_part_of_the_callers_transaction(engine: AsyncEngine) -> None:
    await with_log(engine)

    class AbortError(Exception):
        pass

    async def insert_then_fail() -> None:
        async with engine.begin() as conn:
            await bulk.insert_rows(conn, entries, ENTRY_COLUMNS, [entry_row(1), entry_row(2)])
            raise AbortError

    with pytest.raises(AbortError):
        await insert_then_fail()
    assert await stored_entries(engine) == []


async def test_outside_a_begun_transaction_rows_still_commit_with_the_connection(
    engine: AsyncEngine,
) -> None:
    await with_log(engine)
    async with engine.connect() as conn:
        # Nothing has begun a transaction on this connection yet: the rows must still belong
        # to the transaction SQLAlchemy commits (not to one only the driver knows about).
        await bulk.insert_rows(conn, entries, ENTRY_COLUMNS, [entry_row(5)])
        await conn.commit()
    assert await stored_entries(engine) == [entry_row(5)]


async def test_conflicts_are_ignored_or_update_the_named_columns(engine: AsyncEngine) -> None:
    keys = ("partner", "issuer", "authorisation", "aeo_type")
    first = [
        {"partner": "JP", "issuer": "DE", "authorisation": f"A{k}", "aeo_type": "AEOF",
         "open": True, "last_idx": k}
        for k in range(5)
    ]  # fmt: skip
    async with engine.begin() as conn:
        await upsert(conn, disclosure_state, first, keys=keys, update=("open", "last_idx"))
    changed = [{**row, "open": False, "last_idx": 100 + k} for k, row in enumerate(first[:2])]
    async with engine.begin() as conn:
        await insert_ignore(conn, disclosure_state, changed, keys=keys)
    assert await states(engine) == [(f"A{k}", True, k) for k in range(5)]
    async with engine.begin() as conn:
        await upsert(conn, disclosure_state, changed, keys=keys, update=("open", "last_idx"))
    assert await states(engine) == [
        ("A0", False, 100),
        ("A1", False, 101),
        *((f"A{k}", True, k) for k in range(2, 5)),
    ]


async def states(engine: AsyncEngine) -> list[tuple[str, bool, int]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(
                disclosure_state.c.authorisation,
                disclosure_state.c.open,
                disclosure_state.c.last_idx,
            ).order_by(disclosure_state.c.authorisation)
        )
        # Read back through SQLAlchemy: a Boolean must come back as a bool either way.
        out = [(str(a), o, int(i)) for a, o, i in rows]
    assert all(isinstance(o, bool) for _, o, _ in out)
    return out


async def test_select_in_finds_the_rows_among_many_values(engine: AsyncEngine) -> None:
    await with_log(engine)
    async with engine.begin() as conn:
        await bulk.insert_rows(
            conn, entries, ENTRY_COLUMNS, [entry_row(k, sig_state="valid") for k in range(0, 60, 3)]
        )
    # More values than one statement takes, most of them absent.
    wanted = [k.to_bytes(32, "big") for k in range(12_050)]
    async with engine.begin() as conn:
        found = await bulk.existing_values(conn, entries, "content_digest", {"log": "EU"}, wanted)
        other_log = await bulk.existing_values(
            conn, entries, "content_digest", {"log": "JP"}, wanted
        )
        rows = await bulk.select_in(
            conn, entries, ("idx", "sig_state"), "idx", [0, 1, 3, 6], where={"log": "EU"}
        )
    assert {bytes(v) for v in found} == {k.to_bytes(32, "big") for k in range(0, 60, 3)}
    assert other_log == set()
    assert sorted((int(i), s) for i, s in rows) == [(0, "valid"), (3, "valid"), (6, "valid")]


async def test_select_by_groups_matches_each_group_on_its_own_values(engine: AsyncEngine) -> None:
    keys = ("partner", "issuer", "authorisation", "aeo_type")
    rows = [
        {"partner": p, "issuer": i, "authorisation": f"{i}{n}", "aeo_type": "AEOF",
         "open": n % 2 == 0, "last_idx": n}
        for p in ("JP", "US") for i in ("DE", "FR") for n in range(40)
    ]  # fmt: skip
    async with engine.begin() as conn:
        await upsert(conn, disclosure_state, rows, keys=keys, update=("open", "last_idx"))
    # FR's numbers asked under DE find nothing; a group larger than one statement takes is
    # split; absent partners and values are simply not found.
    groups: dict[tuple[Any, ...], Any] = {
        ("JP", "DE"): [f"DE{n}" for n in range(0, 40, 2)] + [f"FR{n}" for n in range(40)],
        ("US", "FR"): [f"FR{n}" for n in range(12_000)],
        ("KR", "DE"): ["DE1"],
    }
    async with engine.begin() as conn:
        found = await bulk.select_by_groups(
            conn,
            disclosure_state,
            ("partner", "issuer", "authorisation", "open"),
            group_columns=("partner", "issuer"),
            in_column="authorisation",
            groups=groups,
        )
    expected = [("JP", "DE", f"DE{n}", True) for n in range(0, 40, 2)]
    expected += [("US", "FR", f"FR{n}", n % 2 == 0) for n in range(40)]
    assert sorted((p, i, a, bool(o)) for p, i, a, o in found) == sorted(expected)
