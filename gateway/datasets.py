"""The registry dataset a node answers with: recorded in its database by version.

The packaged dataset is recorded at init; ``mragw registry use`` records and activates another
validated file (audited). Every answer carries the active dataset's version.
"""

from __future__ import annotations

import functools
import time
from importlib import resources
from typing import Protocol

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit import record_action
from gateway.errors import GatewayError
from gateway.status_reads import AlchemyReads
from gateway.storage.schema import datasets, node_state
from registry.dataset import parse_dataset
from registry.resolver import Recogniser

PACKAGED = ("data", "mra-facts.json")


def packaged_bytes() -> bytes:
    return resources.files("registry").joinpath(*PACKAGED).read_bytes()


@functools.lru_cache(maxsize=8)
def recogniser_for(content: bytes) -> Recogniser:
    """Index a dataset once per process per content (the index is the expensive part)."""
    return Recogniser(parse_dataset(content, "node dataset"))


# Recognisers by dataset version (the SHA-256 of its content), so the hot paths that ask for
# the active dataset (every check, every replicated batch) read one small row, not the file.
_BY_VERSION: dict[str, Recogniser] = {}


class DatasetReads(Protocol):
    async def dataset_version(self) -> str | None: ...

    async def dataset_content(self, version: str) -> bytes: ...


async def recogniser_of(reads: DatasetReads) -> Recogniser:
    """The recogniser of the active dataset as ``reads`` sees it; ``mragw registry use`` takes
    effect at the next call, since the version is read every time."""
    version = await reads.dataset_version()
    if version is None:
        raise GatewayError("the node has no active registry dataset (mragw registry use)")
    recogniser = _BY_VERSION.get(version)
    if recogniser is None:
        recogniser = recogniser_for(await reads.dataset_content(version))
        if len(_BY_VERSION) >= 8:
            _BY_VERSION.clear()
        _BY_VERSION[version] = recogniser
    return recogniser


async def active_recogniser(conn: AsyncConnection) -> Recogniser:
    """The recogniser of the node's active dataset, read on ``conn``."""
    return await recogniser_of(AlchemyReads(conn))


async def use_dataset(conn: AsyncConnection, content: bytes, source: str, actor: str) -> str:
    """Validate ``content`` (raises DatasetError listing every problem), record and activate it."""
    dataset = parse_dataset(content, source)
    await conn.execute(update(datasets).values(active=False))
    existing = (
        await conn.execute(select(datasets.c.version).where(datasets.c.version == dataset.version))
    ).scalar()
    if existing is None:
        await conn.execute(
            datasets.insert().values(
                version=dataset.version, content=content, added_at=time.time(), active=True
            )
        )
    else:
        await conn.execute(
            update(datasets).where(datasets.c.version == dataset.version).values(active=True)
        )
    await conn.execute(
        update(node_state).where(node_state.c.key == "dataset").values(value=node_state.c.value + 1)
    )
    await record_action(conn, actor, "registry.use", {"version": dataset.version, "source": source})
    return dataset.version
