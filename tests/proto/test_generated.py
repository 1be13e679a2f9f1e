"""The generated package `mra/` matches proto/, and the contract has the shape the design needs.

These tests read the generated code the way the rest of the project will: through
`from mra.v1 import ..._pb2` and the descriptors it carries.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from grpc_tools import protoc  # type: ignore[import-untyped]

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
GEN_SCRIPT = ROOT / "scripts" / "gen_protos.py"
FILES: list[FileDescriptor] = [
    m.DESCRIPTOR
    for m in (
        records_pb2,
        envelope_pb2,
        log_pb2,
        trust_pb2,
        exchange_pb2,
        query_pb2,
        admin_pb2,
        options_pb2,
    )
]


def load_gen_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_protos", GEN_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- freshness ------------------------------------------------------------------------------


def test_generated_code_is_not_stale() -> None:
    result = subprocess.run(
        [sys.executable, str(GEN_SCRIPT), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, (
        "generated code is stale; run `.venv/bin/python scripts/gen_protos.py`\n" + result.stderr
    )


def test_check_reports_edited_missing_and_extra_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = load_gen_script()
    copy = tmp_path / "mra"
    shutil.copytree(ROOT / "mra", copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(gen, "PACKAGE_ROOT", copy)
    assert gen.check() == []

    with (copy / "v1" / "records_pb2.py").open("a", encoding="utf-8") as f:
        f.write("# edited by hand\n")
    (copy / "v1" / "query_pb2.pyi").unlink()
    (copy / "v1" / "old_pb2.py").write_text("# left over\n", encoding="utf-8")

    assert gen.check() == [
        "v1/query_pb2.pyi (missing)",
        "v1/old_pb2.py (not generated any more)",
        "v1/records_pb2.py (out of date)",
    ]
    assert gen.main(["--check"]) == 1


def test_generated_files_say_do_not_edit() -> None:
    for path in sorted((ROOT / "mra").rglob("*.py*")):
        if "__pycache__" in path.parts:
            continue
        head = path.read_text(encoding="utf-8")[:400].lower()
        assert "do not edit" in head, path


# --- messages -------------------------------------------------------------------------------


def make_status() -> records_pb2.AeoStatus:
    return records_pb2.AeoStatus(
        issuer="DE",
        operator_ids=[
            records_pb2.OperatorId(
                scheme=records_pb2.OPERATOR_ID_SCHEME_EORI, value="DE123456789012345"
            ),
            records_pb2.OperatorId(scheme=records_pb2.OPERATOR_ID_SCHEME_AUTH, value="DEAEOF0001"),
        ],
        name="Muster Logistik GmbH",
        country="DE",
        authorisation="DEAEOF0001",
        type="AEOF",
        status=records_pb2.AUTHORISATION_STATUS_ACTIVE,
        status_date="2019-03-01",
        valid_from="2019-03-01",
        last_validation="2019-02-10",
        consent=True,
        audience=[],
        salt=bytes(range(16)),
    )


def test_aeo_status_round_trip_and_presence() -> None:
    status = make_status()
    data = status.SerializeToString(deterministic=True)
    parsed = records_pb2.AeoStatus.FromString(data)
    assert parsed == status
    assert parsed.operator_ids[0].scheme == records_pb2.OPERATOR_ID_SCHEME_EORI
    assert parsed.status == records_pb2.AUTHORISATION_STATUS_ACTIVE
    # valid_until absent means open-ended; presence survives the wire.
    assert not parsed.HasField("valid_until")
    assert parsed.HasField("last_validation")
    parsed.valid_until = "2025-12-31"
    assert records_pb2.AeoStatus.FromString(parsed.SerializeToString()).HasField("valid_until")
    # Same message, same implementation: the same bytes (what the issuer signs once).
    assert make_status().SerializeToString(deterministic=True) == data


def test_envelope_entry_and_batch_round_trip() -> None:
    payload = make_status().SerializeToString()
    envelope = envelope_pb2.Envelope(
        payload=payload,
        payload_type="application/vnd.mra.v1.AeoStatus+protobuf",
        signatures=[envelope_pb2.Signature(key_id="ab" * 32, sig=b"\x01" * 64)],
    )
    envelope_bytes = envelope.SerializeToString()
    batch = exchange_pb2.LogBatch(
        start_index=7,
        entries=[
            log_pb2.LogEntry(envelope=envelope_bytes),
            log_pb2.LogEntry(leaf_hash=b"\x00" * 32),
        ],
        checkpoint=log_pb2.Checkpoint(note=b"origin\n9\nAAAA\n\n"),
        consistency=log_pb2.ConsistencyProof(old_size=9, new_size=9),
    )
    parsed = exchange_pb2.SubscribeResponse.FromString(
        exchange_pb2.SubscribeResponse(batch=batch).SerializeToString()
    ).batch
    assert [e.WhichOneof("entry") for e in parsed.entries] == ["envelope", "leaf_hash"]
    # Envelope bytes travel untouched, so the leaf hash is computed over what was signed.
    assert parsed.entries[0].envelope == envelope_bytes
    assert (
        records_pb2.AeoStatus.FromString(
            envelope_pb2.Envelope.FromString(parsed.entries[0].envelope).payload
        )
        == make_status()
    )


def test_check_response_mirrors_the_json_contract() -> None:
    fields = {f.name for f in query_pb2.CheckResponse.DESCRIPTOR.fields}
    assert fields >= {"recognised", "operator", "issuer", "at", "reasons", "types", "dataset"}
    type_fields = {f.name for f in query_pb2.TypeAnswer.DESCRIPTOR.fields}
    assert type_fields >= {
        "type",
        "status",
        "recognised",
        "arrangements",
        "programme",
        "reasons",
        "warnings",
        "certainty",
        "evidence",
    }
    assert {f.name for f in query_pb2.Reason.DESCRIPTOR.fields} == {"code", "arrangement", "detail"}
    assert {f.name for f in query_pb2.Evidence.DESCRIPTOR.fields} == {
        "entry",
        "leaf_index",
        "inclusion_proof",
        "checkpoint",
        # Extensions carrying the JSON document's evidence.log and evidence.detail.
        "log",
        "unavailable",
    }
    status_fields = {f.name for f in admin_pb2.PartnerStatus.DESCRIPTOR.fields}
    assert status_fields == {
        "admin",
        "connected",
        "entries",
        "tree_size",
        "checkpoint_age_s",
        "quarantined",
        "suspended",
        "reason",
        # Extension: entries stored but not yet signature-checked (not yet used in answers).
        "unverified",
        # Trust lifecycle: witnesses of its latest checkpoint, its statement's expiry state.
        "witnesses",
        "trust",
        "trust_problem",
        "unusable",
        # Scale-out: the replica holding its replication lease.
        "lease_holder",
    }
    # JSON null: absent operator, absent arrangement, absent checkpoint age.
    answer = query_pb2.CheckResponse(issuer="DE", at="2026-11-27")
    assert not answer.HasField("operator")
    assert not query_pb2.Reason(code="UNKNOWN_OPERATOR").HasField("arrangement")
    assert not admin_pb2.PartnerStatus(admin="JP").HasField("checkpoint_age_s")
    assert not admin_pb2.PartnerStatus(admin="JP").HasField("lease_holder")


def test_payload_types_are_attached_to_their_messages() -> None:
    def payload_type(message: type) -> str:
        options = message.DESCRIPTOR.GetOptions()  # type: ignore[attr-defined]
        return str(options.Extensions[options_pb2.payload_type])

    assert payload_type(records_pb2.AeoStatus) == "application/vnd.mra.v1.AeoStatus+protobuf"
    assert payload_type(records_pb2.ValidationOutcome) == (
        "application/vnd.mra.v1.ValidationOutcome+protobuf"
    )
    assert payload_type(records_pb2.ErasureNotice) == (
        "application/vnd.mra.v1.ErasureNotice+protobuf"
    )
    assert payload_type(trust_pb2.TrustStatement) == "application/vnd.mra.trust-statement.v1+json"
    assert payload_type(records_pb2.OperatorId) == ""


def test_every_enum_starts_with_unspecified() -> None:
    enums = [e for f in FILES for e in f.enum_types_by_name.values()]
    assert len(enums) >= 7
    for enum in enums:
        zero = enum.values_by_number[0].name
        assert zero.endswith("_UNSPECIFIED"), (enum.full_name, zero)
        # A default-constructed record therefore never claims a status, kind or result.
    assert records_pb2.AeoStatus().status == records_pb2.AUTHORISATION_STATUS_UNSPECIFIED
    assert records_pb2.AuthorisationStatus.keys() == [
        "AUTHORISATION_STATUS_UNSPECIFIED",
        "AUTHORISATION_STATUS_ACTIVE",
        "AUTHORISATION_STATUS_SUSPENDED",
        "AUTHORISATION_STATUS_REVOKED",
        "AUTHORISATION_STATUS_ANNULLED",
        "AUTHORISATION_STATUS_WITHDRAWN",
        "AUTHORISATION_STATUS_CONSENT_WITHDRAWN",
    ]
    assert records_pb2.OperatorIdScheme.keys()[1:] == [
        "OPERATOR_ID_SCHEME_EORI",
        "OPERATOR_ID_SCHEME_MID",
        "OPERATOR_ID_SCHEME_TIN",
        "OPERATOR_ID_SCHEME_NATIONAL",
        "OPERATOR_ID_SCHEME_AUTH",
    ]


# --- services -------------------------------------------------------------------------------


def kinds(service: ServiceDescriptor) -> dict[str, tuple[bool, bool]]:
    """Method name -> (client streaming, server streaming)."""
    proto = descriptor_pb2.ServiceDescriptorProto()
    service.CopyToProto(proto)
    return {m.name: (m.client_streaming, m.server_streaming) for m in proto.method}


UNARY, SERVER_STREAM, CLIENT_STREAM = (False, False), (False, True), (True, False)


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        pytest.param(
            exchange_pb2.DESCRIPTOR.services_by_name["ExchangeService"],
            {
                "Subscribe": SERVER_STREAM,
                "GetCheckpoint": UNARY,
                "GetInclusionProof": UNARY,
                "GetConsistencyProof": UNARY,
                "GetTrustStatement": UNARY,
                "Witness": UNARY,
            },
            id="exchange",
        ),
        pytest.param(
            query_pb2.DESCRIPTOR.services_by_name["QueryService"],
            {
                "Check": UNARY,
                "CheckMany": UNARY,
                "Watch": SERVER_STREAM,
            },
            id="query",
        ),
        pytest.param(
            admin_pb2.DESCRIPTOR.services_by_name["AdminService"],
            {
                "Publish": CLIENT_STREAM,
                "AddPartner": UNARY,
                "ListPartners": UNARY,
                "RemovePartner": UNARY,
                "SuspendPartner": UNARY,
                "ResumePartner": UNARY,
                "SetPartnerEndpoint": UNARY,
                "ListKeys": UNARY,
                "GetStatus": UNARY,
                "ListAlerts": UNARY,
                "ClearAlerts": UNARY,
                "ListAudit": UNARY,
                "ListClients": UNARY,
                "RevokeClient": UNARY,
                "GetTrust": UNARY,
                "RepublishRecords": UNARY,
                "GetEvidence": UNARY,
                "UseDataset": UNARY,
            },
            id="admin",
        ),
    ],
)
def test_service_methods_and_streaming_kinds(
    service: ServiceDescriptor, expected: dict[str, tuple[bool, bool]]
) -> None:
    assert kinds(service) == expected
    for method in service.methods:
        assert method.input_type.name == f"{method.name}Request"
        assert method.output_type.name == f"{method.name}Response"


def test_check_many_wraps_check() -> None:
    request = query_pb2.CheckManyRequest(
        checks=[
            query_pb2.CheckRequest(operator_id="DE123456789012345", issuer="EU", strict=True),
            query_pb2.CheckRequest(
                operator_id="US1234",
                issuer="US",
                type="CTPAT",
                mode=query_pb2.TRANSPORT_MODE_SEA,
                evidence=True,
            ),
        ]
    )
    parsed = query_pb2.CheckManyRequest.FromString(request.SerializeToString())
    assert not parsed.checks[0].HasField("type")
    assert not parsed.checks[0].HasField("at")
    assert parsed.checks[1].type == "CTPAT"
    response_field = query_pb2.CheckManyResponse.DESCRIPTOR.fields_by_name["responses"]
    assert response_field.message_type is query_pb2.CheckResponse.DESCRIPTOR


# --- documentation --------------------------------------------------------------------------


def test_every_field_enum_value_and_method_is_documented(tmp_path: Path) -> None:
    """Each field, enum, enum value, service and method carries a leading comment in proto/."""
    out = tmp_path / "contract.binpb"
    gen = load_gen_script()
    protos = gen.proto_files()
    well_known = Path(protoc.__file__).parent / "_proto"
    rc = protoc.main(
        [
            "protoc",
            f"--proto_path={ROOT / 'proto'}",
            f"--proto_path={well_known}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *protos,
        ]
    )
    assert rc == 0
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    undocumented: list[str] = []
    for file in files:
        comments = {
            tuple(loc.path): loc.leading_comments.strip() for loc in file.source_code_info.location
        }

        def need(
            path: tuple[int, ...],
            name: str,
            file: str = file.name,
            comments: dict[tuple[int, ...], str] = comments,
        ) -> None:
            if not comments.get(path):
                undocumented.append(f"{file}: {name}")

        for i, message in enumerate(file.message_type):
            for j, field in enumerate(message.field):
                need((4, i, 2, j), f"{message.name}.{field.name}")
        for i, enum in enumerate(file.enum_type):
            need((5, i), enum.name)
            for j, value in enumerate(enum.value):
                need((5, i, 2, j), value.name)
        for i, service in enumerate(file.service):
            need((6, i), service.name)
            for j, method in enumerate(service.method):
                need((6, i, 2, j), f"{service.name}.{method.name}")
        for i, extension in enumerate(file.extension):
            need((7, i), extension.name)
    assert undocumented == []
