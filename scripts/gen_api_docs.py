"""Generate docs/api.md, the API reference of the gRPC contract, from the proto comments.

    .venv/bin/python scripts/gen_api_docs.py           # rewrite docs/api.md
    .venv/bin/python scripts/gen_api_docs.py --check   # exit 1 when docs/api.md is stale

The comments come from protoc itself (grpcio-tools' bundled compiler): a descriptor set with
``--include_source_info`` carries every comment attached to its element, so nothing here parses
.proto text. (The generated ``mra/`` modules embed descriptors without source info, hence the
protoc run.) Output is a pure function of the .proto files: files, services, methods,
messages, fields, enums and values in declaration order, nothing time- or machine-dependent.
"""

from __future__ import annotations

import argparse
import importlib.resources
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUTPUT = ROOT / "docs" / "api.md"
PACKAGE = "mra.v1"

# Field numbers of the descriptor messages, as SourceCodeInfo paths use them.
FILE_SYNTAX, FILE_MESSAGE, FILE_ENUM, FILE_SERVICE, FILE_EXTENSION = 12, 4, 5, 6, 7
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM = 2, 3, 4
ENUM_VALUE = 2
SERVICE_METHOD = 2

Path_ = tuple[int, ...]

LABELS = {
    descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED: "repeated",
}
SCALARS = {
    value: name.removeprefix("TYPE_").lower()
    for name, value in descriptor_pb2.FieldDescriptorProto.Type.items()
}


def proto_files() -> list[str]:
    files = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))
    if not files:
        raise SystemExit(f"no .proto files under {PROTO_ROOT}")
    return files


def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """The contract's files as protoc compiles them, comments included."""
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory(prefix="mra-api-") as tmp:
        out = Path(tmp) / "contract.binpb"
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={PROTO_ROOT}",
            f"--proto_path={well_known}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *proto_files(),
        ]
        result = subprocess.run(cmd, cwd=PROTO_ROOT, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            sys.stderr.write(result.stdout + result.stderr)
            raise SystemExit(f"protoc failed with exit code {result.returncode}")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


class Comments:
    """The comments of one file, by element path."""

    def __init__(self, file: descriptor_pb2.FileDescriptorProto) -> None:
        self.by_path = {tuple(loc.path): loc for loc in file.source_code_info.location}

    def of(self, path: Path_) -> str:
        loc = self.by_path.get(path)
        if loc is None:
            return ""
        return _clean(loc.leading_comments or loc.trailing_comments)

    def header(self) -> str:
        """The file's opening comment: the one above ``syntax`` (attached or detached)."""
        loc = self.by_path.get((FILE_SYNTAX,))
        if loc is None:
            return ""
        parts = [*loc.leading_detached_comments, loc.leading_comments]
        return "\n\n".join(_clean(p) for p in parts if p.strip())


def _clean(comment: str) -> str:
    """A comment as Markdown text: one leading space of each line dropped, paragraphs kept."""
    lines = [line[1:] if line.startswith(" ") else line for line in comment.rstrip().split("\n")]
    return "\n".join(lines).strip()


def _cell(text: str) -> str:
    """A comment inside a table cell: one line, pipes escaped."""
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n")]
    return "<br>".join(p for p in paragraphs if p).replace("|", "\\|")


def _type_name(field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.type_name:
        name = field.type_name.lstrip(".")
        local = name.removeprefix(f"{PACKAGE}.")
        return f"[`{local}`](#{_anchor(local)})" if name.startswith(PACKAGE) else f"`{name}`"
    return f"`{SCALARS[field.type]}`"


def _anchor(name: str) -> str:
    return name.lower().replace(".", "")


def _label(field: descriptor_pb2.FieldDescriptorProto, map_entries: set[str]) -> str:
    if field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED:
        if field.type_name.lstrip(".") in map_entries:
            return "map"
        return "repeated"
    if field.proto3_optional:
        return "optional"
    return ""


def _messages(
    messages: Sequence[descriptor_pb2.DescriptorProto], path: Path_, prefix: str
) -> Iterator[tuple[str, descriptor_pb2.DescriptorProto, Path_]]:
    for index, message in enumerate(messages):
        name = f"{prefix}{message.name}"
        here = (*path, index)
        if message.options.map_entry:
            continue
        yield name, message, here
        yield from _messages(message.nested_type, (*here, MESSAGE_NESTED), f"{name}.")


def _enums(
    file: descriptor_pb2.FileDescriptorProto,
) -> Iterator[tuple[str, descriptor_pb2.EnumDescriptorProto, Path_]]:
    for index, enum in enumerate(file.enum_type):
        yield enum.name, enum, (FILE_ENUM, index)
    for name, message, path in _messages(file.message_type, (FILE_MESSAGE,), ""):
        for index, enum in enumerate(message.enum_type):
            yield f"{name}.{enum.name}", enum, (*path, MESSAGE_ENUM, index)


def _map_entries(file: descriptor_pb2.FileDescriptorProto) -> set[str]:
    found: set[str] = set()

    def walk(messages: Sequence[descriptor_pb2.DescriptorProto], prefix: str) -> None:
        for message in messages:
            name = f"{prefix}.{message.name}"
            if message.options.map_entry:
                found.add(name)
            walk(message.nested_type, name)

    walk(file.message_type, file.package)
    return found


def render_file(file: descriptor_pb2.FileDescriptorProto, lines: list[str]) -> None:
    comments = Comments(file)
    maps = _map_entries(file)
    lines += [f"## `{file.name}`", ""]
    header = comments.header()
    if header:
        lines += [header, ""]
    for s_index, service in enumerate(file.service):
        lines += [f"### service `{service.name}`", ""]
        text = comments.of((FILE_SERVICE, s_index))
        if text:
            lines += [text, ""]
        lines += ["| method | request | response | description |", "|---|---|---|---|"]
        for m_index, method in enumerate(service.method):

            def kind(name: str, streaming: bool) -> str:
                local = name.lstrip(".").removeprefix(f"{PACKAGE}.")
                return ("stream " if streaming else "") + f"[`{local}`](#{_anchor(local)})"

            lines.append(
                f"| `{method.name}` | {kind(method.input_type, method.client_streaming)} | "
                f"{kind(method.output_type, method.server_streaming)} | "
                f"{_cell(comments.of((FILE_SERVICE, s_index, SERVICE_METHOD, m_index)))} |"
            )
        lines.append("")
    for name, message, path in _messages(file.message_type, (FILE_MESSAGE,), ""):
        lines += [f"### `{name}`", ""]
        text = comments.of(path)
        if text:
            lines += [text, ""]
        if not message.field:
            lines += ["No fields.", ""]
            continue
        oneofs = [o.name for o in message.oneof_decl]
        lines += ["| field | number | type | description |", "|---|---|---|---|"]
        for f_index, field in enumerate(message.field):
            label = _label(field, maps)
            if field.HasField("oneof_index") and not field.proto3_optional:
                label = f"oneof `{oneofs[field.oneof_index]}`"
            shown = f"{label} {_type_name(field)}".strip()
            lines.append(
                f"| `{field.name}` | {field.number} | {shown} | "
                f"{_cell(comments.of((*path, MESSAGE_FIELD, f_index)))} |"
            )
        lines.append("")
    for name, enum, path in _enums(file):
        lines += [f"### enum `{name}`", ""]
        text = comments.of(path)
        if text:
            lines += [text, ""]
        lines += ["| value | number | description |", "|---|---|---|"]
        for v_index, value in enumerate(enum.value):
            lines.append(
                f"| `{value.name}` | {value.number} | "
                f"{_cell(comments.of((*path, ENUM_VALUE, v_index)))} |"
            )
        lines.append("")
    for e_index, extension in enumerate(file.extension):
        lines += [f"### option `{extension.name}` (on `{extension.extendee.lstrip('.')}`)", ""]
        text = comments.of((FILE_EXTENSION, e_index))
        lines += [f"Field number {extension.number}, type {_type_name(extension)}.", ""]
        if text:
            lines += [text, ""]


def render(fds: descriptor_pb2.FileDescriptorSet) -> str:
    ours = [f for f in fds.file if f.package == PACKAGE]
    lines = [
        "# API reference (`mra.v1`)",
        "",
        "<!-- Generated by scripts/gen_api_docs.py from proto/; do not edit. "
        "`scripts/test` fails when it is stale. -->",
        "",
        "The gRPC contract of mra-gateway. Partners call `ExchangeService` on the partner "
        "listener; local clients (the CLI, risk engines, other agencies) call `QueryService` "
        "and `AdminService` on the admin listener. Every caller presents a client "
        "certificate (mutual TLS); see [ADR 0004](adr/0004-mtls-identity.md).",
        "",
        "Files:",
        "",
        *[f"- [`{f.name}`](#{_anchor(f.name).replace('/', '')})" for f in ours],
        "",
    ]
    for file in ours:
        render_file(file, lines)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when docs/api.md differs; change nothing"
    )
    args = parser.parse_args(argv)
    text = render(descriptor_set())
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(
                "docs/api.md is stale; run .venv/bin/python scripts/gen_api_docs.py",
                file=sys.stderr,
            )
            return 1
        print("docs/api.md is up to date with proto/", file=sys.stderr)
        return 0
    OUTPUT.write_text(text, encoding="utf-8", newline="\n")
    print(f"wrote {OUTPUT.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
