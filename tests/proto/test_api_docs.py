"""docs/api.md is generated from the proto comments, is fresh, and documents every element."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor

from mra.v1 import (
    admin_pb2,
    envelope_pb2,
    exchange_pb2,
    log_pb2,
    options_pb2,
    query_pb2,
    records_pb2,
    trust_pb2,
)

ROOT = Path(__file__).resolve().parents[2]
MODULES = (
    admin_pb2,
    envelope_pb2,
    exchange_pb2,
    log_pb2,
    options_pb2,
    query_pb2,
    records_pb2,
    trust_pb2,
)


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_api_docs", ROOT / "scripts/gen_api_docs.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_api_docs"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_script()


@pytest.fixture(scope="module")
def rendered(script: ModuleType) -> str:
    return str(script.render(script.descriptor_set()))


def test_the_checked_in_reference_is_fresh(script: ModuleType, rendered: str) -> None:
    assert (ROOT / "docs/api.md").read_text(encoding="utf-8") == rendered
    assert script.main(["--check"]) == 0


def test_check_fails_on_a_stale_reference(
    script: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rendered: str
) -> None:
    stale = tmp_path / "api.md"
    stale.write_text(rendered.replace("Answers one question.", "Answers a question."))
    monkeypatch.setattr(script, "OUTPUT", stale)
    assert script.main(["--check"]) == 1
    assert "Answers a question." in stale.read_text()  # --check changes nothing
    stale.unlink()
    assert script.main(["--check"]) == 1


def _messages(descriptor: Descriptor, prefix: str = "") -> list[tuple[str, Descriptor]]:
    name = f"{prefix}{descriptor.name}"
    if descriptor.GetOptions().map_entry:
        return []
    found = [(name, descriptor)]
    for nested in descriptor.nested_types:
        found += _messages(nested, f"{name}.")
    return found


def _section(rendered: str, heading: str) -> str:
    start = rendered.index(f"\n{heading}\n")
    end = rendered.find("\n### ", start + 1)
    return rendered[start : end if end != -1 else len(rendered)]


def test_every_service_method_message_field_and_enum_value_is_documented(rendered: str) -> None:
    for module in MODULES:
        file = module.DESCRIPTOR
        assert f"## `{file.name}`" in rendered
        for service in file.services_by_name.values():
            section = _section(rendered, f"### service `{service.name}`")
            for method in service.methods:
                assert re.search(rf"^\| `{method.name}` \| .+ \| .+ \| .+ \|$", section, re.M), (
                    f"{service.name}.{method.name} has no row with a description"
                )
        for top in file.message_types_by_name.values():
            for name, message in _messages(top):
                section = _section(rendered, f"### `{name}`")
                for field in message.fields:
                    assert f"| `{field.name}` | {field.number} |" in section, f"{name}.{field.name}"
                enums: list[tuple[str, EnumDescriptor]] = [
                    (f"{name}.{e.name}", e) for e in message.enum_types
                ]
                for enum_name, enum in enums:
                    enum_section = _section(rendered, f"### enum `{enum_name}`")
                    for value in enum.values:
                        assert f"| `{value.name}` | {value.number} |" in enum_section
        for enum in file.enum_types_by_name.values():
            section = _section(rendered, f"### enum `{enum.name}`")
            for value in enum.values:
                assert f"| `{value.name}` | {value.number} |" in section


def test_comments_reach_the_reference(rendered: str) -> None:
    # A service comment, a method comment, a field comment and a file header, verbatim.
    query = _section(rendered, "### service `QueryService`")
    assert "Answers recognition questions and streams status changes." in query
    assert "| `Check` | [`CheckRequest`](#checkrequest) | [`CheckResponse`](#checkresponse) |" in (
        query
    )
    assert "| `Watch` | [`WatchRequest`](#watchrequest) | stream [`WatchResponse`]" in query
    assert "QueryService: the local API that answers" in rendered
    # A pipe inside a comment does not break its table row.
    assert "SHA-256(0x00 \\|\\| these bytes)" in rendered
