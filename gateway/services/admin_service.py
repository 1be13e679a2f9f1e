"""AdminService: the local admin servicer, thin over the domain functions the CLI also uses.

Every action is audited with the caller's identity, which comes from its client certificate
(``actor``, supplied by the server layer).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from cryptography.hazmat.primitives import hashes
from google.protobuf.timestamp_pb2 import Timestamp

from crypto.pki import load_certificate
from gateway import alerts, audit, clients, codec, keys, partners
from gateway.datasets import use_dataset
from gateway.errors import InputError
from gateway.evidence import EvidenceRequest, build_evidence
from gateway.issuer_log import IssuerLog, PublishResult
from gateway.node import Node
from gateway.records import Record, RecordInputError, record_from_mapping
from gateway.services.errors import guarded
from gateway.status import trust_state
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


_KEY_ROLES = {
    "root": admin_pb2.KEY_ROLE_ROOT,
    "signing": admin_pb2.KEY_ROLE_SIGNING,
    "tls-ca": admin_pb2.KEY_ROLE_TLS_CA,
}


def key_message(info: keys.KeyInfo) -> admin_pb2.Key:
    """One line of ``mragw keys list`` as a Key (times are whole seconds, as listed)."""
    message = admin_pb2.Key(
        key_id=info.key_id,
        role=_KEY_ROLES[info.kind],
        algorithm=info.scheme,
        private_key_present=info.private_key_here,
        state=info.state,
    )
    if info.valid_from is not None:
        message.not_before.CopyFrom(_timestamp(info.valid_from))
    if info.valid_until is not None:
        message.not_after.CopyFrom(_timestamp(info.valid_until))
    if info.revoked_at_index is not None:
        message.revoked_from_index = info.revoked_at_index
    if info.reason is not None:
        message.revocation_reason = info.reason
    return message


def alert_record(row: dict[str, Any]) -> admin_pb2.AlertRecord:
    """One row of :func:`gateway.alerts.alert_rows`."""
    return admin_pb2.AlertRecord(
        id=row["id"],
        alert=admin_pb2.Alert(
            kind=row["kind"], subject=row["subject"], message=row["message"], at=row["at"]
        ),
        cleared=row["cleared"],
    )


def client_message(client: clients.LocalClient) -> admin_pb2.LocalClient:
    """A local client as ``mragw clients list --json`` shows it (state as of now)."""
    shown = client.to_json()
    message = admin_pb2.LocalClient(
        name=shown["name"],
        role=shown["role"],
        state=shown["state"],
        serial=shown["serial"],
        fingerprint=shown["fingerprint"],
        not_after=shown["not_after"],
        added_at=shown["added_at"],
    )
    if shown["revoked_at"] is not None:
        message.revoked_at = shown["revoked_at"]
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
        # The keys `mragw keys list` shows (the same function), so both paths agree.
        infos = await guarded(context, lambda: keys.list_keys(self.node))
        listed = [key_message(info) for info in infos]
        # The TLS server certificate is not in the trust statement, but a caller checking
        # expiries wants it too.
        cert = load_certificate(self.node.tls_bytes("node.pem"))
        server = admin_pb2.Key(
            key_id=cert.fingerprint(hashes.SHA256()).hex(),
            role=admin_pb2.KEY_ROLE_TLS_SERVER,
            algorithm="ecdsa-p256",
            private_key_present=self.node.paths.tls_file("node.key").exists(),
        )
        server.not_before.FromDatetime(cert.not_valid_before_utc)
        server.not_after.FromDatetime(cert.not_valid_after_utc)
        return admin_pb2.ListKeysResponse(keys=[*listed, server])

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
            replicas=[admin_pb2.Replica(**r) for r in report.get("replicas", [])],
            leases=[
                admin_pb2.Lease(
                    name=lease["name"],
                    expires_at=lease["expires_at"],
                    live=lease["live"],
                    **({"holder": lease["holder"]} if lease["holder"] is not None else {}),
                )
                for lease in report.get("leases", [])
            ],
            replica=report.get("replica") or "",
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
            if p.get("lease_holder") is not None:
                item.lease_holder = p["lease_holder"]
        return response

    async def ListAlerts(  # noqa: N802
        self, request: admin_pb2.ListAlertsRequest, context: Context
    ) -> admin_pb2.ListAlertsResponse:
        await self.actor(context)
        found = await guarded(
            context,
            lambda: alerts.list_alerts(self.node, include_cleared=request.include_cleared),
        )
        return admin_pb2.ListAlertsResponse(alerts=[alert_record(a) for a in found])

    async def ClearAlerts(  # noqa: N802
        self, request: admin_pb2.ClearAlertsRequest, context: Context
    ) -> admin_pb2.ClearAlertsResponse:
        actor = await self.actor(context)
        which = request.WhichOneof("selector")
        cleared = await guarded(
            context,
            lambda: alerts.clear_alerts(
                self.node,
                alert_id=int(request.id) if which == "id" else None,
                subject=request.subject if which == "subject" else None,
                actor=actor,
            ),
        )
        return admin_pb2.ClearAlertsResponse(cleared=cleared)

    async def ListAudit(  # noqa: N802
        self, request: admin_pb2.ListAuditRequest, context: Context
    ) -> admin_pb2.ListAuditResponse:
        await self.actor(context)
        last = request.last if request.HasField("last") else None
        operator = request.operator if request.HasField("operator") else None

        async def listing() -> tuple[list[dict[str, Any]], audit.AuditCheck]:
            if last is not None and last < 1:
                raise InputError(f"last: {last}: list at least 1 action")
            return await audit.audit_listing(self.node, last=last, operator=operator)

        rows, chain = await guarded(context, listing)
        verdict = admin_pb2.AuditChain(intact=chain.ok, rows=chain.rows)
        if chain.broken_at is not None:
            verdict.broken_at = chain.broken_at
        if chain.problem is not None:
            verdict.problem = chain.problem
        return admin_pb2.ListAuditResponse(
            actions=[
                admin_pb2.AuditAction(
                    id=r["id"],
                    at=r["at"],
                    actor=r["actor"],
                    action=r["action"],
                    # JSON of the value the CLI prints, so the client prints exactly it.
                    detail_json=json.dumps(r["detail"], ensure_ascii=False),
                )
                for r in rows
            ],
            chain=verdict,
        )

    async def ListClients(  # noqa: N802
        self, request: admin_pb2.ListClientsRequest, context: Context
    ) -> admin_pb2.ListClientsResponse:
        await self.actor(context)
        found = await guarded(context, lambda: clients.list_clients(self.node))
        return admin_pb2.ListClientsResponse(clients=[client_message(c) for c in found])

    async def RevokeClient(  # noqa: N802
        self, request: admin_pb2.RevokeClientRequest, context: Context
    ) -> admin_pb2.RevokeClientResponse:
        actor = await self.actor(context)
        client = await guarded(
            context, lambda: clients.revoke_client(self.node, request.name, actor=actor)
        )
        return admin_pb2.RevokeClientResponse(client=client_message(client))

    async def UseDataset(  # noqa: N802
        self, request: admin_pb2.UseDatasetRequest, context: Context
    ) -> admin_pb2.UseDatasetResponse:
        actor = await self.actor(context)

        async def use() -> str:
            async with self.node.engine.begin() as conn:
                return await use_dataset(conn, request.content, request.source, actor=actor)

        version = await guarded(context, use)
        return admin_pb2.UseDatasetResponse(dataset=version)

    async def GetTrust(  # noqa: N802
        self, request: admin_pb2.GetTrustRequest, context: Context
    ) -> admin_pb2.GetTrustResponse:
        await self.actor(context)
        async with self.node.engine.connect() as conn:
            statement = await self.node.trust_statement(conn)
        return admin_pb2.GetTrustResponse(
            admin=statement.admin,
            trust_version=statement.version,
            expires=statement.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            root_key=statement.root_fingerprint,
            signing_keys=[k.key_id for k in statement.signing_keys],
            expiry=admin_pb2.TrustState(**trust_state(self.node, statement)),
        )

    async def RepublishRecords(  # noqa: N802
        self, request: admin_pb2.RepublishRecordsRequest, context: Context
    ) -> admin_pb2.RepublishRecordsResponse:
        actor = await self.actor(context)
        count = await guarded(context, lambda: keys.republish(self.node, actor=actor))
        if count and self.on_publish is not None:
            await self.on_publish()  # new entries: wake subscribers as Publish does
        return admin_pb2.RepublishRecordsResponse(republished=count)

    async def GetEvidence(  # noqa: N802
        self, request: admin_pb2.GetEvidenceRequest, context: Context
    ) -> admin_pb2.GetEvidenceResponse:
        await self.actor(context)
        question = EvidenceRequest(
            operator=request.operator_id,
            issuer=request.issuer,
            at=request.at if request.HasField("at") else None,
            mode=request.mode if request.HasField("mode") else None,
            scheme=request.scheme if request.HasField("scheme") else None,
            type=request.type if request.HasField("type") else None,
            strict=request.strict,
        )
        produced = await guarded(context, lambda: build_evidence(self.node, question))
        report = produced.report
        # The anchors it was verified against here, so the client can verify it again (the
        # CLI prints what its own verification proves, exactly as on the home).
        roots = {report.issuer_root} | {w.root_fingerprint for w in report.witnesses if w.verified}
        return admin_pb2.GetEvidenceResponse(
            bundle=produced.data, trusted_roots=sorted(roots), skipped=list(produced.skipped)
        )


__all__ = ["AdminServicer", "records_from_requests"]
