"""AdminService: the local admin servicer, thin over the domain functions the CLI also uses.

Every action is audited with the caller's identity, which comes from its client certificate
(``actor``, supplied by the server layer).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from cryptography.hazmat.primitives import hashes
from google.protobuf.timestamp_pb2 import Timestamp

from crypto.pki import load_certificate
from gateway import codec, partners
from gateway.issuer_log import IssuerLog, PublishResult
from gateway.node import Node
from gateway.records import Record, RecordInputError, record_from_mapping
from gateway.services.errors import guarded
from mra.v1 import admin_pb2, admin_pb2_grpc, log_pb2

Context = grpc.aio.ServicerContext[Any, Any]
Actor = Callable[[Context], Awaitable[str]]
StatusSource = Callable[[], Awaitable[dict[str, Any]]]


def _timestamp(text: str) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC))
    return stamp


def partner_message(info: partners.PartnerInfo) -> admin_pb2.Partner:
    message = admin_pb2.Partner(
        admin=info.code,
        fingerprint=info.fingerprint,
        endpoint=info.endpoint,
        trust_version=info.trust_version,
        trust_expires=_timestamp(info.trust_expires),
        suspended=info.suspended,
        quarantined=info.quarantined,
    )
    if info.reason is not None:
        message.reason = info.reason
    return message


def records_from_requests(
    requests: list[admin_pb2.PublishRequest], limit: int
) -> tuple[list[Record], list[admin_pb2.RecordError]]:
    """Validate every record of a Publish stream; errors name the record's position."""
    out: list[Record] = []
    errors: list[admin_pb2.RecordError] = []
    position = 0
    for request in requests:
        for item in request.records:
            position += 1
            if position > limit:
                errors.append(
                    admin_pb2.RecordError(
                        record=position, field="", message=f"more than {limit} records"
                    )
                )
                return out, errors
            kind = item.WhichOneof("record")
            if kind is None:
                errors.append(
                    admin_pb2.RecordError(record=position, field="record", message="empty record")
                )
                continue
            message = getattr(item, kind)
            problems: list[str] = []
            record = record_from_mapping(
                codec.message_mapping(message, kind), f"record {position}", problems
            )
            if record is None:
                errors.extend(_record_error(position, p) for p in problems)
            else:
                out.append(record)
    return out, errors


def _position(problem: str) -> int:
    """The record number in a problem that starts "<source> record N: ..."."""
    head = problem.split(":", 1)[0].rsplit(" ", 1)[-1]
    return int(head) if head.isdigit() else 0


def _record_error(position: int, problem: str) -> admin_pb2.RecordError:
    # Problems read "<where>: <field>: <message>".
    _, _, rest = problem.partition(": ")
    field, _, message = rest.partition(": ")
    return admin_pb2.RecordError(record=position, field=field, message=message or rest)


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        node: Node,
        actor: Actor,
        status: StatusSource,
        on_publish: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.node = node
        self.actor = actor
        self.status_source = status
        self.on_publish = on_publish

    async def Publish(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[admin_pb2.PublishRequest], context: Context
    ) -> admin_pb2.PublishResponse:
        actor = await self.actor(context)
        requests = [r async for r in request_iterator]
        records, errors = records_from_requests(
            requests, self.node.config.limits.max_publish_records
        )
        if errors:
            return admin_pb2.PublishResponse(errors=errors)
        if not records:
            return admin_pb2.PublishResponse(
                errors=[admin_pb2.RecordError(record=0, field="", message="no records")]
            )

        async def publish() -> PublishResult | RecordInputError:
            try:
                return await IssuerLog(self.node).publish(records, actor=actor, source="Publish")
            except RecordInputError as error:
                # Refused records (issuer, type) are an answer, like validation errors above.
                return error

        result = await guarded(context, publish)
        if isinstance(result, RecordInputError):
            return admin_pb2.PublishResponse(
                errors=[_record_error(_position(p), p) for p in result.problems]
            )
        if self.on_publish is not None:
            await self.on_publish()
        return admin_pb2.PublishResponse(
            appended=result.appended,
            duplicates=result.duplicates,
            tree_size=result.tree_size,
            checkpoint=log_pb2.Checkpoint(note=result.checkpoint.encode("utf-8")),
        )

    async def AddPartner(  # noqa: N802
        self, request: admin_pb2.AddPartnerRequest, context: Context
    ) -> admin_pb2.AddPartnerResponse:
        actor = await self.actor(context)
        info = await guarded(
            context,
            lambda: partners.add_partner(
                self.node, bytes(request.bundle), request.fingerprint, actor=actor
            ),
        )
        return admin_pb2.AddPartnerResponse(partner=partner_message(info))

    async def ListPartners(  # noqa: N802
        self, request: admin_pb2.ListPartnersRequest, context: Context
    ) -> admin_pb2.ListPartnersResponse:
        await self.actor(context)
        infos = await guarded(context, lambda: partners.list_partners(self.node))
        return admin_pb2.ListPartnersResponse(partners=[partner_message(i) for i in infos])

    async def _one(self, code: str, context: Context) -> admin_pb2.Partner:
        infos = await guarded(context, lambda: partners.list_partners(self.node))
        for info in infos:
            if info.code == code:
                return partner_message(info)
        await context.abort(grpc.StatusCode.NOT_FOUND, f"partner {code!r} is not pinned here")
        raise AssertionError("unreachable")  # pragma: no cover

    async def RemovePartner(  # noqa: N802
        self, request: admin_pb2.RemovePartnerRequest, context: Context
    ) -> admin_pb2.RemovePartnerResponse:
        actor = await self.actor(context)
        await guarded(
            context, lambda: partners.remove_partner(self.node, request.admin, actor=actor)
        )
        return admin_pb2.RemovePartnerResponse()

    async def SuspendPartner(  # noqa: N802
        self, request: admin_pb2.SuspendPartnerRequest, context: Context
    ) -> admin_pb2.SuspendPartnerResponse:
        actor = await self.actor(context)
        await guarded(
            context,
            lambda: partners.suspend_partner(
                self.node, request.admin, actor=actor, reason=request.reason
            ),
        )
        return admin_pb2.SuspendPartnerResponse(partner=await self._one(request.admin, context))

    async def ResumePartner(  # noqa: N802
        self, request: admin_pb2.ResumePartnerRequest, context: Context
    ) -> admin_pb2.ResumePartnerResponse:
        actor = await self.actor(context)
        await guarded(
            context, lambda: partners.resume_partner(self.node, request.admin, actor=actor)
        )
        return admin_pb2.ResumePartnerResponse(partner=await self._one(request.admin, context))

    async def SetPartnerEndpoint(  # noqa: N802
        self, request: admin_pb2.SetPartnerEndpointRequest, context: Context
    ) -> admin_pb2.SetPartnerEndpointResponse:
        actor = await self.actor(context)
        await guarded(
            context,
            lambda: partners.set_endpoint(self.node, request.admin, request.endpoint, actor=actor),
        )
        return admin_pb2.SetPartnerEndpointResponse(partner=await self._one(request.admin, context))

    async def ListKeys(  # noqa: N802
        self, request: admin_pb2.ListKeysRequest, context: Context
    ) -> admin_pb2.ListKeysResponse:
        await self.actor(context)
        async with self.node.engine.connect() as conn:
            statement = await self.node.trust_statement(conn)
        keys = [
            admin_pb2.Key(
                key_id=statement.root_key.key_id,
                role=admin_pb2.KEY_ROLE_ROOT,
                algorithm=statement.root_key.scheme.value,
                private_key_present=self.node.paths.root_key.exists(),
            )
        ]
        for key in statement.signing_keys:
            message = admin_pb2.Key(
                key_id=key.key_id,
                role=admin_pb2.KEY_ROLE_SIGNING,
                algorithm=key.public_key.scheme.value,
                private_key_present=self.node.paths.signing_key(key.key_id).exists(),
            )
            message.not_before.FromDatetime(key.valid_from)
            if key.valid_until is not None:
                message.not_after.FromDatetime(key.valid_until)
            if key.revoked_at_index is not None:
                message.revoked_from_index = key.revoked_at_index
            keys.append(message)
        for name, role in (
            ("ca", admin_pb2.KEY_ROLE_TLS_CA),
            ("node", admin_pb2.KEY_ROLE_TLS_SERVER),
        ):
            cert = load_certificate(self.node.tls_bytes(f"{name}.pem"))
            message = admin_pb2.Key(
                key_id=cert.fingerprint(hashes.SHA256()).hex(),
                role=role,
                algorithm="ecdsa-p256",
                private_key_present=self.node.paths.tls_file(f"{name}.key").exists(),
            )
            message.not_before.FromDatetime(cert.not_valid_before_utc)
            message.not_after.FromDatetime(cert.not_valid_after_utc)
            keys.append(message)
        return admin_pb2.ListKeysResponse(keys=keys)

    async def GetStatus(  # noqa: N802
        self, request: admin_pb2.GetStatusRequest, context: Context
    ) -> admin_pb2.GetStatusResponse:
        await self.actor(context)
        report = await self.status_source()
        response = admin_pb2.GetStatusResponse(
            admin=report["admin"],
            log_size=report["log_size"],
            http_url=report.get("http_url") or "",
            log_witnesses=report.get("log_witnesses", 0),
            trust=admin_pb2.TrustState(**report["trust"]),
            alerts=[admin_pb2.Alert(**a) for a in report.get("alerts", [])],
        )
        for p in report["partners"]:
            item = response.partners.add(
                admin=p["admin"],
                connected=p["connected"],
                entries=p["entries"],
                tree_size=p["tree_size"],
                quarantined=p["quarantined"],
                suspended=p["suspended"],
                unverified=p.get("unverified", 0),
                witnesses=p.get("witnesses", 0),
                unusable=p.get("unusable", 0),
            )
            if p.get("trust") is not None:
                item.trust.CopyFrom(admin_pb2.TrustState(**p["trust"]))
            if p.get("trust_problem") is not None:
                item.trust_problem = p["trust_problem"]
            if p["checkpoint_age_s"] is not None:
                item.checkpoint_age_s = p["checkpoint_age_s"]
            if p["reason"] is not None:
                item.reason = p["reason"]
        return response


__all__ = ["AdminServicer", "records_from_requests"]
