"""Helpers for bench/bench_gateway.py: realistic records, node homes, onboarding, RSS.

Kept apart from the benchmark script so the child processes it starts (the catch-up sink) and
the script share the same data generator and setup code. Not a test, not product code.
"""

from __future__ import annotations

import random
import string
from datetime import date, timedelta
from pathlib import Path

from gateway.node import Node, initialise_node
from gateway.partners import add_partner, export_bundle
from gateway.records import AeoStatusRecord, OperatorId

#: EU member states on every date the generator uses (2014-01-01 onwards; HR joined 2013-07-01).
MEMBER_STATES = ("DE", "FR", "NL", "IT", "ES", "BE", "PL", "AT", "SE", "IE", "HR", "CZ")
#: Weights of the states above, roughly the shape of the EU's AEO population.
MEMBER_WEIGHTS = (32, 10, 9, 9, 7, 5, 5, 4, 4, 3, 1, 3)
#: EU AEO types: AEOF is the most common authorisation, AEOS the rarest.
TYPES = ("AEOF", "AEOC", "AEOS")
TYPE_WEIGHTS = (55, 38, 7)
_WORDS = (
    "Rhein",
    "Logistik",
    "Transport",
    "Spedition",
    "Hafen",
    "Maritime",
    "Cargo",
    "Freight",
    "Industrie",
    "Handel",
    "Precision",
    "Chemicals",
    "Textiles",
    "Foods",
    "Trading",
    "Global",
    "Nord",
    "Sud",
    "Euro",
    "Atlantic",
    "Baltic",
    "Alpine",
    "Danube",
    "Iberia",
    "Forwarding",
)
_FORMS = ("GmbH", "AG", "SA", "SAS", "BV", "NV", "SpA", "Srl", "SL", "sp. z o.o.", "AB", "Ltd")

EU_EPOCH = date(2014, 1, 1)


_STATE_TABLE = tuple(
    s for s, w in zip(MEMBER_STATES, MEMBER_WEIGHTS, strict=True) for _ in range(w)
)


def state_of(n: int) -> str:
    """The member state of record ``n`` (a fixed function of ``n``, weighted as above)."""
    return _STATE_TABLE[(n * 2654435761) % len(_STATE_TABLE)]


def eori_of(n: int) -> str:
    """The EORI of record ``n`` (without generating the record)."""
    return f"{state_of(n)}{n:012d}"


def eu_record(n: int, rng: random.Random) -> AeoStatusRecord:
    """The ``n``-th synthetic EU AEO status record: one authorisation per ``n``."""
    state = state_of(n)
    aeo_type = rng.choices(TYPES, TYPE_WEIGHTS)[0]
    since = EU_EPOCH + timedelta(days=rng.randint(0, 11 * 365))
    # 1 in 20 records is a later status change (suspension or revocation) of an authorisation.
    status = "ACTIVE" if rng.random() >= 0.05 else rng.choice(("SUSPENDED", "REVOKED"))
    valid_until = since + timedelta(days=400) if status == "REVOKED" else None
    name = (
        f"{rng.choice(_WORDS)} {rng.choice(_WORDS)} "
        f"{''.join(rng.choices(string.ascii_uppercase, k=3))} {rng.choice(_FORMS)}"
    )
    eori = eori_of(n)
    return AeoStatusRecord(
        issuer=state,
        operator_ids=(OperatorId("EORI", eori),),
        name=name,
        country=state,
        authorisation=f"{state}{aeo_type}{n:08d}",
        aeo_type=aeo_type,
        status=status,
        status_date=since,
        valid_from=since,
        valid_until=valid_until,
        last_validation=since - timedelta(days=rng.randint(10, 60)),
        consent=rng.random() < 0.9,
        audience=(),
    )


def eu_records(start: int, count: int, seed: int = 7) -> list[AeoStatusRecord]:
    """Records ``start`` .. ``start + count - 1`` (deterministic for the same start and count)."""
    rng = random.Random(seed * 1_000_003 + start)
    return [eu_record(n, rng) for n in range(start, start + count)]


async def make_node(home: Path, admin: str) -> Node:
    """A fresh node home (keys, certificates, SQLite database) listening on loopback port 0."""
    config = await initialise_node(
        admin=admin,
        home=home,
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        db_url="",
    )
    return Node(config)


async def pin(node: Node, partner: Node) -> None:
    """``node`` pins ``partner`` from its exported bundle and fingerprint."""
    bundle, fingerprint = await export_bundle(partner)
    await add_partner(node, bundle, fingerprint, actor="bench")


def read_rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in kB from /proc."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm
