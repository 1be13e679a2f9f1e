"""The runtime file a running gateway leaves in its home: ``run/serve.json``.

``mragw status`` and ``mragw health`` find the bound listeners of a running ``serve`` (ports
may be ephemeral) by reading it. Written atomically (temp file + rename, mode 0600) once every
listener is bound; removed on clean shutdown, and only by the process that wrote it. A file
left by a killed process names a pid that no longer runs, and :func:`read_runtime` ignores it.

Format (JSON object, extend never break)::

    {"pid": 1234, "admin": "JP", "started_at": "2025-...Z",
     "listen": "0.0.0.0:7443",        bound partner listener
     "admin_listen": "127.0.0.1:7444", bound admin listener
     "admin_target": "127.0.0.1:7444", where a local client dials it
     "http_url": "http://127.0.0.1:41234"}
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


def runtime_path(home: Path) -> Path:
    return home / RUNTIME_DIR / RUNTIME_FILE


@dataclass(frozen=True)
class RuntimeInfo:
    pid: int
    admin: str
    started_at: str
    listen: str
    admin_listen: str
    admin_target: str
    http_url: str


def write_runtime(home: Path, info: RuntimeInfo) -> Path:
    folder = home / RUNTIME_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    path = runtime_path(home)
    temporary = folder / f".{RUNTIME_FILE}.{info.pid}.tmp"
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


def read_runtime(home: Path, *, check_alive: bool = True) -> RuntimeInfo | None:
    """The running gateway's listeners, or None (no file, unreadable, or its process is gone)."""
    try:
        raw: Any = json.loads(runtime_path(home).read_text(encoding="utf-8"))
        info = RuntimeInfo(**{k: raw[k] for k in RuntimeInfo.__dataclass_fields__})
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if check_alive and not _alive(int(info.pid)):
        return None
    return info


def remove_runtime(home: Path, pid: int) -> None:
    """Remove the runtime file if (and only if) process ``pid`` wrote it."""
    current = read_runtime(home, check_alive=False)
    if current is not None and current.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            runtime_path(home).unlink()
