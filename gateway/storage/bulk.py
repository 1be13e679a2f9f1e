"""Many-row writes on the hot paths (publish, replication), inside the caller's transaction.

SQLAlchemy Core spends more time per row on parameter processing (``construct_params``, bind
processors, a dict per row) than SQLite spends storing the row; publishing writes five to six
rows per record, so on SQLite that overhead bounded publish (docs/performance.md, finding 4).
Here the statement is compiled by SQLAlchemy once per (dialect, table, columns, conflict rule)
and, on SQLite, run with the driver's ``executemany`` on the very connection (and so in the very
transaction) SQLAlchemy holds: one thread hop per statement, no per-row SQLAlchemy work.

Invariants:
- Same SQL, same values as SQLAlchemy would send: the statement is SQLAlchemy's own compilation
  and every column whose type has a bind processor on this dialect (Boolean, Float on SQLite)
  goes through that processor; a table or column set the plan cannot reproduce exactly (e.g. a
  Python-side column default) takes the ordinary SQLAlchemy path.
- Only inside a transaction SQLAlchemy has begun: a raw statement outside one would be committed
  or rolled back behind SQLAlchemy's back, so that case also takes the ordinary path.
- Driver errors surface as SQLAlchemy's exception classes (``IntegrityError``,
  ``OperationalError``), as they would through SQLAlchemy.
- PostgreSQL always goes through SQLAlchemy (asyncpg batches an executemany itself).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Literal

from sqlalchemy import Table, and_, or_, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import sqltypes
from sqlalchemy.types import TypeEngine

Conflict = Literal["error", "ignore", "update"]
Processor = Callable[[Any], Any]

# SQLite's default limit on host parameters per statement (SQLITE_MAX_VARIABLE_NUMBER) is
# 32766 since 3.32; stay well below it for IN lists.
_MAX_IN_PARAMS = 10_000


@dataclass(frozen=True)
class _Plan:
    sql: str
    # (position in the caller's tuple, bind processor, the one value type the processor
    # leaves as the driver would bind it anyway) for each column whose type has a processor.
    processors: tuple[tuple[int, Processor, type | None], ...]


# Values of exactly these types reach SQLite the same with or without the type's processor:
# the sqlite3 module binds a bool as the integer 0/1 (what Boolean's processor turns it into),
# a float as a float (Float's processor is float()) and bytes as a BLOB (LargeBinary's
# processor wraps them in sqlite3.Binary, a memoryview, bound as the same BLOB). Checking the
# type of each value is several times cheaper than calling the processor on it.
_UNCHANGED_BY_PROCESSOR: dict[type[TypeEngine[Any]], type] = {
    sqltypes.Boolean: bool,
    sqltypes.Float: float,
    sqltypes.LargeBinary: bytes,
}


_PlanKey = tuple[str, str, tuple[str, ...], Conflict, tuple[str, ...], tuple[str, ...]]
_plans: dict[_PlanKey, _Plan | None] = {}


def _statement(
    dialect_name: str,
    table: Table,
    conflict: Conflict,
    keys: Sequence[str],
    update: Sequence[str],
) -> Any:
    insert = postgresql.insert if dialect_name == "postgresql" else sqlite.insert
    stmt = insert(table)
    if conflict == "ignore":
        return stmt.on_conflict_do_nothing(index_elements=list(keys))
    if conflict == "update":
        return stmt.on_conflict_do_update(
            index_elements=list(keys), set_={name: stmt.excluded[name] for name in update}
        )
    return stmt


def _plan(
    dialect: Dialect,
    table: Table,
    columns: tuple[str, ...],
    *,
    conflict: Conflict,
    keys: tuple[str, ...],
    update: tuple[str, ...],
) -> _Plan | None:
    """The compiled SQL for SQLite's ``qmark`` parameters, or None if the raw path could not
    send exactly what SQLAlchemy would (cached: compiling costs more than a small insert)."""
    cache_key = (dialect.name, table.name, columns, conflict, keys, update)
    if cache_key in _plans:
        return _plans[cache_key]
    plan: _Plan | None = None
    if dialect.paramstyle == "qmark":
        compiled = _statement(dialect.name, table, conflict, keys, update).compile(
            dialect=dialect, column_keys=list(columns)
        )
        # Any extra parameter (a Python-side default) or reordering: not ours to reproduce.
        if tuple(compiled.positiontup or ()) == columns:
            processors = tuple(
                (position, processor, _UNCHANGED_BY_PROCESSOR.get(type(table.c[name].type)))
                for position, name in enumerate(columns)
                if (processor := table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
                is not None
            )
            plan = _Plan(str(compiled), processors)
    _plans[cache_key] = plan
    return plan


async def _sqlite_driver(conn: AsyncConnection) -> Any | None:
    """The aiosqlite connection under ``conn`` when the raw path may be used, else None."""
    if conn.dialect.name != "sqlite" or not conn.in_transaction():
        return None
    raw = await conn.get_raw_connection()
    return raw.driver_connection


def _wrap(error: sqlite3.Error, sql: str) -> sa_exc.DBAPIError:
    """The SQLAlchemy exception SQLAlchemy itself would raise for this driver error."""
    wrapped = sa_exc.DBAPIError.instance(sql, None, error, sqlite3.Error)
    if not isinstance(wrapped, sa_exc.DBAPIError):  # only for non-driver errors
        raise error
    return wrapped


async def _fetch_all(driver: Any, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` in one thread hop (execute and fetch in aiosqlite's worker); a driver
    error becomes the SQLAlchemy exception callers expect."""
    try:
        rows = await driver.execute_fetchall(sql, params)
    except sqlite3.Error as error:
        raise _wrap(error, sql) from error
    return [tuple(r) for r in rows]


async def insert_rows(
    conn: AsyncConnection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    *,
    conflict: Conflict = "error",
    keys: Sequence[str] = (),
    update: Sequence[str] = (),
) -> None:
    """Insert ``rows`` (tuples in ``columns`` order) into ``table`` in the caller's transaction.

    ``conflict``: "error" (a plain INSERT), "ignore" (ON CONFLICT (keys) DO NOTHING) or
    "update" (ON CONFLICT (keys) DO UPDATE SET each ``update`` column to the new value)."""
    if not rows:
        return
    cols = tuple(columns)
    driver = await _sqlite_driver(conn)
    plan = (
        _plan(conn.dialect, table, cols, conflict=conflict, keys=tuple(keys), update=tuple(update))
        if driver is not None
        else None
    )
    if driver is None or plan is None:
        stmt = _statement(conn.dialect.name, table, conflict, keys, update)
        await conn.execute(stmt, [dict(zip(cols, row, strict=True)) for row in rows])
        return
    params: Iterable[Sequence[Any]] = rows
    needed = [
        (position, processor)
        for position, processor, unchanged in plan.processors
        if unchanged is None or not _all_of_type(rows, position, unchanged)
    ]
    if needed:
        params = [_processed(row, needed) for row in rows]
    try:
        await driver.executemany(plan.sql, params)
    except sqlite3.Error as error:
        raise _wrap(error, plan.sql) from error


def _all_of_type(rows: Sequence[tuple[Any, ...]], position: int, kind: type) -> bool:
    """Whether every value at ``position`` is exactly ``kind`` or None (every processor maps
    None to None); the iteration runs in C, a generator per row cost more than the insert."""
    return set(map(type, map(itemgetter(position), rows))) <= {kind, type(None)}


def _processed(row: tuple[Any, ...], processors: list[tuple[int, Processor]]) -> list[Any]:
    out = list(row)
    for position, processor in processors:
        out[position] = processor(out[position])
    return out


async def insert_mappings(
    conn: AsyncConnection,
    table: Table,
    rows: Sequence[dict[str, Any]],
    *,
    conflict: Conflict = "error",
    keys: Sequence[str] = (),
    update: Sequence[str] = (),
) -> None:
    """:func:`insert_rows` for rows given as dicts; every row must have the first row's keys
    (as SQLAlchemy's executemany requires)."""
    if not rows:
        return
    columns = tuple(rows[0])
    if conn.dialect.name != "sqlite":
        stmt = _statement(conn.dialect.name, table, conflict, keys, update)
        await conn.execute(stmt, list(rows))
        return
    # itemgetter builds each tuple in C (a generator per row cost more than the insert).
    pick = itemgetter(*columns)
    try:
        tuples = (
            [pick(row) for row in rows]
            if len(columns) > 1
            else [(row[columns[0]],) for row in rows]
        )
    except KeyError as error:
        raise sa_exc.ArgumentError(
            f"{table.name}: every row must have the columns of the first ({error} missing)"
        ) from error
    await insert_rows(conn, table, columns, tuples, conflict=conflict, keys=keys, update=update)


async def select_in(
    conn: AsyncConnection,
    table: Table,
    columns: Sequence[str],
    in_column: str,
    values: Sequence[Any],
    *,
    where: dict[str, Any] | None = None,
) -> list[tuple[Any, ...]]:
    """``columns`` of the rows of ``table`` whose ``in_column`` is one of ``values`` (and that
    match the ``where`` equalities), in few statements. SQLAlchemy compiles a long IN list
    parameter by parameter (a chunk's 2,000 digests cost more to compile than to look up), so
    on SQLite the statement is written here; values come back as the driver returns them
    (a Boolean as 0 or 1)."""
    if not values:
        return []
    conditions = dict(where or {})
    driver = await _sqlite_driver(conn)
    out: list[tuple[Any, ...]] = []
    if driver is None:
        query = select(*(table.c[c] for c in columns)).where(
            *(table.c[k] == v for k, v in conditions.items())
        )
        for start in range(0, len(values), _MAX_IN_PARAMS):
            part = list(values[start : start + _MAX_IN_PARAMS])
            rows = await conn.execute(query.where(table.c[in_column].in_(part)))
            out.extend(tuple(r) for r in rows)
        return out
    names = ", ".join(f'"{table.c[c].name}"' for c in columns)
    filters = "".join(f' AND "{table.c[k].name}" = ?' for k in conditions)
    for start in range(0, len(values), _MAX_IN_PARAMS):
        part = list(values[start : start + _MAX_IN_PARAMS])
        # Names come from the schema (table.c lookups above), every value is a bound parameter.
        sql = (
            f'SELECT {names} FROM "{table.name}" '  # noqa: S608
            f'WHERE "{table.c[in_column].name}" IN ({",".join("?" * len(part))}){filters}'
        )
        out.extend(await _fetch_all(driver, sql, [*part, *conditions.values()]))
    return out


async def select_by_groups(
    conn: AsyncConnection,
    table: Table,
    columns: Sequence[str],
    *,
    group_columns: Sequence[str],
    in_column: str,
    groups: dict[tuple[Any, ...], Sequence[Any]],
) -> list[tuple[Any, ...]]:
    """``columns`` of the rows whose ``group_columns`` equal a key of ``groups`` and whose
    ``in_column`` is one of that key's values: ``WHERE (g = ? AND ... AND c IN (...)) OR ...``,
    which both databases answer with one index seek per value when ``group_columns`` and
    ``in_column`` lead an index (SQLite's multi-index OR), where ``c IN (...)`` alone on a
    later column of the key would scan the whole table."""
    out: list[tuple[Any, ...]] = []
    arms = [(key, list(values[k : k + _MAX_IN_PARAMS])) for key, values in groups.items()
            for k in range(0, len(values), _MAX_IN_PARAMS) if values]  # fmt: skip
    if not arms:
        return out
    driver = await _sqlite_driver(conn)
    batches: list[list[tuple[tuple[Any, ...], list[Any]]]] = [[]]
    size = 0
    for arm in arms:
        cost = len(group_columns) + len(arm[1])
        if batches[-1] and size + cost > _MAX_IN_PARAMS:
            batches.append([])
            size = 0
        batches[-1].append(arm)
        size += cost
    if driver is None:
        selected = select(*(table.c[c] for c in columns))
        for batch in batches:
            condition = or_(
                *(
                    and_(
                        *(table.c[g] == v for g, v in zip(group_columns, key, strict=True)),
                        table.c[in_column].in_(values),
                    )
                    for key, values in batch
                )
            )
            out.extend(tuple(r) for r in await conn.execute(selected.where(condition)))
        return out
    names = ", ".join(f'"{table.c[c].name}"' for c in columns)
    equal = " AND ".join(f'"{table.c[g].name}" = ?' for g in group_columns)
    member = f'"{table.c[in_column].name}"'
    for batch in batches:
        # Names come from the schema (table.c lookups above), every value is a bound parameter.
        where = " OR ".join(
            f"({equal} AND {member} IN ({','.join('?' * len(values))}))" for _, values in batch
        )
        sql = f'SELECT {names} FROM "{table.name}" WHERE {where}'  # noqa: S608
        params = [p for key, values in batch for p in (*key, *values)]
        out.extend(await _fetch_all(driver, sql, params))
    return out


async def existing_values(
    conn: AsyncConnection,
    table: Table,
    column: str,
    where: dict[str, Any],
    values: Sequence[Any],
) -> set[Any]:
    """The ``values`` present in ``table.column`` among rows matching ``where`` (equalities),
    e.g. which content digests a log holds already."""
    return {r[0] for r in await select_in(conn, table, (column,), column, values, where=where)}


__all__ = [
    "Conflict",
    "existing_values",
    "insert_mappings",
    "insert_rows",
    "select_by_groups",
    "select_in",
]
