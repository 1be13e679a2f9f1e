"""Independence: tools/evidence_openssl_check.py checks a bundle's trust chain, entry signature,
inclusion proof, checkpoint signature, cosignatures and record with the Python standard library
and the ``openssl`` command only.

It runs as ``python -I -S`` (isolated, no site-packages: neither our code nor any third-party
package is importable), on a genuine bundle from real gateways (accepted) and on edited ones
(each rejected with a non-zero exit naming the part). The edits are the ones of
tests/gateway/test_evidence.py that touch what the tool checks; re-deriving the answer needs the
registry rules and is `mragw verify`'s job alone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.test_evidence import EDITS, Edit, Genuine, genuine  # noqa: F401 - fixture

TOOL = Path(__file__).resolve().parents[2] / "tools" / "evidence_openssl_check.py"
# Parts the tool checks; the others (question, answer) need the registry rules.
TOOL_PARTS = {
    "format",
    "issuer trust chain",
    "entry signature",
    "checkpoint",
    "inclusion proof",
    "cosignature of US",
    "record",
    "dataset",
}
# Where the tool finds an edit in another part than `mragw verify` does: it checks the entry's
# index against the proof's while checking inclusion, and an envelope without signatures is
# just an unsigned statement to it (our parser refuses it as malformed DSSE first).
TOOL_NAMES = {
    "edited-entry-index": "inclusion proof",
    "removed-chain-signature": "issuer trust chain",
}


def run_tool(path: Path, *anchors: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command line tool is required for this independence check")
    args = [sys.executable, "-I", "-S", str(TOOL), str(path)]
    for fp in anchors:
        args += ["--trust", fp]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def test_the_tool_imports_only_the_standard_library() -> None:
    source = TOOL.read_text(encoding="utf-8")
    imported = {
        line.split()[1].split(".")[0]
        for line in source.splitlines()
        if line.startswith(("import ", "from "))
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def test_genuine_bundle_is_accepted(genuine: Genuine, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "genuine.json"
    path.write_bytes(genuine.data)
    done = run_tool(path, *genuine.roots.all)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[0].startswith("VERIFIED")
    assert f"trust: EU root {genuine.roots.eu}, statement v1" in out
    assert any(x.startswith(f"entry: {genuine.entry_index} signed by key ") for x in out)
    assert any(x.startswith("checkpoint: eu.mragw/log size 7 signed by key ") for x in out)
    assert "record: DE AEOF DEAEOF0000012 ACTIVE since 2016-04-11" in out
    assert [x.split(",")[0] for x in out if x.startswith("witness:")] == [
        "witness: JP verified",
        "witness: US verified",
    ]
    # Only the issuer's root trusted: the witnesses are unverified, not failures.
    done = run_tool(path, genuine.roots.eu)
    assert done.returncode == 0, done.stderr
    assert "witness: US unverified (root not trusted)" in done.stdout.splitlines()


def test_untrusted_issuer_root_is_rejected(genuine: Genuine, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "genuine.json"
    path.write_bytes(genuine.data)
    done = run_tool(path, genuine.roots.jp, genuine.roots.us)
    assert done.returncode == 1
    assert "issuer trust chain: the root of EU is not among the --trust anchors" in done.stderr


def _tool_cases() -> list[Any]:
    out = []
    for case in EDITS:
        edit, part = case.values
        # The question is only checked against the answer, which the tool does not re-derive.
        if part in TOOL_PARTS and not str(case.id).startswith("question-"):
            out.append(pytest.param(edit, TOOL_NAMES.get(str(case.id), part), id=case.id))
    return out


@pytest.mark.parametrize(("edit", "part"), _tool_cases())
def test_every_edit_is_rejected(
    genuine: Genuine,  # noqa: F811 - the fixture, requested
    tmp_path: Path,
    edit: Edit,
    part: str,
) -> None:
    doc = json.loads(genuine.data)
    edit(doc, genuine)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
    done = run_tool(path, *genuine.roots.all)
    assert done.returncode == 1, done.stdout
    assert done.stdout == ""
    assert done.stderr.startswith(f"NOT VERIFIED: {part}"), done.stderr


@pytest.mark.parametrize("keep", [1, 200, 0.5, -2], ids=["one", "200", "half", "last-2"])
def test_a_truncated_bundle_is_rejected(
    genuine: Genuine,  # noqa: F811 - the fixture, requested
    tmp_path: Path,
    keep: float,
) -> None:
    end = int(len(genuine.data) * keep) if isinstance(keep, float) else keep
    path = tmp_path / "truncated.json"
    path.write_bytes(genuine.data[:end])
    done = run_tool(path, *genuine.roots.all)
    assert done.returncode == 1
    assert done.stderr.startswith("NOT VERIFIED: format: not a JSON document (truncated?)")


def test_bad_usage_exits_two(tmp_path: Path) -> None:
    assert run_tool(tmp_path / "missing.json", "ab" * 32).returncode == 2
    (tmp_path / "x.json").write_text("{}")
    assert run_tool(tmp_path / "x.json", "nothex").returncode == 2
