"""Pinning partners: a re-added bundle may only extend the chain already pinned."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from gateway.node import Node, initialise_node
from gateway.partners import add_partner, export_bundle, list_partners
from gateway.trust import TrustError, bundle_bytes, parse_bundle, sign_statement


async def make(tmp_path: Path, admin: str, port: int) -> Node:
    home = tmp_path / admin.lower()
    await initialise_node(
        admin=admin,
        home=home,
        listen=f"127.0.0.1:{port}",
        admin_listen=f"127.0.0.1:{port + 1}",
        http_listen="127.0.0.1:0",
        db_url="",
    )
    return Node.open(home, {})


async def test_a_re_added_bundle_must_extend_the_pinned_chain(tmp_path: Path) -> None:
    eu = await make(tmp_path, "EU", 17100)
    jp = await make(tmp_path, "JP", 17110)
    try:
        v1_bundle, fingerprint = await export_bundle(eu)
        (v1,) = parse_bundle(v1_bundle)
        async with eu.engine.connect() as conn:
            current = await eu.trust_statement(conn)
        v2 = sign_statement(
            dataclasses.replace(
                current,
                version=2,
                endpoint="eu2.example:7443",
                issued=current.issued + dt.timedelta(seconds=1),
            ),
            [eu.root_signer()],
        )
        await add_partner(jp, bundle_bytes([v1, v2]), fingerprint, actor="test")
        assert [p.trust_version for p in await list_partners(jp)] == [2]
        # An older chain would bring back what version 2 changed: refused, nothing stored.
        with pytest.raises(TrustError, match="older than the pinned version 2"):
            await add_partner(jp, v1_bundle, fingerprint, actor="test")
        # A different version 2 (same root, another history) does not extend the pinned chain.
        other_v2 = sign_statement(
            dataclasses.replace(current, version=2, endpoint="elsewhere.example:7443"),
            [eu.root_signer()],
        )
        with pytest.raises(TrustError, match="does not extend"):
            await add_partner(jp, bundle_bytes([v1, other_v2]), fingerprint, actor="test")
        (pinned,) = await list_partners(jp)
        assert pinned.trust_version == 2
        # The same chain again is accepted (idempotent).
        await add_partner(jp, bundle_bytes([v1, v2]), fingerprint, actor="test")
    finally:
        await eu.close()
        await jp.close()
