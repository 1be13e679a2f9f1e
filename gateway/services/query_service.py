"""QueryService: Check, CheckMany and Watch over :class:`gateway.query.Checker`.

A thin edge (the a2a-python handler style): requests become :class:`~gateway.query.Question`
values, answers become ``CheckResponse`` messages field by field (the ``mragw check --json``
document), and our errors become gRPC status codes through one table. Who may call is decided
by the server layer (client certificate and role), never here; what an audited role asks
is handed, before it is answered, to the optional :class:`QueryAudit` hooks (the trail lives in
:mod:`gateway.clients`), and a failing hook refuses the call.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any, Protocol

import grpc

from crypto.errors import CryptoError
from gateway.errors import GatewayError
from gateway.query import (
    MAX_QUESTIONS,
    BadQuestionError,
    Change,
    CheckAnswer,
    Checker,
    Evidence,
    Question,
    TypeAnswer,
    WatchFilter,
)
from gateway.server.identity import PeerRejectedError, current_local_peer, recheck_peer
from gateway.services.errors import abort_for
from mra.v1 import log_pb2, query_pb2, query_pb2_grpc, records_pb2
from registry.errors import RegistryError
from registry.resolver import Reason

Context = grpc.aio.ServicerContext[Any, Any]

_OURS = (GatewayError, RegistryError, CryptoError)

_SCHEME_NAME = {
    records_pb2.OPERATOR_ID_SCHEME_EORI: "EORI",
    records_pb2.OPERATOR_ID_SCHEME_MID: "MID",
    records_pb2.OPERATOR_ID_SCHEME_TIN: "TIN",
    records_pb2.OPERATOR_ID_SCHEME_NATIONAL: "NATIONAL",
    records_pb2.OPERATOR_ID_SCHEME_AUTH: "AUTH",
}
_SCHEME = {name: value for value, name in _SCHEME_NAME.items()}
_MODE_NAME = {
    query_pb2.TRANSPORT_MODE_ROAD: "road",
    query_pb2.TRANSPORT_MODE_AIR: "air",
    query_pb2.TRANSPORT_MODE_SEA: "sea",
    query_pb2.TRANSPORT_MODE_RAIL: "rail",
}
_STATUS = {
    name: getattr(records_pb2, f"AUTHORISATION_STATUS_{name}")
    for name in ("ACTIVE", "SUSPENDED", "REVOKED", "ANNULLED", "WITHDRAWN", "CONSENT_WITHDRAWN")
}
_CERTAINTY = {
    "confirmed": query_pb2.CERTAINTY_CONFIRMED,
    "uncertain": query_pb2.CERTAINTY_UNCERTAIN,
}


# --- protobuf -> domain ---------------------------------------------------------------------


def question_from_request(request: query_pb2.CheckRequest, position: int | None = None) -> Question:
    """The question a request asks; an enum value this version does not know is a bad one."""
    scheme: str | None = None
    if request.scheme != records_pb2.OPERATOR_ID_SCHEME_UNSPECIFIED:
        scheme = _SCHEME_NAME.get(request.scheme)
        if scheme is None:
            raise BadQuestionError(f"scheme {request.scheme}: unknown", position=position)
    mode: str | None = None
    if request.mode != query_pb2.TRANSPORT_MODE_UNSPECIFIED:
        mode = _MODE_NAME.get(request.mode)
        if mode is None:
            raise BadQuestionError(f"mode {request.mode}: unknown", position=position)
    return Question(
        operator_id=request.operator_id,
        issuer=request.issuer,
        scheme=scheme,
        type=request.type if request.HasField("type") else None,
        at=request.at if request.HasField("at") else None,
        mode=mode,
        strict=request.strict,
        evidence=request.evidence,
    )


def filter_from_request(request: query_pb2.WatchRequest) -> WatchFilter:
    return WatchFilter(
        issuers=tuple(request.issuers),
        operator_ids=tuple(request.operator_ids),
        types=tuple(request.types),
    )


# --- domain -> protobuf ---------------------------------------------------------------------


def _reason(reason: Reason) -> query_pb2.Reason:
    message = query_pb2.Reason(code=reason.code, detail=reason.detail)
    if reason.arrangement is not None:
        message.arrangement = reason.arrangement
    return message


def _evidence(evidence: Evidence) -> query_pb2.Evidence:
    if not evidence.available:
        return query_pb2.Evidence(
            leaf_index=evidence.leaf_index,
            log=evidence.log,
            unavailable=evidence.unavailable or "unavailable",
        )
    return query_pb2.Evidence(
        entry=evidence.entry or b"",
        leaf_index=evidence.leaf_index,
        inclusion_proof=log_pb2.InclusionProof(
            leaf_index=evidence.leaf_index,
            tree_size=evidence.tree_size,
            hashes=list(evidence.proof),
        ),
        checkpoint=log_pb2.Checkpoint(note=(evidence.checkpoint or "").encode("utf-8")),
        log=evidence.log,
    )


def _type_answer(answer: TypeAnswer) -> query_pb2.TypeAnswer:
    message = query_pb2.TypeAnswer(
        type=answer.type,
        recognised=answer.recognised,
        arrangements=list(answer.arrangements),
        programme=answer.programme or "",
        reasons=[_reason(r) for r in answer.reasons],
        warnings=list(answer.warnings),
        certainty=_CERTAINTY.get(answer.certainty or "", query_pb2.CERTAINTY_UNSPECIFIED),
    )
    record = answer.record
    if record is not None:
        message.status = _STATUS.get(record.status, records_pb2.AUTHORISATION_STATUS_UNSPECIFIED)
        message.authorisation = record.authorisation
        message.status_date = record.status_date
        if record.valid_from is not None:
            message.valid_from = record.valid_from
        if record.valid_until is not None:
            message.valid_until = record.valid_until
        message.issuer = record.issuer
        message.consent = record.consent
        message.log = record.log
        message.leaf_index = record.idx
    # Evidence that is unavailable carries only why (``unavailable``); the warnings say it too.
    if answer.evidence is not None:
        message.evidence.CopyFrom(_evidence(answer.evidence))
    return message


def response_from_answer(answer: CheckAnswer) -> query_pb2.CheckResponse:
    message = query_pb2.CheckResponse(
        recognised=answer.recognised,
        issuer=answer.issuer,
        at=answer.at.isoformat(),
        reasons=[_reason(r) for r in answer.reasons],
        types=[_type_answer(t) for t in answer.types],
        dataset=answer.dataset,
    )
    if answer.operator is not None:
        op = answer.operator
        message.operator.name = op.name or ""
        message.operator.country = op.country or ""
        for op_id in op.operator_ids:
            message.operator.operator_ids.add(scheme=_SCHEME[op_id.scheme], value=op_id.value)
        message.operator.issuer = op.issuer
        message.operator.log = op.log
        for a in op.authorisations:
            message.operator.authorisations.add(
                issuer=a.issuer, authorisation=a.authorisation, type=a.type, log=a.log
            )
    return message


def response_from_change(change: Change) -> query_pb2.WatchResponse:
    r = change.record
    record = records_pb2.AeoStatus(
        issuer=r.issuer,
        name=r.name or "",
        country=r.country or "",
        authorisation=r.authorisation,
        type=r.aeo_type,
        status=_STATUS.get(r.status, records_pb2.AUTHORISATION_STATUS_UNSPECIFIED),
        status_date=r.status_date,
        valid_from=r.valid_from or "",
        consent=r.consent,
    )
    if r.valid_until is not None:
        record.valid_until = r.valid_until
    if r.disclosed_to is not None:
        record.audience.append(r.disclosed_to)
    for op_id in change.operator_ids:
        record.operator_ids.add(scheme=_SCHEME[op_id.scheme], value=op_id.value)
    return query_pb2.WatchResponse(
        sequence=change.seq,
        log=r.log,
        leaf_index=r.idx,
        record=record,
        previous_status=_STATUS.get(
            change.previous_status or "", records_pb2.AUTHORISATION_STATUS_UNSPECIFIED
        ),
    )


# --- the servicer ---------------------------------------------------------------------------


class QueryAudit(Protocol):
    """Records what a caller asks before it is answered (role and name from its TLS peer)."""

    async def checked(
        self, role: str, client: str, method: str, questions: Sequence[Question]
    ) -> None: ...

    async def watched(
        self, role: str, client: str, filters: WatchFilter, after: int | None
    ) -> None: ...


class QueryServicer(query_pb2_grpc.QueryServiceServicer):
    """Check, CheckMany and Watch over one :class:`Checker`."""

    def __init__(
        self,
        checker: Checker,
        *,
        max_questions: int = MAX_QUESTIONS,
        audit: QueryAudit | None = None,
    ) -> None:
        self.checker = checker
        self.max_questions = max_questions
        self.audit = audit

    async def _audit_checks(self, method: str, questions: Sequence[Question]) -> None:
        if self.audit is not None:
            peer = current_local_peer()
            await self.audit.checked(peer.role, peer.common_name, method, questions)

    async def Check(  # noqa: N802 - gRPC method name
        self, request: query_pb2.CheckRequest, context: Context
    ) -> query_pb2.CheckResponse:
        try:
            question = question_from_request(request)
            await self._audit_checks("Check", [question])
            answer = await self.checker.check(question)
        except _OURS as error:
            await abort_for(context, error)
        return response_from_answer(answer)

    async def CheckMany(  # noqa: N802 - gRPC method name
        self, request: query_pb2.CheckManyRequest, context: Context
    ) -> query_pb2.CheckManyResponse:
        try:
            if len(request.checks) > self.max_questions:
                raise BadQuestionError(
                    f"{len(request.checks)} questions in one call: at most {self.max_questions}"
                )
            questions = [question_from_request(q, n) for n, q in enumerate(request.checks)]
            await self._audit_checks("CheckMany", questions)
            answers = await self.checker.check_many(questions)
        except _OURS as error:
            await abort_for(context, error)
        return query_pb2.CheckManyResponse(responses=[response_from_answer(a) for a in answers])

    async def Watch(  # noqa: N802 - gRPC method name
        self, request: query_pb2.WatchRequest, context: Context
    ) -> AsyncIterator[query_pb2.WatchResponse]:
        after = request.after_sequence if request.HasField("after_sequence") else None
        try:
            filters = filter_from_request(request)
            if self.audit is not None:
                peer = current_local_peer()
                await self.audit.watched(peer.role, peer.common_name, filters, after)
            feed = await self.checker.start_watch(after, filters)
        except _OURS as error:
            await abort_for(context, error)
        # The starting point is fixed: initial metadata tells the client the stream is live.
        await context.send_initial_metadata(())
        # On cancellation (client gone, server stopping) CancelledError propagates as grpc.aio
        # expects, and ``aclosing`` closes the feed first: no connection is left open.
        try:
            async with aclosing(feed):
                async for change in feed:
                    # A client revoked while the stream is open receives nothing more.
                    recheck_peer()
                    yield response_from_change(change)
        except PeerRejectedError as refused:
            await context.abort(refused.status, refused.public)
        except _OURS as error:
            await abort_for(context, error)


__all__ = [
    "QueryAudit",
    "QueryServicer",
    "filter_from_request",
    "question_from_request",
    "response_from_answer",
    "response_from_change",
]


# --- the other direction: a CheckResponse back to the ``mragw check --json`` document --------
# Used by ``mragw check --target`` so that asking a running gateway prints exactly what asking
# the database directly prints.

_STATUS_NAME = {value: name for name, value in _STATUS.items()}
_CERTAINTY_NAME = {value: name for name, value in _CERTAINTY.items()}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _reason_json(reason: query_pb2.Reason) -> dict[str, Any]:
    return {
        "arrangement": reason.arrangement if reason.HasField("arrangement") else None,
        "code": reason.code,
        "detail": reason.detail,
    }


def _evidence_json(evidence: query_pb2.Evidence) -> dict[str, Any]:
    available = not evidence.unavailable
    return {
        "available": available,
        "log": evidence.log,
        "leaf_index": evidence.leaf_index,
        "entry": _b64(evidence.entry) if evidence.entry else None,
        "tree_size": evidence.inclusion_proof.tree_size if available else None,
        "inclusion_proof": [_b64(h) for h in evidence.inclusion_proof.hashes],
        "checkpoint": bytes(evidence.checkpoint.note).decode("utf-8") or None,
        "detail": evidence.unavailable or None,
    }


def _type_json(t: query_pb2.TypeAnswer) -> dict[str, Any]:
    has_record = t.HasField("status_date")
    return {
        "type": t.type,
        "status": _STATUS_NAME.get(t.status),
        "recognised": t.recognised,
        "arrangements": list(t.arrangements),
        "programme": t.programme or None,
        "reasons": [_reason_json(r) for r in t.reasons],
        "warnings": list(t.warnings),
        "certainty": _CERTAINTY_NAME.get(t.certainty),
        "evidence": _evidence_json(t.evidence) if t.HasField("evidence") else None,
        "authorisation": t.authorisation if has_record else None,
        "issuer": t.issuer if has_record else None,
        "status_date": t.status_date if has_record else None,
        "valid_from": t.valid_from if t.HasField("valid_from") else None,
        "valid_until": t.valid_until if t.HasField("valid_until") else None,
        "consent": t.consent if t.HasField("consent") else None,
        "log": t.log if has_record else None,
        "leaf_index": t.leaf_index if t.HasField("leaf_index") else None,
    }


def document_from_response(response: query_pb2.CheckResponse) -> dict[str, Any]:
    operator: dict[str, Any] | None = None
    if response.HasField("operator"):
        op = response.operator
        operator = {
            "operator_ids": [
                {"scheme": _SCHEME_NAME.get(i.scheme, "?"), "value": i.value}
                for i in op.operator_ids
            ],
            "name": op.name or None,
            "country": op.country or None,
            "issuer": op.issuer,
            "log": op.log,
            "authorisations": [
                {"issuer": a.issuer, "authorisation": a.authorisation, "type": a.type, "log": a.log}
                for a in op.authorisations
            ],
        }
    return {
        "recognised": response.recognised,
        "operator": operator,
        "issuer": response.issuer,
        "at": response.at,
        "reasons": [_reason_json(r) for r in response.reasons],
        "types": [_type_json(t) for t in response.types],
        "dataset": response.dataset,
    }
