"""A node: one administration's gateway home directory, its keys and its database.

Home layout (every private key file mode 0600, optionally passphrase-encrypted)::

    mragw.toml                 config (see gateway.config)
    mragw.db                   SQLite database (default store)
    keys/root.key              root key: signs trust statements; may be moved offline
    keys/signing/<id>.key      log signing keys (entries and checkpoints)
    tls/ca.pem, tls/ca.key     the administration's TLS CA
    tls/node.pem, node.key     the gateway's certificate: serves partners and dials them
    tls/admin.pem, admin.key   the CLI's local admin client certificate (OU=admin)

Invariant: the trust statement in the database lists every signing key the node uses, so
what partners verify and what the node signs with never diverge.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from crypto.checkpoint import Checkpoint, add_signature, parse_note, sign_checkpoint
from crypto.envelope import Envelope, envelope_from_json, envelope_to_json
from crypto.keys import PrivateKeySigner, Scheme, load_private_key, save_private_key
from crypto.merkle import EMPTY_ROOT
from crypto.pki import (
    certificate_to_pem,
    create_ca_certificate,
    generate_tls_key,
    issue_client_certificate,
    issue_server_certificate,
    load_certificate,
)
from gateway.audit import AUDIT_LOCK, record_action
from gateway.config import (
    CONFIG_FILE,
    Config,
    DatabaseSection,
    KeysSection,
    NodeSection,
    ServerSection,
    build_config,
    config_document,
    load_config,
    parse_hostport,
    write_config,
)
from gateway.datasets import packaged_bytes, recogniser_for
from gateway.errors import InputError
from gateway.storage.database import (
    check_sqlite_schema,
    create_engine,
    migrate,
    require_current_schema,
)
from gateway.storage.schema import datasets, node_state, trust_statements
from gateway.storage.tiles import create_empty_log
from gateway.trust import (
    ExpiryState,
    SigningKey,
    TrustStatement,
    expiry_state,
    log_origin,
    sign_statement,
)

ADMIN_ROLE = "admin"


@dataclass(frozen=True)
class NodePaths:
    home: Path

    @property
    def keys(self) -> Path:
        return self.home / "keys"

    @property
    def root_key(self) -> Path:
        return self.keys / "root.key"

    @property
    def signing_dir(self) -> Path:
        return self.keys / "signing"

    def signing_key(self, key_id: str) -> Path:
        return self.signing_dir / f"{key_id}.key"

    @property
    def tls(self) -> Path:
        return self.home / "tls"

    def tls_file(self, name: str) -> Path:
        return self.tls / name

    @property
    def tls_next(self) -> Path:
        """A TLS CA and certificates made by ``keys rotate --tls``, used from ``switch-at``."""
        return self.tls / "next"

    @property
    def tls_switch(self) -> Path:
        return self.tls_next / "switch-at"


def now_utc() -> dt.datetime:
    return dt.datetime.now(tz=dt.UTC)


def _passphrase(config: Config) -> bytes | None:
    if not config.keys.passphrase_file:
        return None
    path = Path(config.keys.passphrase_file)
    try:
        return path.read_bytes().rstrip(b"\r\n")
    except OSError as error:
        raise InputError(f"keys.passphrase_file: cannot read {path}: {error.strerror}") from error


def default_endpoint(listen: str) -> str:
    host, port = parse_hostport(listen, "--listen")
    if host in {"0.0.0.0", "::", ""}:  # noqa: S104 - mapping a wildcard bind to a dialable address
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def initialise_node(
    *,
    admin: str,
    home: Path,
    listen: str,
    admin_listen: str,
    http_listen: str,
    db_url: str,
    endpoint: str = "",
    timezone: str = "UTC",
    passphrase_file: str = "",
    signing_algorithm: str = "ed25519",
    now: dt.datetime | None = None,
) -> Config:
    """Create a node: keys, certificates, config, database schema and trust statement v1."""
    moment = now or now_utc()
    home = _fresh_home(home)
    dataset_bytes = packaged_bytes()
    recogniser = recogniser_for(dataset_bytes)
    if not recogniser.is_known_code(admin):
        raise InputError(f"--admin {admin!r}: not an administration code known to the registry")
    for name, value in (
        ("--listen", listen),
        ("--admin-listen", admin_listen),
        ("--http-listen", http_listen),
    ):
        parse_hostport(value, name)
    config = Config(
        home=home,
        node=NodeSection(admin=admin, timezone=timezone),
        server=ServerSection(
            listen=listen,
            admin_listen=admin_listen,
            http_listen=http_listen,
            endpoint=endpoint or default_endpoint(listen),
        ),
        database=DatabaseSection(url=db_url),
        keys=KeysSection(passphrase_file=passphrase_file, signing_algorithm=signing_algorithm),
    )
    # Validate the whole config (time zone, URL scheme, ...) before writing anything.
    config = build_config(home, config_document(config), environ={})
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    paths = NodePaths(home)
    for folder in (paths.keys, paths.signing_dir, paths.tls):
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
    passphrase = _passphrase(config)

    root = PrivateKeySigner.generate(Scheme.ED25519)
    save_private_key(root, paths.root_key, passphrase)
    scheme = Scheme.ED25519 if signing_algorithm == "ed25519" else Scheme.ECDSA_P256_SHA256
    # Checkpoints must be Ed25519 (C2SP signed notes); entries may use ECDSA P-256.
    signing = PrivateKeySigner.generate(Scheme.ED25519)
    save_private_key(signing, paths.signing_key(signing.key_id), passphrase)
    entry_signer = signing
    if scheme is not Scheme.ED25519:
        entry_signer = PrivateKeySigner.generate(scheme)
        save_private_key(entry_signer, paths.signing_key(entry_signer.key_id), passphrase)

    ca_cert = make_tls_material(
        paths.tls, admin, moment, dt.timedelta(days=config.keys.tls_leaf_days), passphrase
    )

    keys = [SigningKey(public_key=signing.public_key, valid_from=moment)]
    if entry_signer is not signing:
        keys.append(SigningKey(public_key=entry_signer.public_key, valid_from=moment))
    statement = TrustStatement(
        admin=admin,
        version=1,
        issued=moment,
        expires=moment + dt.timedelta(days=config.keys.trust_statement_days),
        endpoint=config.server.endpoint,
        root_key=root.public_key,
        tls_ca_pem=certificate_to_pem(ca_cert).decode("ascii"),
        signing_keys=tuple(keys),
        origin=log_origin(admin),
    )
    envelope = sign_statement(statement, [root])
    write_config(config)

    engine = create_engine(config.database_url)
    try:
        await migrate(engine)
        async with engine.begin() as conn:
            empty = Checkpoint(origin=statement.log_origin, size=0, root_hash=EMPTY_ROOT)
            note = sign_checkpoint(empty, statement.log_origin, signing)
            await create_empty_log(conn, admin, own=True, checkpoint=note)
            await conn.execute(
                trust_statements.insert().values(
                    version=1,
                    envelope=envelope_to_json(envelope),
                    created_at=moment.timestamp(),
                )
            )
            await conn.execute(
                datasets.insert().values(
                    version=recogniser.version,
                    content=dataset_bytes,
                    added_at=moment.timestamp(),
                    active=True,
                )
            )
            await conn.execute(
                node_state.insert(),
                [
                    {"key": "partners", "value": 0},
                    {"key": "dataset", "value": 0},
                    {"key": AUDIT_LOCK, "value": 0},
                ],
            )
            await record_action(
                conn,
                "init",
                "node.init",
                {
                    "admin": admin,
                    "root_key": root.key_id,
                    "signing_keys": [k.key_id for k in keys],
                    "tls_ca": ca_cert.fingerprint(hashes.SHA256()).hex(),
                },
            )
    finally:
        await engine.dispose()
    return config


def make_tls_material(
    folder: Path,
    admin: str,
    moment: dt.datetime,
    leaf_validity: dt.timedelta,
    passphrase: bytes | None,
) -> Any:
    """A TLS CA, the gateway's server/client certificate and the CLI's admin certificate in
    ``folder`` (private keys 0600); returns the CA certificate. Used at init and by a TLS
    rotation (into ``tls/next``)."""
    ca_key = generate_tls_key()
    ca_cert = create_ca_certificate(admin, ca_key, now=moment)
    node_key = generate_tls_key()
    node_cert = issue_server_certificate(
        ca_cert, ca_key, node_key.public_key, now=moment, validity=leaf_validity
    )
    admin_key = generate_tls_key()
    admin_cert = issue_client_certificate(
        ca_cert, ca_key, admin_key.public_key, now=moment, role=ADMIN_ROLE, validity=leaf_validity
    )
    for name, key, cert in (
        ("ca", ca_key, ca_cert),
        ("node", node_key, node_cert),
        ("admin", admin_key, admin_cert),
    ):
        save_private_key(key, folder / f"{name}.key", passphrase)
        (folder / f"{name}.pem").write_bytes(certificate_to_pem(cert))
    return ca_cert


def _split_pem(data: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    return [part.strip() + b"\n" + marker + b"\n" for part in data.split(marker) if part.strip()]


def sign_head(checkpoint: Checkpoint, origin: str, signers: list[PrivateKeySigner]) -> str:
    """A checkpoint note signed by every given key (the log's name on each line)."""
    if not signers:
        raise InputError("no valid Ed25519 signing key for checkpoints on this node")
    note = parse_note(sign_checkpoint(checkpoint, origin, signers[0]))
    for signer in signers[1:]:
        note = add_signature(note, origin, signer)
    return note.to_text()


def _fresh_home(home: Path) -> Path:
    resolved = home.resolve()
    if (resolved / CONFIG_FILE).exists():
        raise InputError(f"--home {resolved}: a node already lives here")
    return resolved


class Node:
    """A loaded node home: config, key material on demand, and the database engine."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.paths = NodePaths(config.home)
        self._engine: AsyncEngine | None = None
        self._statement: tuple[bytes, TrustStatement] | None = None

    @classmethod
    def open(cls, home: Path, environ: dict[str, str] | None = None) -> Node:
        config = load_config(home.resolve(), environ if environ is not None else dict(os.environ))
        # Readers that bypass the engine (Check on SQLite) must not run on another schema
        # either; the engine checks every connection it makes (see `engine`).
        check_sqlite_schema(config.database_url)
        return cls(config)

    @property
    def admin(self) -> str:
        return self.config.admin

    @property
    def origin(self) -> str:
        return log_origin(self.admin)

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            # Every command and `serve` open the database here: a schema behind (or ahead of)
            # this software's migrations is refused at the first connection, naming the fix.
            self._engine = require_current_schema(create_engine(self.config.database_url))
        return self._engine

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    @cached_property
    def passphrase(self) -> bytes | None:
        return _passphrase(self.config)

    def load_signer(self, key_id: str) -> PrivateKeySigner:
        path = self.paths.signing_key(key_id)
        if not path.exists():
            raise InputError(
                f"signing key {key_id}: no private key file in {self.paths.signing_dir}"
            )
        return load_private_key(path, self.passphrase)

    def root_signer(self) -> PrivateKeySigner:
        if not self.paths.root_key.exists():
            raise InputError(f"root key: {self.paths.root_key} is not here (kept offline?)")
        return load_private_key(self.paths.root_key, self.passphrase)

    def tls_switch_at(self) -> float | None:
        """When the TLS material in ``tls/next`` takes over (None: no rotation pending)."""
        try:
            return float(self.paths.tls_switch.read_text(encoding="ascii").strip())
        except FileNotFoundError:
            return None
        except ValueError as error:
            raise InputError(f"{self.paths.tls_switch}: not a timestamp") from error

    def tls_dir(self, at: float | None = None) -> Path:
        """The directory of the TLS material in use at ``at`` (now): ``tls/``, or ``tls/next``
        once a rotation's switch time has passed, so every process switches on its own."""
        switch = self.tls_switch_at()
        moment = time.time() if at is None else at
        if switch is not None and moment >= switch:
            return self.paths.tls_next
        return self.paths.tls

    def tls_bytes(self, name: str) -> bytes:
        return (self.tls_dir() / name).read_bytes()

    def tls_private_key_pem(self, name: str) -> bytes:
        """An unencrypted PEM of a TLS key, for gRPC (held in memory only, never written)."""
        return load_private_key(self.tls_dir() / f"{name}.key", self.passphrase).to_pem()

    def tls_identity(self) -> bytes:
        """A digest of the certificate this node presents now: it changes at a TLS switch and
        stays changed after ``tls/next`` is promoted, so a connection made with an older
        certificate can always tell (comparing directories cannot, once promoted)."""
        return hashlib.sha256(self.tls_bytes("node.pem")).digest()

    def tls_pair(self, name: str) -> tuple[bytes, bytes]:
        """(unencrypted key PEM, certificate PEM) of ``name``, both read from one directory,
        so a TLS switch between the two reads cannot mismatch them."""
        folder = self.tls_dir()
        key = load_private_key(folder / f"{name}.key", self.passphrase).to_pem()
        return key, (folder / f"{name}.pem").read_bytes()

    def ca_certificate(self) -> Any:
        return load_certificate(self.tls_bytes("ca.pem"))

    def own_ca_pem(self) -> bytes:
        """Every CA of ours that local clients and partners may hold certificates from: the
        current one and, during a TLS rotation, the next (or, after the switch, the old)."""
        pems = [self.paths.tls_file("ca.pem").read_bytes()]
        if self.tls_switch_at() is not None:
            pems.append((self.paths.tls_next / "ca.pem").read_bytes())
        return b"".join(pems)

    def own_ca_stamp(self) -> tuple[tuple[int, int, int] | None, ...]:
        """(inode, mtime, size) of every file :meth:`own_ca_pem` depends on: unchanged
        stamps mean unchanged CAs, so a per-call check costs three stat calls, not reads."""
        stamps: list[tuple[int, int, int] | None] = []
        for path in (
            self.paths.tls_file("ca.pem"),
            self.paths.tls_switch,
            self.paths.tls_next / "ca.pem",
        ):
            try:
                st = path.stat()
            except FileNotFoundError:
                stamps.append(None)
            else:
                stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(stamps)

    def own_ca_certificates(self) -> list[Any]:
        return [load_certificate(p) for p in _split_pem(self.own_ca_pem())]

    @staticmethod
    async def trust_envelopes(conn: AsyncConnection, from_version: int | None = 1) -> list[bytes]:
        """Our trust statements as stored (DSSE JSON), from ``from_version`` on; ``None``: the
        newest only."""
        query = select(trust_statements.c.envelope)
        if from_version is None:
            query = query.order_by(trust_statements.c.version.desc()).limit(1)
        else:
            query = query.where(trust_statements.c.version >= from_version).order_by(
                trust_statements.c.version
            )
        return [bytes(r) for r in (await conn.execute(query)).scalars()]

    async def trust_chain(self, conn: AsyncConnection, from_version: int = 1) -> list[Envelope]:
        return [envelope_from_json(e) for e in await self.trust_envelopes(conn, from_version)]

    async def trust_statement(self, conn: AsyncConnection) -> TrustStatement:
        row = (
            await conn.execute(
                select(trust_statements.c.envelope)
                .order_by(trust_statements.c.version.desc())
                .limit(1)
            )
        ).scalar_one()
        # Parsed once per version: the key-schedule job and every publish read it, and parsing
        # loads keys and certificates.
        envelope = bytes(row)
        if self._statement is None or self._statement[0] != envelope:
            statement = TrustStatement.from_payload(envelope_from_json(envelope).payload)
            self._statement = (envelope, statement)
        return self._statement[1]

    async def checkpoint_signers(self, conn: AsyncConnection) -> list[PrivateKeySigner]:
        """Every Ed25519 key we hold that may sign now, newest first: during a rotation's
        overlap checkpoints carry both signatures, so partners that have not fetched the new
        statement yet still verify them (C2SP notes allow several signature lines)."""
        return [self.load_signer(k.key_id) for k in await self.checkpoint_keys(conn)]

    async def checkpoint_keys(self, conn: AsyncConnection) -> list[SigningKey]:
        """The published keys :meth:`checkpoint_signers` signs with (no private key loaded)."""
        return [
            k
            for k in reversed(self._usable(await self.trust_statement(conn)))
            if k.public_key.scheme is Scheme.ED25519
        ]

    def _usable(self, statement: TrustStatement) -> list[SigningKey]:
        moment = now_utc()
        usable = [
            k
            for k in statement.signing_keys
            if k.revoked_at_index is None
            and k.in_window(moment)
            and self.paths.signing_key(k.key_id).exists()
        ]
        usable.sort(key=lambda k: k.valid_from)
        return usable

    def trust_expiry(self, statement: TrustStatement) -> ExpiryState:
        """Where ``statement`` stands against its expiry, with this node's grace and warning
        periods (``trust.expiry_grace_s``, ``trust.renew_warning_days``)."""
        return expiry_state(
            statement,
            now_utc(),
            grace=dt.timedelta(seconds=self.config.trust.expiry_grace_s),
            warn=dt.timedelta(days=self.config.trust.renew_warning_days),
        )

    async def root_fingerprint(self) -> str:
        """Our root key's fingerprint (what partners pin)."""
        async with self.engine.connect() as conn:
            return (await self.trust_statement(conn)).root_fingerprint

    async def active_signers(
        self, conn: AsyncConnection
    ) -> tuple[PrivateKeySigner, PrivateKeySigner]:
        """(checkpoint signer, entry signer): the newest valid keys we hold privately."""
        usable = self._usable(await self.trust_statement(conn))
        if not usable:
            raise InputError("no valid signing key with a private key file on this node")
        ed = [k for k in usable if k.public_key.scheme is Scheme.ED25519]
        if not ed:
            raise InputError("no valid Ed25519 signing key for checkpoints on this node")
        wanted = (
            Scheme.ED25519
            if self.config.keys.signing_algorithm == "ed25519"
            else Scheme.ECDSA_P256_SHA256
        )
        entry = [k for k in usable if k.public_key.scheme is wanted] or ed
        return self.load_signer(ed[-1].key_id), self.load_signer(entry[-1].key_id)
