"""Shared helpers for crypto tests: the RFC 6962 vectors and an ``openssl`` runner."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# An unmodified copy of the shared test vectors merkle-rfc6962 (C2SP CCTV, BSD-2, see its LICENSE).
VECTORS = Path(__file__).parent / "vectors" / "merkle-rfc6962"


def b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def load_vectors(name: str) -> list[dict[str, Any]]:
    data = json.loads((VECTORS / name).read_text())
    assert isinstance(data, list)
    assert data, f"{name} is empty"
    return data


@pytest.fixture(scope="session")
def openssl() -> Callable[..., subprocess.CompletedProcess[bytes]]:
    """Run the openssl CLI; the test fails loudly if it is missing (it is an independent oracle)."""
    exe = shutil.which("openssl")
    if exe is None:
        pytest.fail("the openssl command line tool is required for independence checks")

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([exe, *args], capture_output=True, check=check, timeout=60)

    return run
