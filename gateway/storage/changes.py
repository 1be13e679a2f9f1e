"""Has the database changed? A cheap question for the gateway's polling loops.

The serving process watches its database for work done by others (the CLI publishing or
adding a partner, another process's commits): the log head for live tails, the partner table,
the disclosure counters. Asking through SQLAlchemy costs about a millisecond of CPU each time,
so an idle gateway polling a few times a second burnt 2-3% of a core (docs/performance.md).
On SQLite, ``PRAGMA data_version`` on a private connection answers "did any other connection
or process commit since I last asked?" in microseconds, without reading a table; the loops ask
it first and query only when it moved. PostgreSQL has no such counter, so there the probe
always says "maybe" and the loops poll as before.

Replicas of one administration sharing a database (gateway.cluster) rely on exactly this:
"changed" covers every other connection, so what another replica commits (a publish, a
replicated batch, a partner change) reaches this one's loops within their poll interval, on
SQLite through the probe and on PostgreSQL because the loops always look.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.status_reads import sqlite_file


class ChangeProbe:
    """``changed()`` is False only when certainly nothing was committed since its last True.

    Each probe owns its connection (``data_version`` is per connection and only counts other
    connections' commits, and this one never writes). Use a probe from one thread."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._path = sqlite_file(engine)
        self._db: sqlite3.Connection | None = None
        self._seen: int | None = None

    def changed(self) -> bool:
        if self._path is None:
            return True
        try:
            if self._db is None:
                # mode=rw: a missing file is an error here, not a new empty database.
                uri = f"{Path(self._path).resolve().as_uri()}?mode=rw"
                self._db = sqlite3.connect(uri, uri=True, isolation_level=None)
                self._db.execute("PRAGMA query_only=1")
            (version,) = self._db.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error:
            # Cannot tell (file gone, locked, ...): say "maybe", and the caller's real query
            # reports the problem the way it always did.
            self.close()
            return True
        if version == self._seen:
            return False
        self._seen = int(version)
        return True

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        self._seen = None
