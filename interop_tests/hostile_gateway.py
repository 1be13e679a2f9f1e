"""A test build of a hostile EU gateway, runnable on EU's own host::

    python -m interop_tests.hostile_gateway --home EU_HOME --listen ADDR:PORT \\
        --mode forged-entry|fork|edited-entry [--partner JP]

It opens EU's real home (its node key and certificate, its signing keys, its published log)
and serves ``mra.v1.ExchangeService`` over valid mTLS, admitting the CAs of the partners EU
pinned. Every stream starts with EU's genuine head (a heartbeat at the partner's cursor), then
one hostile batch:

- ``forged-entry``: a new entry EU never signed (its record signature does not verify),
  inside a tree whose checkpoint is validly signed with EU's real checkpoint key;
- ``fork``: a second checkpoint for the size the partner already verified, validly signed
  with EU's real key, over a different history (one entry replaced by a re-signed one);
- ``edited-entry``: a new, genuinely signed entry covered by a genuinely signed checkpoint,
  whose bytes are edited after signing (the operator's name changed) before sending.

The fake log, servicer and handler are those of the in-process hostile-partner tests
(``tests/gateway/test_hostile_partner.py``); this module only loads a real home into them.
Prints ``listening ADDR:PORT`` on stdout when serving; runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from sqlalchemy import select

from crypto.keys import PrivateKeySigner
from gateway.issuer_log import prepare
from gateway.node import Node
from gateway.records import Record, parse_records
from gateway.storage.schema import entitlements, entries, partners
from interop_tests import records as rec
from mra.v1 import envelope_pb2, exchange_pb2
from tests.gateway.test_hostile_partner import (
    FakeLog,
    HostileExchange,
    Outgoing,
    exchange_handler,
)

# Servicer method names are fixed by the generated interface.
# ruff: noqa: N802

# What the hostile batches claim (the interop test checks none of it is ever usable).
FORGED_OPERATOR = "DE9999999000001"
EDITED_OPERATOR = "DE9999999000002"
HONEST_NAME = b"Honest Trading GmbH"
EDITED_NAME = b"Forged Trading GmbH"


@dataclass
class Honest:
    """EU's genuine log as its home holds it, and EU's real signing keys."""

    node: Node
    log: FakeLog
    entry_signer: PrivateKeySigner
    partner_cas: list[bytes]

    @property
    def size(self) -> int:
        return self.log.size


def _record(row: dict[str, Any]) -> Record:
    data = (json.dumps(row) + "\n").encode()
    return parse_records(data, source="hostile.jsonl")[0]


def _new_envelope(h: Honest, operator: str, name: str = "") -> bytes:
    """A record EU never published, signed with EU's real entry key."""
    row = rec.aeo_status(
        "DE", "EORI", operator, f"DEAEOF{operator[-7:]}", "AEOF", name=name, since="2021-05-01"
    )
    return prepare(_record(row), h.entry_signer).envelope


def forged_entry(h: Honest) -> list[Outgoing]:
    genuine = envelope_pb2.Envelope.FromString(_new_envelope(h, FORGED_OPERATOR))
    sig = genuine.signatures[0].sig
    genuine.signatures[0].sig = sig[:5] + bytes([sig[5] ^ 0x01]) + sig[6:]
    forged = genuine.SerializeToString()
    # The tree (and EU's real checkpoint over it) includes the forged entry.
    h.log.items.append((forged, True))
    return [h.log.batch(h.size - 1, h.size)]


def fork(h: Honest) -> list[Outgoing]:
    size = h.size
    other = FakeLog(h.log.origin, h.log.signer, list(h.log.items))
    victim = size // 2
    other.items[victim] = (_new_envelope(h, FORGED_OPERATOR), True)
    # EU's real key signs a second root for the size the partner has verified.
    return [h.log.batch(size, size, size, note=other.note(size))]


def edited_entry(h: Honest) -> list[Outgoing]:
    envelope = _new_envelope(h, EDITED_OPERATOR, name=HONEST_NAME.decode())
    if envelope.count(HONEST_NAME) != 1:
        raise RuntimeError("the operator name is not in the envelope as plain bytes")
    h.log.items.append((envelope, True))
    message = h.log.batch(h.size - 1, h.size)
    entry = message.batch.entries[0]
    entry.envelope = bytes(entry.envelope).replace(HONEST_NAME, EDITED_NAME)
    return [message]


MODES: dict[str, Callable[[Honest], list[Outgoing]]] = {
    "forged-entry": forged_entry,
    "fork": fork,
    "edited-entry": edited_entry,
}


class PerStreamHostile(HostileExchange):
    """Each stream is a fresh :class:`HostileExchange` (honest up to EU's genuine size, then
    the hostile batch), so a reconnecting partner meets the same attack again."""

    def __init__(self, log: FakeLog, honest_size: int, attack: list[Outgoing]) -> None:
        super().__init__(log)
        self.honest_size = honest_size
        self.attack = attack

    async def Subscribe(  # type: ignore[override]  # raw bytes pass through, as upstream
        self,
        request: exchange_pb2.SubscribeRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[Outgoing]:
        # Only the methods ``exchange_handler`` serves are implemented (as upstream).
        stream = HostileExchange(self.log)  # type: ignore[abstract]
        stream.honest_size = self.honest_size
        for message in self.attack:
            stream.queue.put_nowait(message)
        self.open_streams += 1
        print(
            f"hostile: stream {self.open_streams} from index {request.from_index}",
            file=sys.stderr,
            flush=True,
        )
        try:
            async for message in stream.Subscribe(request, context):
                yield message
        finally:
            self.closed_streams += 1
            print(f"hostile: stream {self.open_streams} closed", file=sys.stderr, flush=True)


async def load_honest(home: Path, partner: str) -> Honest:
    node = Node.open(home)
    async with node.engine.connect() as conn:
        checkpoint_signer, entry_signer = await node.active_signers(conn)
        rows = (
            await conn.execute(
                select(entries.c.idx, entries.c.envelope)
                .where(entries.c.log == node.admin)
                .order_by(entries.c.idx)
            )
        ).all()
        visible = set(
            (
                await conn.execute(
                    select(entitlements.c.idx).where(entitlements.c.partner == partner)
                )
            ).scalars()
        )
        cas = [
            str(pem).encode() for pem in (await conn.execute(select(partners.c.ca_pem))).scalars()
        ]
    log = FakeLog(node.origin, checkpoint_signer)
    log.items = [(bytes(r.envelope), int(r.idx) in visible) for r in rows]
    return Honest(node, log, entry_signer, cas)


async def serve(home: Path, listen: str, mode: str, partner: str) -> None:
    honest = await load_honest(home, partner)
    size = honest.size
    attack = MODES[mode](honest)
    servicer = PerStreamHostile(honest.log, size, attack)  # type: ignore[abstract]
    node = honest.node
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((exchange_handler(servicer),))
    port = server.add_secure_port(
        listen,
        grpc.ssl_server_credentials(
            [(node.tls_private_key_pem("node"), node.tls_bytes("node.pem"))],
            root_certificates=b"".join(honest.partner_cas),
            require_client_auth=True,
        ),
    )
    if port == 0:
        raise RuntimeError(f"cannot listen on {listen}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"hostile {node.admin} gateway, mode {mode}: genuine log of {size} entries, "
        f"hostile batch of {len(attack)} message(s)",
        file=sys.stderr,
        flush=True,
    )
    host = listen.rpartition(":")[0]
    print(f"listening {host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop(0)
        await node.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m interop_tests.hostile_gateway", description=__doc__
    )
    parser.add_argument("--home", type=Path, required=True, help="EU's real home directory")
    parser.add_argument("--listen", required=True, help="ADDR:PORT (EU's partner address)")
    parser.add_argument("--mode", choices=sorted(MODES), required=True)
    parser.add_argument("--partner", default="JP", help="whose entitlements decide visibility")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.home, args.listen, args.mode, args.partner.upper()))


if __name__ == "__main__":
    main()
