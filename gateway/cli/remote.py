"""The CLI talking to a running gateway's admin listener (``--target``, health, live status).

The CLI presents the node's admin client certificate (made at init) over mTLS, like any other
local client; a gateway that cannot be reached is exit code 3.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway import codec
from gateway.errors import CheckFailedError, InputError, UnreachableError
from gateway.node import Node
from gateway.records import Record, RecordInputError
from gateway.server.runtime import read_runtime
from gateway.server.tls import local_channel
from gateway.status import metrics_url
from mra.v1 import admin_pb2, admin_pb2_grpc

if TYPE_CHECKING:
    from google.protobuf.message import Message
    from google.protobuf.timestamp_pb2 import Timestamp

    from gateway.audit import AuditCheck
    from gateway.evidence import EvidenceRequest
    from gateway.evidence_verify import EvidenceReport
    from gateway.keys import KeyInfo

RPC_TIMEOUT_S = 30.0
PUBLISH_BATCH = 500


def _target(node: Node, target: str | None) -> str | None:
    if target:
        return checked_target(target)
    info = read_runtime(node.config.home)
    return info.admin_target if info is not None else None


# What gRPC's C core says when the TLS handshake fails: the listener at the target is not this
# node's admin listener (another node's, a partner listener), or refused our certificate.
_HANDSHAKE_SIGNS = ("handshake", "certificate", "ssl", "tls")


def translate_rpc_error(error: grpc.aio.AioRpcError, target: str) -> Exception:
    code = error.code()
    details = error.details() or ""
    if code is grpc.StatusCode.UNAVAILABLE and any(
        sign in details.lower() for sign in _HANDSHAKE_SIGNS
    ):
        return UnreachableError(
            f"gateway at {target} is unreachable: the TLS handshake failed, so it is not the "
            f"admin listener of this node, or it does not accept this home's admin "
            f"certificate ({details})"
        )
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return UnreachableError(f"gateway at {target} is unreachable: {details}")
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return InputError(f"gateway at {target} refused this home's admin certificate: {details}")
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return InputError(
            f"gateway at {target} does not offer this call (an older version?): {details}"
        )
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return CheckFailedError(error.details() or code.name)
    return InputError(f"{code.name}: {error.details()}")


def checked_target(target: str) -> str:
    """``target`` when it is HOST:PORT with a port to dial; otherwise exit 2 naming it (gRPC
    would read "nonsense" as a host on port 443 and report it unreachable)."""
    from gateway.config import parse_hostport

    _host, port = parse_hostport(target, "--target")
    if port == 0:
        raise InputError(f"--target: {target!r}: port 0 cannot be dialled")
    return target


async def admin_rpc(node: Node, target: str, rpc: str, request: Message) -> Any:
    """Call one unary AdminService method of the gateway at ``target`` with this home's admin
    certificate; gRPC failures become our errors (unreachable: exit 3, refused: exit 2)."""
    async with local_channel(node, checked_target(target)) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        try:
            return await getattr(stub, rpc)(request, timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            raise translate_rpc_error(error, target) from error


async def admin_call(node: Node, target: str, rpc: str, **fields: Any) -> dict[str, Any]:
    request_type = getattr(admin_pb2, f"{rpc}Request")
    response = await admin_rpc(node, target, rpc, request_type(**fields))
    if hasattr(response, "partner") and response.HasField("partner"):
        return partner_json(response.partner)
    if isinstance(response, admin_pb2.ListPartnersResponse):
        return {"partners": [partner_json(p) for p in response.partners]}
    return dict(MessageToDict(response, preserving_proto_field_name=True))


def partner_json(message: admin_pb2.Partner) -> dict[str, Any]:
    """The same document ``partner list --json`` prints without ``--target``."""
    return {
        "admin": message.admin,
        "fingerprint": message.fingerprint,
        "endpoint": message.endpoint,
        "trust_version": int(message.trust_version),
        "trust_expires": message.trust_expires.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ"),
        "suspended": message.suspended,
        "quarantined": message.quarantined,
        "reason": message.reason if message.HasField("reason") else None,
    }


# -- the documents of the local commands, rebuilt from the replies (same JSON either way) --


async def remote_alerts(node: Node, target: str, *, include_cleared: bool) -> list[dict[str, Any]]:
    """``alerts list`` rows as :func:`gateway.alerts.alert_rows` gives them."""
    request = admin_pb2.ListAlertsRequest(include_cleared=include_cleared)
    response = await admin_rpc(node, target, "ListAlerts", request)
    return [
        {
            "id": int(r.id),
            "kind": r.alert.kind,
            "subject": r.alert.subject,
            "message": r.alert.message,
            "at": r.alert.at,
            "cleared": r.cleared,
        }
        for r in response.alerts
    ]


async def remote_clear_alerts(
    node: Node, target: str, *, alert_id: int | None, subject: str | None
) -> int:
    if (alert_id is None) == (subject is None):
        # The gateway says the same; refusing here spares a connection.
        raise InputError("give exactly one of an alert id or --subject")
    if alert_id is not None and not 0 <= alert_id < 2**63:
        raise InputError(f"no open alert {alert_id}")  # no row can have it (as on the home)
    request = (
        admin_pb2.ClearAlertsRequest(id=alert_id)
        if alert_id is not None
        else admin_pb2.ClearAlertsRequest(subject=subject or "")
    )
    response = await admin_rpc(node, target, "ClearAlerts", request)
    return int(response.cleared)


async def remote_audit(
    node: Node, target: str, *, last: int | None, operator: str | None
) -> tuple[list[dict[str, Any]], AuditCheck]:
    """``audit`` rows and chain verdict as :func:`gateway.audit.audit_listing` gives them."""
    from gateway.audit import AuditCheck

    request = admin_pb2.ListAuditRequest()
    if last is not None:
        # More than the field holds lists the whole trail, as --last does on the home.
        request.last = min(last, 2**32 - 1)
    if operator is not None:
        request.operator = operator
    response = await admin_rpc(node, target, "ListAudit", request)
    rows = [
        {
            "id": int(a.id),
            "at": a.at,
            "actor": a.actor,
            "action": a.action,
            "detail": json.loads(a.detail_json),
        }
        for a in response.actions
    ]
    chain = response.chain
    return rows, AuditCheck(
        rows=int(chain.rows),
        broken_at=int(chain.broken_at) if chain.HasField("broken_at") else None,
        problem=chain.problem if chain.HasField("problem") else None,
    )


def client_json(message: admin_pb2.LocalClient) -> dict[str, Any]:
    """The document of :meth:`gateway.clients.LocalClient.to_json`."""
    return {
        "name": message.name,
        "role": message.role,
        "state": message.state,
        "serial": message.serial,
        "fingerprint": message.fingerprint,
        "not_after": message.not_after,
        "added_at": message.added_at,
        "revoked_at": message.revoked_at if message.HasField("revoked_at") else None,
    }


async def remote_clients(node: Node, target: str) -> list[dict[str, Any]]:
    response = await admin_rpc(node, target, "ListClients", admin_pb2.ListClientsRequest())
    return [client_json(c) for c in response.clients]


async def remote_revoke_client(node: Node, target: str, name: str) -> dict[str, Any]:
    request = admin_pb2.RevokeClientRequest(name=name)
    response = await admin_rpc(node, target, "RevokeClient", request)
    return client_json(response.client)


_KEY_KINDS = {
    admin_pb2.KEY_ROLE_ROOT: "root",
    admin_pb2.KEY_ROLE_SIGNING: "signing",
    admin_pb2.KEY_ROLE_TLS_CA: "tls-ca",
}


async def remote_keys(node: Node, target: str) -> list[KeyInfo]:
    """The keys ``keys list`` shows: the reply's TLS server key is left out, as locally."""
    from gateway.keys import KeyInfo

    response = await admin_rpc(node, target, "ListKeys", admin_pb2.ListKeysRequest())

    def moment(stamp: Timestamp, present: bool) -> str | None:
        return stamp.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ") if present else None

    return [
        KeyInfo(
            kind=_KEY_KINDS[k.role],
            key_id=k.key_id,
            scheme=k.algorithm,
            state=k.state,
            valid_from=moment(k.not_before, k.HasField("not_before")),
            valid_until=moment(k.not_after, k.HasField("not_after")),
            revoked_at_index=(
                int(k.revoked_from_index) if k.HasField("revoked_from_index") else None
            ),
            reason=k.revocation_reason if k.HasField("revocation_reason") else None,
            private_key_here=k.private_key_present,
        )
        for k in response.keys
        if k.role in _KEY_KINDS
    ]


async def remote_trust(node: Node, target: str) -> dict[str, Any]:
    """The ``trust show`` document."""
    response = await admin_rpc(node, target, "GetTrust", admin_pb2.GetTrustRequest())
    return {
        "admin": response.admin,
        "trust_version": int(response.trust_version),
        "expires": response.expires,
        "root_key": response.root_key,
        "signing_keys": list(response.signing_keys),
        "expiry": {"state": response.expiry.state, "message": response.expiry.message},
    }


async def remote_use_dataset(node: Node, target: str, content: bytes, source: str) -> str:
    request = admin_pb2.UseDatasetRequest(content=content, source=source)
    response = await admin_rpc(node, target, "UseDataset", request)
    return str(response.dataset)


async def remote_republish(node: Node, target: str) -> int:
    request = admin_pb2.RepublishRecordsRequest()
    response = await admin_rpc(node, target, "RepublishRecords", request)
    return int(response.republished)


async def remote_evidence(
    node: Node, target: str, question: EvidenceRequest
) -> tuple[bytes, EvidenceReport, tuple[str, ...]]:
    """The bundle a running gateway built, verified again here against the roots it names:
    what is printed is what this verification proved (a bundle that does not verify is exit
    1, as when the home builds it)."""
    from gateway.evidence_verify import verify_evidence

    request = admin_pb2.GetEvidenceRequest(
        operator_id=question.operator, issuer=question.issuer, strict=question.strict
    )
    for field, value in (
        ("at", question.at),
        ("mode", question.mode),
        ("scheme", question.scheme),
        ("type", question.type),
    ):
        if value is not None:
            setattr(request, field, str(value))
    response = await admin_rpc(node, target, "GetEvidence", request)
    data = bytes(response.bundle)
    return data, verify_evidence(data, list(response.trusted_roots)), tuple(response.skipped)


def _publish_requests(records: Sequence[Record]) -> list[admin_pb2.PublishRequest]:
    requests: list[admin_pb2.PublishRequest] = []
    for start in range(0, len(records), PUBLISH_BATCH):
        request = admin_pb2.PublishRequest()
        for record in records[start : start + PUBLISH_BATCH]:
            # The gateway salts and signs; the salt sent here is ignored.
            message = codec.to_message(record, b"")
            if isinstance(record, codec.AeoStatusRecord):
                request.records.add(aeo_status=message)
            else:
                request.records.add(validation_outcome=message)
        requests.append(request)
    return requests


async def publish_remote(
    node: Node,
    target: str,
    records: Sequence[Record],
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """``progress`` is told the records of each batch gRPC takes (flow control paces it, so
    it follows the gateway's intake; the report comes when the gateway committed them all)."""
    requests = _publish_requests(records)
    checked_target(target)

    async def stream() -> Any:
        for request in requests:
            yield request
            if progress is not None:
                progress(len(request.records))

    async with local_channel(node, target) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        try:
            response = await stub.Publish(stream(), timeout=600)
        except grpc.aio.AioRpcError as error:
            raise translate_rpc_error(error, target) from error
    if response.errors:
        problems = [f"record {e.record}: {e.field}: {e.message}" for e in response.errors]
        raise RecordInputError(problems, "Publish")
    return {
        "appended": response.appended,
        "duplicates": response.duplicates,
        "tree_size": response.tree_size,
        "checkpoint": bytes(response.checkpoint.note).decode("utf-8"),
    }


async def running_status(node: Node, target: str | None) -> dict[str, Any] | None:
    """The status of a running gateway, or None when none is running (and no --target)."""
    where = _target(node, target)
    if where is None:
        return None
    async with local_channel(node, where) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        try:
            response = await stub.GetStatus(admin_pb2.GetStatusRequest(), timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            if target is None:
                return None  # a stale runtime file: report from the database instead
            raise translate_rpc_error(error, where) from error
    return {
        "admin": response.admin,
        "log_size": response.log_size,
        "partners": [
            {
                "admin": p.admin,
                "connected": p.connected,
                "entries": p.entries,
                "tree_size": p.tree_size,
                "checkpoint_age_s": p.checkpoint_age_s if p.HasField("checkpoint_age_s") else None,
                "quarantined": p.quarantined,
                "suspended": p.suspended,
                "reason": p.reason if p.HasField("reason") else None,
                "unverified": p.unverified,
                "witnesses": p.witnesses,
                "unusable": p.unusable,
                "trust": _trust(p.trust) if p.HasField("trust") else None,
                "trust_problem": p.trust_problem if p.HasField("trust_problem") else None,
                "lease_holder": p.lease_holder if p.HasField("lease_holder") else None,
            }
            for p in response.partners
        ],
        "log_witnesses": response.log_witnesses,
        "trust": _trust(response.trust),
        "alerts": [
            {"kind": a.kind, "subject": a.subject, "message": a.message, "at": a.at}
            for a in response.alerts
        ],
        "http_url": response.http_url or None,
        "metrics_url": metrics_url(response.http_url or None),
        "replicas": [
            {
                "name": r.name,
                "host": r.host,
                "pid": r.pid,
                "listen": r.listen,
                "admin_target": r.admin_target,
                "http_url": r.http_url,
                "started_at": r.started_at,
                "heartbeat_at": r.heartbeat_at,
                "alive": r.alive,
            }
            for r in response.replicas
        ],
        "leases": [
            {
                "name": lease.name,
                "holder": lease.holder if lease.HasField("holder") else None,
                "expires_at": lease.expires_at,
                "live": lease.live,
            }
            for lease in response.leases
        ],
        "replica": response.replica or None,
    }


def _trust(state: admin_pb2.TrustState) -> dict[str, Any]:
    return {
        "version": state.version,
        "expires": state.expires,
        "state": state.state,
        "message": state.message,
    }


async def probe_health(node: Node, target: str | None) -> tuple[bool, str]:
    where = _target(node, target)
    if where is None:
        return False, "no running gateway found (no runtime file; use --target)"
    async with local_channel(node, where) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        except grpc.aio.AioRpcError as error:
            return False, f"{error.code().name}: {error.details()}"
    serving = response.status == health_pb2.HealthCheckResponse.SERVING
    return serving, health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
