"""The runtime files running gateways leave in their home: ``run/serve-<replica>.json``.

``mragw status`` and ``mragw health`` find the bound listeners of a running ``serve`` (ports
may be ephemeral) by reading them. Each replica of a home (several ``mragw serve`` sharing one
PostgreSQL, see gateway.cluster) writes its own file, named after its replica name; a server
started without a replica name writes ``run/serve.json`` (the name before replicas existed,
still read). Written atomically (temp file + rename, mode 0600) once every listener is bound;
removed on clean shutdown, and only by the process that wrote it. A file left by a killed
process names a pid that no longer runs, and :func:`read_runtime` ignores it.

Format (JSON object, extend never break)::

    {"pid": 1234, "admin": "JP", "started_at": "2025-...Z",
     "listen": "0.0.0.0:7443",        bound partner listener
     "admin_listen": "127.0.0.1:7444", bound admin listener
     "admin_target": "127.0.0.1:7444", where a local client dials it
     "http_url": "http://127.0.0.1:41234",
     "replica": "gw-1"}               the replica name ("" for ``serve.json``)
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RUNTIME_DIR = "run"
RUNTIME_FILE = "serve.json"


def runtime_path(home: Path, replica: str = "") -> Path:
    """The runtime file of replica ``replica`` (``""``: the unnamed ``serve.json``)."""
    name = f"serve-{replica}.json" if replica else RUNTIME_FILE
    return home / RUNTIME_DIR / name


@dataclass(frozen=True)
class RuntimeInfo:
    pid: int
    admin: str
    started_at: str
    listen: str
    admin_listen: str
    admin_target: str
    http_url: str
    replica: str = ""


def write_runtime(home: Path, info: RuntimeInfo) -> Path:
    folder = home / RUNTIME_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    path = runtime_path(home, info.replica)
    temporary = folder / f".{path.name}.{info.pid}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(asdict(info), handle, indent=2)
        handle.write("\n")
    os.replace(temporary, path)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _read(path: Path) -> RuntimeInfo | None:
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
        fields = RuntimeInfo.__dataclass_fields__
        return RuntimeInfo(**{k: raw[k] for k in fields if k in raw or k != "replica"})
    except (OSError, ValueError, TypeError, KeyError):
        return None


def read_runtimes(home: Path, *, check_alive: bool = True) -> list[RuntimeInfo]:
    """Every running replica's listeners (by replica name; ``serve.json`` last)."""
    folder = home / RUNTIME_DIR
    try:
        named = sorted(folder.glob("serve-*.json"))
    except OSError:
        return []
    found = []
    for path in [*named, folder / RUNTIME_FILE]:
        info = _read(path)
        if info is not None and (not check_alive or _alive(int(info.pid))):
            found.append(info)
    return found


def read_runtime(
    home: Path, *, check_alive: bool = True, replica: str | None = None
) -> RuntimeInfo | None:
    """A running gateway's listeners, or None (no file, unreadable, or its process is gone).

    ``replica``: that replica's file only; otherwise any live replica of the home."""
    if replica is not None:
        info = _read(runtime_path(home, replica))
        if info is None or (check_alive and not _alive(int(info.pid))):
            return None
        return info
    found = read_runtimes(home, check_alive=check_alive)
    return found[0] if found else None


def remove_runtime(home: Path, pid: int, replica: str = "") -> None:
    """Remove replica ``replica``'s runtime file if (and only if) process ``pid`` wrote it."""
    current = read_runtime(home, check_alive=False, replica=replica)
    if current is not None and current.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            runtime_path(home, replica).unlink()
