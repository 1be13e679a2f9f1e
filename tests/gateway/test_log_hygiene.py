"""Structured logs: the JSON and text formats, the per-call and per-partner context, the trace
id rule, and hygiene -- no private key, record body or envelope ever reaches a log line.

The end-to-end case runs two real gateways (EU, JP) over mTLS on a real SQLite file and a
real PostgreSQL database with every logger of ours at DEBUG in JSON, makes them publish,
replicate, rotate a signing key and refuse bad calls, then reads every line it captured.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from sqlalchemy import select
from typer.testing import CliRunner

from gateway import keys, logs
from gateway.cli.main import app
from gateway.server.runtime import read_runtime
from gateway.server.tls import local_channel, mtls_channel, partner_channel
from gateway.signatures import parse_envelope
from gateway.storage.schema import entries, partners
from mra.v1 import exchange_pb2, exchange_pb2_grpc
from tests.gateway.nodes import Cluster, bulk_records, cluster_of, eventually, log_head

# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Our loggers at DEBUG, in JSON, into a string; logging restored afterwards."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved_root = root.level
    saved = {name: logging.getLogger(name).level for name in logs.OWN_LOGGERS}
    handler = logs.configure("json", "debug", stream)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_root)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        document = json.loads(line)  # every line is one JSON object
        assert isinstance(document, dict), (number, line)
        for field in ("ts", "level", "logger", "msg"):
            assert field in document, (number, line)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", document["ts"]), line
        out.append(document)
    return out


# -- unit: trace ids -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["0af7651916cd43dd8448eb211c80319c", "req-2026.11.28_0001", "A" * 64, "abcdefgh"],
)
def test_a_well_formed_trace_id_is_kept(value: str) -> None:
    assert logs.accepted_trace_id(value) == value
    assert logs.accepted_trace_id(value.encode()) == value
    assert logs.trace_id_from([("other", "x"), ("x-trace-id", value)]) == value


@pytest.mark.parametrize(
    "value",
    [
        "short",  # under 8 characters
        "A" * 65,  # over 64
        "has space inside",
        'quote"injected',
        "line\nbreak-0001",
        "key=value-0001",
        "-leading-dash-01",
        "ünïcode-trace-01",
        b"\xff\xfe-not-ascii",
        "",
    ],
)
def test_an_unacceptable_trace_id_is_replaced_by_a_fresh_one(value: str | bytes) -> None:
    assert logs.accepted_trace_id(value) is None
    fresh = logs.trace_id_from([("x-trace-id", value)])
    assert re.fullmatch(r"[0-9a-f]{32}", fresh)
    assert fresh != logs.trace_id_from([("x-trace-id", value)])  # random, not derived


def test_a_call_without_a_trace_id_gets_a_fresh_one() -> None:
    assert re.fullmatch(r"[0-9a-f]{32}", logs.trace_id_from(()))
    assert re.fullmatch(r"[0-9a-f]{32}", logs.trace_id_from(None))


# -- unit: formats and context -------------------------------------------------------------


def _fail() -> None:
    raise RuntimeError("it broke")


def _failure() -> Any:
    try:
        _fail()
    except RuntimeError as error:
        return (type(error), error, error.__traceback__)
    raise AssertionError("unreachable")


def _record(msg: str, *args: Any, exc: bool = False, **extra: Any) -> logging.LogRecord:
    exc_info = _failure() if exc else None
    record = logging.LogRecord("mragw.test", logging.WARNING, __file__, 1, msg, args, exc_info)
    record.created = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC).timestamp()
    record.__dict__.update(extra)
    return record


def test_text_format_is_one_human_line_with_the_context_in_order() -> None:
    formatter = logs.TextFormatter()
    with logs.log_context(trace_id="t-0000001", partner="JP", rpc="/mra.v1.X/Y", peer="p:JP"):
        line = formatter.format(_record("stored %d entries", 5, entry=41))
    assert line == (
        "2026-01-02T03:04:05.678Z WARNING mragw.test: stored 5 entries "
        "[partner=JP rpc=/mra.v1.X/Y peer=p:JP entry=41 trace_id=t-0000001]"
    )
    assert formatter.format(_record("no context")) == (
        "2026-01-02T03:04:05.678Z WARNING mragw.test: no context"
    )
    with_exc = formatter.format(_record("failed", exc=True))
    assert with_exc.splitlines()[0].endswith("mragw.test: failed")
    assert with_exc.splitlines()[-1] == "RuntimeError: it broke"


def test_json_format_has_the_fields_and_an_exception_on_the_same_line() -> None:
    formatter = logs.JsonFormatter()
    with logs.log_context(partner="JP", entry=7):
        line = formatter.format(_record("failed for %s", "JP", exc=True))
    assert "\n" not in line
    document = json.loads(line)
    assert document["ts"] == "2026-01-02T03:04:05.678Z"
    assert (document["level"], document["logger"], document["msg"]) == (
        "warning",
        "mragw.test",
        "failed for JP",
    )
    assert (document["partner"], document["entry"]) == ("JP", 7)
    assert "rpc" not in document
    assert "trace_id" not in document
    assert document["exc"].splitlines()[-1] == "RuntimeError: it broke"


def test_context_is_scoped_and_unknown_fields_are_refused() -> None:
    with logs.log_context(partner="JP"):
        with logs.log_context(entry=3, partner=None):
            assert dict(logs.current_context()) == {"entry": 3}
        assert dict(logs.current_context()) == {"partner": "JP"}
    assert dict(logs.current_context()) == {}
    with pytest.raises(ValueError, match="unknown log context field"):
        logs.bind(body="x")


def test_auto_is_text_on_a_terminal_and_json_elsewhere() -> None:
    leader, follower = os.openpty()
    try:
        with open(follower, "w", closefd=False) as tty:
            assert logs.resolve_format("auto", tty) == "text"
            assert logs.resolve_format("json", tty) == "json"
    finally:
        os.close(leader)
        os.close(follower)
    assert logs.resolve_format("auto", io.StringIO()) == "json"
    assert logs.resolve_format("text", io.StringIO()) == "text"
    with pytest.raises(ValueError, match="'yaml'"):
        logs.resolve_format("yaml", io.StringIO())
    with pytest.raises(ValueError, match="'loud'"):
        logs.parse_level("loud")


def test_third_party_loggers_stay_at_warning_when_ours_are_at_debug(
    captured: io.StringIO,
) -> None:
    logging.getLogger("aiosqlite").debug("executing %r", b"envelope bytes")
    logging.getLogger("gateway.anything").debug("ours")
    assert [d["logger"] for d in json_lines(captured)] == ["gateway.anything"]


# -- unit: the hygiene guard ---------------------------------------------------------------

PEM = ed25519.Ed25519PrivateKey.generate().private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)


@pytest.mark.parametrize("fmt", [logs.JsonFormatter(), logs.TextFormatter()], ids=["json", "text"])
def test_a_private_key_never_reaches_a_line(fmt: logging.Formatter) -> None:
    text = PEM.decode()
    body = "".join(text.splitlines()[1:-1])
    for message in (
        f"loaded {text}",  # a whole block
        f"loaded {text[:60]}",  # cut off after the header
        f"repr {PEM!r}",  # escaped newlines inside a bytes repr
    ):
        line = fmt.format(_record("%s", message))
        assert "PRIVATE KEY" not in line
        assert body not in line
    failing = fmt.format(_record("x", exc=True))
    assert "RuntimeError" in failing  # the guard leaves ordinary text alone


def test_long_binary_runs_are_collapsed_but_digests_and_paths_stay() -> None:
    blob = os.urandom(200)
    digest = "ab" * 32  # a SHA-256 in hex: readable
    fingerprint = base64.b64encode(os.urandom(32)).decode()
    path = "/srv/mragw/eu/keys/signing/" + "c" * 64 + ".key"
    line = logs.redact(
        f"{blob!r} {blob.hex()} {base64.b64encode(blob).decode()} {digest} {fingerprint} {path}"
    )
    assert blob.hex() not in line
    assert base64.b64encode(blob).decode() not in line
    assert "bytes redacted" in line
    assert "hex chars redacted" in line
    assert "base64 chars redacted" in line
    assert digest in line
    assert fingerprint in line
    assert path in line


# -- end to end ----------------------------------------------------------------------------

TRUST_ENV = {"MRAGW_TRUST__REFRESH_INTERVAL_S": "0.2", "MRAGW_TRUST__CLOCK_SKEW_S": "0"}
GOOD_TRACE = "itest-trace-0001"
# Legal gRPC metadata (printable ASCII) that would forge a field in either format.
HOSTILE_TRACE = 'evil trace" forged=1 {"level":"info","msg":"forged"}'


def private_key_forms(home: Path) -> set[str]:
    """base64 (standard, URL-safe, unpadded) and hex of every private key's DER and raw bytes
    under ``home``, and each line of its PEM body."""
    forms: set[str] = set()
    for file in home.rglob("*.key"):
        pem = file.read_bytes()
        key = serialization.load_pem_private_key(pem, password=None)
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        if isinstance(key, ed25519.Ed25519PrivateKey):
            raw = key.private_bytes_raw()
        else:
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            raw = key.private_numbers().private_value.to_bytes(32, "big")
        for data in (der, raw):
            forms.update(binary_forms(data))
        forms.update(line for line in pem.decode().splitlines() if "-----" not in line)
    assert forms
    return forms


def binary_forms(data: bytes) -> set[str]:
    b64 = base64.b64encode(data).decode()
    url = base64.urlsafe_b64encode(data).decode()
    return {b64, b64.rstrip("="), url, url.rstrip("="), data.hex(), data.hex().upper()}


async def published_forms(cluster: Cluster) -> set[str]:
    """Forms of every envelope EU published and of the record body each one carries."""
    async with cluster.node("EU").engine.connect() as conn:
        envelopes = [
            bytes(e)
            for e in (
                await conn.execute(
                    select(entries.c.envelope).where(
                        entries.c.log == "EU", entries.c.envelope.is_not(None)
                    )
                )
            ).scalars()
        ]
    assert envelopes
    forms: set[str] = set()
    for envelope in envelopes:
        forms.update(binary_forms(envelope))
        forms.update(binary_forms(parse_envelope(envelope).payload))
    return forms


async def raw_call(
    channel: grpc.aio.Channel, method: str, data: bytes, trace: str
) -> grpc.StatusCode:
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        await call(data, timeout=10, metadata=(("x-trace-id", trace),))
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def rotate_and_follow(cluster: Cluster) -> None:
    eu = cluster.node("EU")
    rotated = await keys.rotate_signing(eu, overlap=dt.timedelta(seconds=1))

    async def jp_follows() -> bool:
        async with cluster.node("JP").engine.connect() as conn:
            version = (
                await conn.execute(select(partners.c.trust_version).where(partners.c.code == "EU"))
            ).scalar_one()
        return int(version) >= rotated.version

    await eventually(jp_follows, deadline_s=15)


async def test_gateways_log_json_lines_with_context_and_no_secrets(
    db_url: str, tmp_path: Path, captured: io.StringIO
) -> None:
    async with cluster_of(tmp_path, db_url, ("EU", "JP"), TRUST_ENV, start=True) as cluster:
        await cluster.connect("EU", "JP")
        await cluster.publish("EU", bulk_records(30))
        size = (await log_head(cluster.node("EU"), "EU")).size
        await cluster.wait_replicated("JP", "EU", size)
        await rotate_and_follow(cluster)
        await cluster.publish("EU", bulk_records(45)[30:])
        size = (await log_head(cluster.node("EU"), "EU")).size
        await cluster.wait_replicated("JP", "EU", size)

        eu_partner = cluster.endpoints["EU"]
        jp, eu = cluster.node("JP"), cluster.node("EU")
        async with jp.engine.connect() as conn:
            eu_ca = (
                await conn.execute(select(partners.c.ca_pem).where(partners.c.code == "EU"))
            ).scalar_one()
        # 1. JP, authenticated, sends bytes that are no request: refused, logged with context.
        async with partner_channel(jp, "EU", eu_partner, eu_ca) as channel:
            code = await raw_call(
                channel, "/mra.v1.ExchangeService/GetCheckpoint", b"\xff\xff\xff", GOOD_TRACE
            )
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            # 2. A good call whose trace id is hostile: served, under a fresh trace id.
            stub = exchange_pb2_grpc.ExchangeServiceStub(channel)
            reply = await stub.GetCheckpoint(
                exchange_pb2.GetCheckpointRequest(),
                timeout=10,
                metadata=(("x-trace-id", "ok-trace-0002"),),
            )
            assert reply.checkpoint.note
        # 3. JP's local admin certificate is not a partner identity: refused by identity.
        key_pem, cert_pem = jp.tls_pair("admin")
        async with mtls_channel(
            eu_partner,
            server_code="EU",
            root_pem=eu_ca.encode("ascii") if isinstance(eu_ca, str) else eu_ca,
            key_pem=key_pem,
            cert_pem=cert_pem,
            limits=jp.config.limits,
        ) as channel:
            code = await raw_call(
                channel,
                "/mra.v1.ExchangeService/GetCheckpoint",
                exchange_pb2.GetCheckpointRequest().SerializeToString(),
                HOSTILE_TRACE,
            )
            assert code == grpc.StatusCode.UNAUTHENTICATED
        # 4. An admin call on JP's admin listener.
        async with local_channel(jp, cluster.gateways["JP"].server.listeners.admin_target) as ch:
            code = await raw_call(ch, "/mra.v1.AdminService/GetStatus", b"", "admin-trace-0003")
            assert code == grpc.StatusCode.OK
        secrets_ = private_key_forms(eu.config.home) | private_key_forms(jp.config.home)
        bodies = await published_forms(cluster)

    lines = json_lines(captured)
    raw = captured.getvalue()
    # Hygiene: nothing that looks like a key, no key bytes, no record body, no envelope.
    assert "PRIVATE KEY" not in raw
    leaked = [s for s in secrets_ if s in raw]
    assert leaked == [], "private key material in the log"
    leaked = [s for s in bodies if s in raw]
    assert leaked == [], "a record body or envelope in the log"
    assert "forged" not in raw
    assert "evil trace" not in raw

    def having(**want: Any) -> list[dict[str, Any]]:
        return [d for d in lines if all(d.get(k) == v for k, v in want.items())]

    malformed = having(trace_id=GOOD_TRACE, level="warning")
    assert malformed, "the malformed request was not logged with its trace id"
    assert malformed[0]["rpc"] == "/mra.v1.ExchangeService/GetCheckpoint"
    assert (malformed[0]["peer"], malformed[0]["partner"]) == ("partner:JP", "JP")
    ended = having(trace_id="ok-trace-0002")
    assert any(d["msg"].startswith("call ended: ok") and d["peer"] == "partner:JP" for d in ended)
    refused = [
        d for d in lines if "refused" in d["msg"] and d.get("rpc", "").endswith("GetCheckpoint")
    ]
    assert refused, "the refused call was not logged"
    assert "peer" not in refused[0]  # refused: no authenticated identity
    assert re.fullmatch(r"[0-9a-f]{32}", refused[0]["trace_id"])  # hostile id replaced
    admin = having(trace_id="admin-trace-0003")
    assert admin
    assert admin[-1]["peer"].startswith("admin:")
    assert admin[-1]["rpc"] == "/mra.v1.AdminService/GetStatus"
    # Replication: JP's replicator accepted EU's rotated statement, in EU's partner context.
    accepted = [
        d
        for d in lines
        if d["logger"] == "mragw.replicator" and d["msg"].startswith("accepted trust statement")
    ]
    assert accepted
    assert all(d["partner"] == "EU" for d in accepted)
    # Every RPC line the servers wrote has the whole call context.
    for d in lines:
        if d["logger"] == "gateway.server.logcontext":
            assert {"rpc", "trace_id"} <= d.keys(), d


# -- mragw serve ---------------------------------------------------------------------------

MRAGW = [sys.executable, "-m", "gateway.cli.main"]


def test_serve_writes_json_lines_to_stderr_when_asked(tmp_path: Path) -> None:
    home = tmp_path / "eu"
    listeners = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
    made = CliRunner().invoke(app, ["init", "--admin", "EU", "--home", str(home), *listeners])
    assert made.exit_code == 0, made.output
    # Our default must keep gRPC's C core (which writes straight to stderr) quiet.
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    process = subprocess.Popen(  # a real `mragw serve`, stopped the way systemd stops it
        [*MRAGW, "serve", "--home", str(home), "--log-format", "json", "--log-level", "debug"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stderr is not None
    first: list[bytes] = []
    while not first or b"serving EU" not in first[-1]:  # blocking reads until it serves
        line = process.stderr.readline()
        assert line, f"serve ended early: {b''.join(first)!r}"
        first.append(line)
    # A plaintext client on the mTLS port: the C core logs the failed handshake at info level
    # unless GRPC_VERBOSITY keeps it quiet; such a line would not parse as JSON below.
    running = read_runtime(home, check_alive=False)
    assert running is not None
    host, port = running.listen.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as plain:
        plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        while plain.recv(4096):  # until the server closes the failed handshake
            pass
    process.send_signal(signal.SIGTERM)
    rest, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors
    assert rest == b""  # stdout: nothing (logs are stderr's)
    documents = [json.loads(line) for line in [*first, *errors.splitlines()] if line.strip()]
    assert [d["msg"] for d in documents][-1] == "EU stopped"
    assert all(d["ts"].endswith("Z") for d in documents)
    assert "SIGTERM: shutting down" in " ".join(d["msg"] for d in documents)


def test_bad_log_format_or_level_is_a_usage_error(tmp_path: Path) -> None:
    bad = subprocess.run(
        [*MRAGW, "serve", "--home", str(tmp_path), "--log-format", "yaml"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert b"yaml" in bad.stderr
    from_env = subprocess.run(
        [*MRAGW, "status", "--home", str(tmp_path)],
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, "MRAGW_LOG_LEVEL": "loud"},
    )
    assert from_env.returncode == 2
    assert b"MRAGW_LOG_FORMAT/MRAGW_LOG_LEVEL" in from_env.stderr
    assert b"'loud'" in from_env.stderr
