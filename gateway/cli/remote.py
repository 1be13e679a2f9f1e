"""The CLI talking to a running gateway's admin listener (``--target``, health, live status).

The CLI presents the node's admin client certificate (made at init) over mTLS, like any other
local client; a gateway that cannot be reached is exit code 3.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

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

RPC_TIMEOUT_S = 30.0
PUBLISH_BATCH = 500


def _target(node: Node, target: str | None) -> str | None:
    if target:
        return target
    info = read_runtime(node.config.home)
    return info.admin_target if info is not None else None


def translate_rpc_error(error: grpc.aio.AioRpcError, target: str) -> Exception:
    code = error.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return UnreachableError(f"gateway at {target} is unreachable: {error.details()}")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return CheckFailedError(error.details() or code.name)
    return InputError(f"{code.name}: {error.details()}")


async def admin_call(node: Node, target: str, rpc: str, **fields: Any) -> dict[str, Any]:
    request_type = getattr(admin_pb2, f"{rpc}Request")
    async with local_channel(node, target) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        try:
            response = await getattr(stub, rpc)(request_type(**fields), timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            raise translate_rpc_error(error, target) from error
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
