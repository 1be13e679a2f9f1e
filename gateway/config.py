"""Node configuration: a TOML file in the node home, overridable per key by the environment.

Invariants:
- The config is loaded once, validated whole, and passed around as a frozen value; nothing
  reads ``os.environ`` after loading (the environment is injected, so tests never touch it).
- Every key can be overridden by ``MRAGW_<SECTION>__<KEY>`` (upper case). An invalid value
  stops start-up with a message naming the key (and the variable, when it came from one).
- Unknown sections or keys are errors too: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, get_type_hints

import tomli_w

from gateway.errors import InputError

CONFIG_FILE = "mragw.toml"
ENV_PREFIX = "MRAGW_"

_ADMIN_CODE = re.compile(r"^[A-Z]{2,4}$")
#: Bounds of ``cluster.takeover_s``.
MIN_TAKEOVER_S = 0.5
MAX_TAKEOVER_S = 3600.0


class ConfigError(InputError):
    """The node configuration is invalid; the message names the key."""


def parse_hostport(value: str, key: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) with port 0..65535; port 0 means ephemeral."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(f"{key}: {value!r} is not HOST:PORT")
    port = int(port_text)
    if port > 65535:
        raise ConfigError(f"{key}: port {port} is out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


@dataclass(frozen=True)
class NodeSection:
    admin: str = ""
    timezone: str = "UTC"


@dataclass(frozen=True)
class ServerSection:
    # Partner-facing mTLS listener.
    listen: str = "0.0.0.0:7443"
    # Local QueryService + AdminService (mTLS with local client certificates).
    admin_listen: str = "127.0.0.1:7444"
    # Prometheus /metrics and the read-only status page; port 0 = ephemeral, see `mragw status`.
    http_listen: str = "127.0.0.1:0"
    # Public endpoint partners dial, written into the trust statement.
    endpoint: str = ""
    shutdown_grace_s: float = 5.0


@dataclass(frozen=True)
class DatabaseSection:
    url: str = ""


@dataclass(frozen=True)
class LimitsSection:
    max_streams_per_partner: int = 4
    max_message_bytes: int = 4 * 1024 * 1024
    requests_per_second: float = 50.0
    request_burst: int = 100
    batch_entries: int = 2048
    publish_chunk: int = 2000
    max_publish_records: int = 1_000_000


@dataclass(frozen=True)
class ReplicationSection:
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    # How often a running gateway looks for changes made by the CLI in the database.
    poll_interval_s: float = 0.5
    verify_interval_s: float = 2.0
    # A partner neither sending entries nor heartbeats for this long raises a "silent" alert
    # (0: never).
    silent_after_s: float = 3600.0


@dataclass(frozen=True)
class KeysSection:
    # File holding the passphrase of the private keys (none = keys stored unencrypted, 0600).
    passphrase_file: str = ""
    signing_algorithm: str = "ed25519"
    tls_leaf_days: int = 90
    trust_statement_days: int = 365


@dataclass(frozen=True)
class TrustSection:
    # A partner's newest trust statement past its expiry stops replication from it after this
    # long (fail closed); the partner renews with ``mragw trust renew``.
    expiry_grace_s: float = 7 * 86400.0
    # `mragw status` warns this many days before our own or a partner's statement expires.
    renew_warning_days: int = 30
    # How often a replicator asks its partner for a newer trust statement (it also asks at
    # once when a checkpoint is signed by a key it does not know).
    refresh_interval_s: float = 300.0
    # Tolerated clock difference between administrations when checking key validity windows.
    clock_skew_s: float = 300.0
    # `mragw keys rotate`: how long a new key is published before it is used, and how long
    # the old one stays valid after the switch.
    rotation_overlap_s: float = 86400.0
    # How often this gateway exchanges cosigned checkpoints with each partner (witnessing).
    witness_interval_s: float = 60.0


@dataclass(frozen=True)
class ClusterSection:
    # Several ``mragw serve`` replicas of one administration on one PostgreSQL: the longest a
    # partner's replication (or a once-per-administration job) stays without a live holder
    # after its holder died. Leases last 0.7 of it and are renewed every quarter of it.
    takeover_s: float = 10.0


@dataclass(frozen=True)
class Config:
    home: Path
    node: NodeSection = field(default_factory=NodeSection)
    server: ServerSection = field(default_factory=ServerSection)
    database: DatabaseSection = field(default_factory=DatabaseSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    replication: ReplicationSection = field(default_factory=ReplicationSection)
    keys: KeysSection = field(default_factory=KeysSection)
    trust: TrustSection = field(default_factory=TrustSection)
    cluster: ClusterSection = field(default_factory=ClusterSection)

    @property
    def admin(self) -> str:
        return self.node.admin

    @property
    def database_url(self) -> str:
        return self.database.url or default_database_url(self.home)

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.node.timezone)

    def today(self, now: datetime | None = None) -> date:
        """Today in the configured time zone (not the machine's)."""
        moment = now if now is not None else datetime.now(tz=self.tz)
        return moment.astimezone(self.tz).date()


SECTIONS: dict[str, type[Any]] = {
    "node": NodeSection,
    "server": ServerSection,
    "database": DatabaseSection,
    "limits": LimitsSection,
    "replication": ReplicationSection,
    "keys": KeysSection,
    "trust": TrustSection,
    "cluster": ClusterSection,
}


def default_database_url(home: Path) -> str:
    return f"sqlite+aiosqlite:///{home.resolve() / 'mragw.db'}"


def _coerce(raw: Any, kind: type[Any], key: str, source: str) -> Any:
    """Turn a TOML value or an environment string into ``kind``; name the key on failure."""
    where = f"{key} (from {source})"
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in {"true", "1", "yes", "false", "0", "no"}:
            return raw.lower() in {"true", "1", "yes"}
        raise ConfigError(f"{where}: {raw!r} is not a boolean")
    if kind is int:
        if isinstance(raw, bool):
            raise ConfigError(f"{where}: {raw!r} is not an integer")
        if isinstance(raw, int):
            return raw
        if isinstance(raw, str) and re.fullmatch(r"-?\d+", raw.strip()):
            return int(raw)
        raise ConfigError(f"{where}: {raw!r} is not an integer")
    if kind is float:
        if isinstance(raw, bool):
            raise ConfigError(f"{where}: {raw!r} is not a number")
        if isinstance(raw, int | float):
            return float(raw)
        if isinstance(raw, str):
            try:
                return float(raw)
            except ValueError:
                pass
        raise ConfigError(f"{where}: {raw!r} is not a number")
    if kind is str:
        if isinstance(raw, str):
            return raw
        raise ConfigError(f"{where}: {raw!r} is not a string")
    raise ConfigError(f"{where}: unsupported type {kind}")  # pragma: no cover - schema bug


def _section_types(section: type[Any]) -> dict[str, type[Any]]:
    hints = get_type_hints(section)
    out: dict[str, type[Any]] = {}
    for f in dataclasses.fields(section):
        kind = hints[f.name]
        if isinstance(kind, types.UnionType):  # pragma: no cover - no optional keys yet
            raise TypeError(f"config key {f.name} must not be optional")
        out[f.name] = kind
    return out


def _validate(config: Config) -> None:
    if not _ADMIN_CODE.fullmatch(config.node.admin):
        raise ConfigError(
            f"node.admin: {config.node.admin!r} is not an administration code (2-4 capitals)"
        )
    try:
        zoneinfo.ZoneInfo(config.node.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as error:
        raise ConfigError(f"node.timezone: unknown time zone {config.node.timezone!r}") from error
    for key in ("listen", "admin_listen", "http_listen"):
        parse_hostport(getattr(config.server, key), f"server.{key}")
    if config.server.shutdown_grace_s < 0:
        raise ConfigError("server.shutdown_grace_s: must not be negative")
    url = config.database.url
    if url and not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise ConfigError(
            f"database.url: {url!r} must start with sqlite+aiosqlite:// or postgresql+asyncpg://"
        )
    positive = {
        "limits.max_streams_per_partner": config.limits.max_streams_per_partner,
        "limits.max_message_bytes": config.limits.max_message_bytes,
        "limits.requests_per_second": config.limits.requests_per_second,
        "limits.request_burst": config.limits.request_burst,
        "limits.batch_entries": config.limits.batch_entries,
        "limits.publish_chunk": config.limits.publish_chunk,
        "limits.max_publish_records": config.limits.max_publish_records,
        "replication.backoff_initial_s": config.replication.backoff_initial_s,
        "replication.backoff_max_s": config.replication.backoff_max_s,
        "replication.poll_interval_s": config.replication.poll_interval_s,
        "replication.verify_interval_s": config.replication.verify_interval_s,
        "keys.tls_leaf_days": config.keys.tls_leaf_days,
        "keys.trust_statement_days": config.keys.trust_statement_days,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}: must be positive, got {value!r}")
    if config.replication.silent_after_s < 0:
        raise ConfigError(
            "replication.silent_after_s: must not be negative (0 turns the alert off), "
            f"got {config.replication.silent_after_s!r}"
        )
    takeover = config.cluster.takeover_s
    if not takeover > 0 or takeover == float("inf"):  # ``not >`` also refuses NaN
        raise ConfigError(
            f"cluster.takeover_s: must be a positive number of seconds, got {takeover!r}"
        )
    if not MIN_TAKEOVER_S <= takeover <= MAX_TAKEOVER_S:
        # Below: replicas would renew leases many times a second; above: a dead replica's
        # partners would go unreplicated for more than an hour.
        raise ConfigError(
            f"cluster.takeover_s: must be between {MIN_TAKEOVER_S} and {MAX_TAKEOVER_S} "
            f"seconds, got {takeover!r}"
        )
    if config.limits.publish_chunk > 10_000:
        raise ConfigError("limits.publish_chunk: at most 10000 records per transaction")
    if config.keys.signing_algorithm not in {"ed25519", "ecdsa-p256"}:
        raise ConfigError(
            f"keys.signing_algorithm: {config.keys.signing_algorithm!r} "
            "is not ed25519 or ecdsa-p256"
        )


def build_config(home: Path, document: Mapping[str, Any], environ: Mapping[str, str]) -> Config:
    """Merge a parsed TOML document and environment overrides into a validated Config."""
    for section_name, body in document.items():
        if section_name not in SECTIONS:
            raise ConfigError(f"{section_name}: unknown config section")
        if not isinstance(body, Mapping):
            raise ConfigError(f"{section_name}: must be a table")
    sections: dict[str, Any] = {}
    for section_name, section_type in SECTIONS.items():
        body = document.get(section_name, {})
        field_types = _section_types(section_type)
        values: dict[str, Any] = {}
        for key, raw in body.items():
            if key not in field_types:
                raise ConfigError(f"{section_name}.{key}: unknown config key")
            values[key] = _coerce(raw, field_types[key], f"{section_name}.{key}", "config file")
        for key, kind in field_types.items():
            var = f"{ENV_PREFIX}{section_name.upper()}__{key.upper()}"
            if var in environ:
                values[key] = _coerce(environ[var], kind, f"{section_name}.{key}", var)
        sections[section_name] = section_type(**values)
    known_vars = {
        f"{ENV_PREFIX}{s.upper()}__{k.upper()}"
        for s, t in SECTIONS.items()
        for k in _section_types(t)
    }
    for var in environ:
        if var.startswith(ENV_PREFIX) and "__" in var and var not in known_vars:
            raise ConfigError(f"{var}: no such config key")
    config = Config(home=home, **sections)
    _validate(config)
    return config


def load_config(home: Path, environ: Mapping[str, str]) -> Config:
    path = home / CONFIG_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no node here (run `mragw init` first)") from None
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from error
    return build_config(home, document, environ)


def config_document(config: Config) -> dict[str, Any]:
    """Every section with its current values, as the TOML file holds them."""
    return {name: dataclasses.asdict(getattr(config, name)) for name in SECTIONS}


def write_config(config: Config) -> Path:
    """Write every section with its current values, so the file documents all keys."""
    document = config_document(config)
    path = config.home / CONFIG_FILE
    path.write_text(tomli_w.dumps(document), encoding="utf-8")
    return path
