"""QueryService over a real grpc.aio server on 127.0.0.1:0 (insecure channel: TLS and caller
authentication belong to the server layer), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from crypto.checkpoint import parse_note
from crypto.merkle import leaf_hash, verify_inclusion
from gateway.node import Node
from gateway.query import Checker, Question
from gateway.services.query_service import (
    QueryServicer,
    document_from_response,
    response_from_answer,
)
from mra.v1 import query_pb2, query_pb2_grpc, records_pb2
from tests.gateway.test_query import (
    A_EORI,
    FAST_POLL,
    NEW_JP,
    NEW_JP_REVOKED,
    TODAY,
    build_world,
    count_feed,
    publish_jp,
)


@dataclass
class Served:
    node: Node
    checker: Checker
    stub: query_pb2_grpc.QueryServiceAsyncStub


@pytest.fixture
async def served(tmp_path: Path, db_url: str) -> AsyncIterator[Served]:
    node = await build_world(tmp_path, db_url)
    checker = Checker.for_node(node, today=lambda: TODAY, poll_interval=FAST_POLL)
    server = grpc.aio.server()
    query_pb2_grpc.add_QueryServiceServicer_to_server(
        QueryServicer(checker, max_questions=50), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        await asyncio.wait_for(channel.channel_ready(), 10)
        yield Served(node, checker, query_pb2_grpc.QueryServiceStub(channel))
    finally:
        await channel.close(grace=None)
        await server.stop(grace=1)
        await node.close()


def request(operator_id: str, issuer: str, **fields: object) -> query_pb2.CheckRequest:
    return query_pb2.CheckRequest(operator_id=operator_id, issuer=issuer, **fields)  # type: ignore[arg-type]


async def test_check_answers_like_the_domain(served: Served) -> None:
    response = await served.stub.Check(request("DE000000000000003", "DE"))
    assert response.recognised is True
    assert response.issuer == "DE"
    assert response.at == TODAY.isoformat()
    assert len(response.dataset) == 64
    assert [
        (t.type, t.status, t.recognised, [r.code for r in t.reasons]) for t in response.types
    ] == [
        ("AEOC", records_pb2.AUTHORISATION_STATUS_ACTIVE, False, ["TYPE_NOT_COVERED"]),
        ("AEOS", records_pb2.AUTHORISATION_STATUS_ACTIVE, True, []),
    ]
    aeoc, aeos = response.types
    assert aeoc.reasons[0].arrangement == "EU-JP"
    assert list(aeos.arrangements) == ["EU-JP"]
    assert aeos.programme == "EU-AEO"
    assert aeos.certainty == query_pb2.CERTAINTY_CONFIRMED
    assert aeos.authorisation == "DEAEOS0003"
    assert aeos.status_date == "2019-01-01"
    assert not aeos.HasField("valid_until")
    assert not aeos.HasField("evidence")
    assert ("EORI", "DE000000000000003") in {
        (records_pb2.OperatorIdScheme.Name(i.scheme).rsplit("_", 1)[-1], i.value)
        for i in response.operator.operator_ids
    }
    domain = await served.checker.check(Question("DE000000000000003", "DE"))
    assert response == response_from_answer(domain)


async def test_check_top_level_reason_and_no_operator(served: Served) -> None:
    response = await served.stub.Check(
        request("GB123456789001", "EU", at="2021-06-01")  # GB left the EU on 2020-12-31
    )
    assert response.recognised is False
    assert not response.HasField("operator")
    assert [(r.code, r.HasField("arrangement")) for r in response.reasons] == [
        ("UNKNOWN_OPERATOR", False)
    ]
    assert list(response.types) == []


async def test_check_request_fields_reach_the_question(served: Served) -> None:
    strict = await served.stub.Check(
        request("USACMEWID1234CH", "US", scheme=records_pb2.OPERATOR_ID_SCHEME_MID, strict=True)
    )
    assert [r.code for r in strict.types[0].reasons] == ["NO_DATE"]
    typed = await served.stub.Check(
        request(
            "DE000000000000003",
            "DE",
            type="AEOC",
            at="2020-01-01",
            mode=query_pb2.TRANSPORT_MODE_RAIL,
        )
    )
    assert [t.type for t in typed.types] == ["AEOC"]
    assert typed.at == "2020-01-01"


async def test_check_evidence_verifies(served: Served) -> None:
    response = await served.stub.Check(request(A_EORI, "DE", evidence=True))
    [t] = response.types
    ev = t.evidence
    note = parse_note(ev.checkpoint.note).checkpoint()
    assert ev.inclusion_proof.tree_size == note.size
    assert ev.inclusion_proof.leaf_index == ev.leaf_index == 0
    verify_inclusion(
        leaf_hash(ev.entry),
        ev.leaf_index,
        note.size,
        list(ev.inclusion_proof.hashes),
        note.root_hash,
    )


BAD_REQUESTS = [
    pytest.param(request(A_EORI, "QQ"), "QQ", id="unknown-issuer"),
    pytest.param(request(A_EORI, "DE", at="2020-02-30"), "2020-02-30", id="bad-date"),
    pytest.param(request(A_EORI, "DE", type="CTPAT"), "CTPAT", id="type-not-of-issuer"),
    pytest.param(request("%%%", "DE"), "%%%", id="malformed-identifier"),
    pytest.param(
        query_pb2.CheckRequest(operator_id=A_EORI, issuer="DE", mode=9),  # type: ignore[arg-type]
        "mode 9",
        id="unknown-mode-enum",
    ),
    pytest.param(
        query_pb2.CheckRequest(operator_id=A_EORI, issuer="DE", scheme=42),  # type: ignore[arg-type]
        "scheme 42",
        id="unknown-scheme-enum",
    ),
]


@pytest.mark.parametrize(("bad", "named"), BAD_REQUESTS)
async def test_bad_question_is_invalid_argument(
    served: Served, bad: query_pb2.CheckRequest, named: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.stub.Check(bad)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in (caught.value.details() or "")


MANY = [
    request(A_EORI, "DE"),
    request("DE000000000000004", "DE", at="2017-12-31"),
    request("GB123456789000", "EU", at="2020-07-01"),
    request("DE999999999999999", "DE"),
    request("JP1234567890123", "JP", evidence=True),
    request(A_EORI, "DE", type="AEOS"),
]


async def test_check_many_in_order_equals_check(served: Served) -> None:
    many = await served.stub.CheckMany(query_pb2.CheckManyRequest(checks=MANY))
    single = [await served.stub.Check(r) for r in MANY]
    assert list(many.responses) == single
    assert [r.recognised for r in many.responses] == [True, False, True, False, True, False]
    empty = await served.stub.CheckMany(query_pb2.CheckManyRequest())
    assert list(empty.responses) == []


async def test_check_many_names_the_position_of_a_bad_question(served: Served) -> None:
    checks = [*MANY[:2], request(A_EORI, "DE", at="2020-13-01"), *MANY[2:]]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.stub.CheckMany(query_pb2.CheckManyRequest(checks=checks))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details() or ""
    assert "question 2" in details
    assert "2020-13-01" in details


async def test_check_many_over_the_cap_is_invalid_argument(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.stub.CheckMany(query_pb2.CheckManyRequest(checks=MANY * 9))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 50" in (caught.value.details() or "")


async def test_watch_streams_records_appended_after_the_given_sequence(served: Served) -> None:
    after = await count_feed(served.node)  # every sequence so far (1..after, no gaps here)
    call = served.stub.Watch(query_pb2.WatchRequest(after_sequence=after, types=["AEO"]))
    try:
        await publish_jp(served.node, NEW_JP)
        await publish_jp(served.node, NEW_JP_REVOKED)
        first = await asyncio.wait_for(call.read(), 20)
        second = await asyncio.wait_for(call.read(), 20)
    finally:
        call.cancel()
    assert isinstance(first, query_pb2.WatchResponse)
    assert isinstance(second, query_pb2.WatchResponse)
    assert (first.sequence, second.sequence) == (after + 1, after + 2)
    assert (first.log, first.leaf_index, second.leaf_index) == ("JP", 1, 2)
    assert first.record.authorisation == "JPAEO0002"
    assert first.record.status == records_pb2.AUTHORISATION_STATUS_ACTIVE
    assert first.previous_status == records_pb2.AUTHORISATION_STATUS_UNSPECIFIED
    assert second.record.status == records_pb2.AUTHORISATION_STATUS_REVOKED
    assert second.previous_status == records_pb2.AUTHORISATION_STATUS_ACTIVE
    assert [(i.scheme, i.value) for i in first.record.operator_ids] == [
        (records_pb2.OPERATOR_ID_SCHEME_NATIONAL, "JP9999999999999")
    ]


async def test_watch_from_now_on_after_the_stream_is_live(served: Served) -> None:
    call = served.stub.Watch(query_pb2.WatchRequest(operator_ids=["jp 9999999999999"]))
    try:
        # Initial metadata arrives once the server fixed the starting point: no sleep needed.
        await asyncio.wait_for(call.initial_metadata(), 10)
        await publish_jp(served.node, NEW_JP)
        change = await asyncio.wait_for(call.read(), 20)
    finally:
        call.cancel()
    assert isinstance(change, query_pb2.WatchResponse)
    assert change.record.authorisation == "JPAEO0002"
    assert change.sequence == await count_feed(served.node)


async def test_watch_cancellation_ends_cleanly_and_the_server_keeps_serving(
    served: Served,
) -> None:
    call = served.stub.Watch(query_pb2.WatchRequest())
    # The stream is open (metadata arrived) before it is cancelled.
    await asyncio.wait_for(call.initial_metadata(), 10)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call.read()
    response = await served.stub.Check(request(A_EORI, "DE"))
    assert response.recognised is True


WATCH_ERRORS = [
    pytest.param(
        query_pb2.WatchRequest(after_sequence=10_000),
        grpc.StatusCode.OUT_OF_RANGE,
        "10000",
        id="sequence-never-given",
    ),
    pytest.param(
        query_pb2.WatchRequest(issuers=["QQ"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "QQ",
        id="unknown-issuer",
    ),
]


@pytest.mark.parametrize(("bad", "code", "named"), WATCH_ERRORS)
async def test_watch_errors(
    served: Served, bad: query_pb2.WatchRequest, code: grpc.StatusCode, named: str
) -> None:
    call = served.stub.Watch(bad)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(call.read(), 10)
    assert caught.value.code() == code
    assert named in (caught.value.details() or "")


ROUND_TRIP = [
    Question(A_EORI, "DE", evidence=True),
    Question("GB123456789002", "GB", evidence=True),  # evidence unavailable: beyond checkpoint
    Question("DE000000000000004", "DE", at="2017-12-31"),
    Question("GB123456789000", "EU", at="2020-07-01"),
    Question("DEAEOF0001", "DE", scheme="AUTH", type="AEOF"),
    Question("USACMEWID1234CH", "US", strict=True),
    Question(A_EORI, "DE", type="AEOS"),
    Question("DE999999999999999", "DE"),  # unknown operator
]


@pytest.mark.parametrize("question", ROUND_TRIP, ids=lambda q: f"{q.operator_id}-{q.issuer}")
async def test_the_rpc_answer_converts_back_to_the_same_json_document(
    served: Served, question: Question
) -> None:
    """`mragw check --target` prints what `mragw check` prints: the CheckResponse carries every
    field of the JSON contract, and document_from_response restores it exactly."""
    direct = (await served.checker.check(question)).to_json()
    fields: dict[str, object] = {"strict": question.strict, "evidence": question.evidence}
    if question.type:
        fields["type"] = question.type
    if question.at:
        fields["at"] = str(question.at)
    if question.scheme:
        fields["scheme"] = records_pb2.OperatorIdScheme.Value(
            f"OPERATOR_ID_SCHEME_{question.scheme}"
        )
    response = await served.stub.Check(request(question.operator_id, question.issuer, **fields))
    assert document_from_response(response) == direct
