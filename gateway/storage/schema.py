"""The database schema (SQLAlchemy Core). Alembic migrations under gateway/migrations create it.

Invariants:
- ``logs`` has one row per log this node holds: its own (``own`` true) and one per partner it
  replicates. The row is the head: size, root, compact frontier and latest verified checkpoint.
  Appending to a log first updates its row (``lock_seq``), which takes the row's write lock on
  PostgreSQL and the database write lock on SQLite, so appends from any process are sequenced.
- ``tiles`` holds only hashes of complete subtrees, 256 per tile (C2SP tlog-tiles layout), so
  storing a leaf costs about one row and proofs never need the whole log in memory.
- ``entries`` keeps the exact envelope bytes (never a re-serialisation). ``envelope`` is null
  for an entry a partner sent as its leaf hash only, and after retention or erasure.
- ``entitlements`` is decided when an own entry is appended and never recomputed, so every
  partner sees the same, reproducible disclosure.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# An autoincrementing 64-bit key: SQLite only autoincrements INTEGER PRIMARY KEY.
AutoId = BigInteger().with_variant(Integer, "sqlite")

logs = Table(
    "logs",
    metadata,
    Column("code", String(8), primary_key=True),
    Column("own", Boolean, nullable=False),
    Column("size", BigInteger, nullable=False, default=0),
    Column("root", LargeBinary(32), nullable=False),
    Column("frontier", LargeBinary, nullable=False),
    # The latest verified checkpoint (for a partner's log it may be ahead of ``size``) ...
    Column("checkpoint", Text, nullable=True),
    Column("checkpoint_size", BigInteger, nullable=False, default=0),
    # ... and the latest verified checkpoint of a size this node holds every leaf of: the one
    # evidence and inclusion proofs point to.
    Column("held_checkpoint", Text, nullable=True),
    Column("held_size", BigInteger, nullable=False, default=0),
    Column("verified_at", Float, nullable=True),
    # Replication bookkeeping for a partner's log: entries received, last batch time.
    Column("received_at", Float, nullable=True),
    Column("lock_seq", BigInteger, nullable=False, default=0),
)

tiles = Table(
    "tiles",
    metadata,
    Column("log", String(8), ForeignKey("logs.code"), primary_key=True),
    Column("level", Integer, primary_key=True),
    Column("idx", BigInteger, primary_key=True),
    # Concatenated 32-byte hashes; a partial tile is shorter and is overwritten as it fills.
    Column("hashes", LargeBinary, nullable=False),
)

entries = Table(
    "entries",
    metadata,
    Column("log", String(8), ForeignKey("logs.code"), primary_key=True),
    Column("idx", BigInteger, primary_key=True),
    Column("leaf_hash", LargeBinary(32), nullable=False),
    Column("envelope", LargeBinary, nullable=True),
    Column("payload_type", String(128), nullable=True),
    # unverified | valid | invalid | revoked | early | erased | hash_only (and ``notice``,
    # only inside the transaction that applies a partner's erasure notice: gateway.erasure)
    Column("sig_state", String(16), nullable=False),
    Column("signer", String(64), nullable=True),
    # Digest of the record with its salt cleared: publishing is idempotent on it (own log).
    Column("content_digest", LargeBinary(32), nullable=True),
    Column("appended_at", Float, nullable=False),
    UniqueConstraint("log", "content_digest", name="uq_entries_content"),
    Index("ix_entries_sig_state", "log", "sig_state"),
)

# The decoded index of AEO status records, for Check and for entitlement.
records = Table(
    "records",
    metadata,
    Column("log", String(8), primary_key=True),
    Column("idx", BigInteger, primary_key=True),
    Column("issuer", String(8), nullable=False),
    Column("authorisation", String(64), nullable=False),
    Column("aeo_type", String(32), nullable=False),
    Column("status", String(24), nullable=False),
    Column("status_date", String(10), nullable=False),
    Column("valid_from", String(10), nullable=True),
    Column("valid_until", String(10), nullable=True),
    Column("consent", Boolean, nullable=False),
    Column("country", String(2), nullable=True),
    Column("name", Text, nullable=True),
    # Disclosure entries re-publish a record for one partner; the original keeps it null.
    Column("disclosed_to", String(8), nullable=True),
    Index("ix_records_auth", "log", "issuer", "authorisation", "aeo_type"),
)

# A change feed over indexed records (own and replicated), in the order they became usable:
# QueryService.Watch resumes from a ``seq``.
record_feed = Table(
    "record_feed",
    metadata,
    Column("seq", AutoId, primary_key=True, autoincrement=True),
    Column("log", String(8), nullable=False),
    Column("idx", BigInteger, nullable=False),
)

identifiers = Table(
    "identifiers",
    metadata,
    Column("log", String(8), primary_key=True),
    Column("idx", BigInteger, primary_key=True),
    Column("scheme", String(16), primary_key=True),
    Column("value", String(64), primary_key=True),
    Index("ix_identifiers_value", "value", "scheme"),
)

entitlements = Table(
    "entitlements",
    metadata,
    Column("idx", BigInteger, primary_key=True),
    Column("partner", String(8), primary_key=True),
    Index("ix_entitlements_partner", "partner", "idx"),
)

# Per partner and authorisation (issuer, number, type): entitled now, or entitlement ended.
# Later records of an open authorisation always reach the partner, up to the one that ends it.
disclosure_state = Table(
    "disclosure_state",
    metadata,
    Column("partner", String(8), primary_key=True),
    Column("issuer", String(8), primary_key=True),
    Column("authorisation", String(64), primary_key=True),
    Column("aeo_type", String(32), primary_key=True),
    Column("open", Boolean, nullable=False),
    Column("last_idx", BigInteger, nullable=False),
)

partners = Table(
    "partners",
    metadata,
    Column("code", String(8), primary_key=True),
    Column("root_fingerprint", String(64), nullable=False),
    Column("trust_version", Integer, nullable=False),
    # The partner's trust statement chain as received (DSSE JSON envelopes, newline separated).
    Column("bundle", LargeBinary, nullable=False),
    Column("endpoint", String(255), nullable=False),
    Column("ca_pem", Text, nullable=False),
    Column("suspended", Boolean, nullable=False, default=False),
    Column("quarantined", Boolean, nullable=False, default=False),
    Column("reason", Text, nullable=True),
    Column("added_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

trust_statements = Table(
    "trust_statements",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("envelope", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)

datasets = Table(
    "datasets",
    metadata,
    Column("version", String(64), primary_key=True),
    Column("content", LargeBinary, nullable=False),
    Column("added_at", Float, nullable=False),
    Column("active", Boolean, nullable=False),
)

audit = Table(
    "audit",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("detail", Text, nullable=False),
    # Hash chain: each row commits to the previous one, so an edited trail is detected.
    Column("prev_hash", LargeBinary(32), nullable=False),
    Column("hash", LargeBinary(32), nullable=False),
)

# Witnessing. A cosignature of a partner (``witness``) on a checkpoint of ``log`` (our own log
# or another partner's) that matches the checkpoint we hold of that size: the C2SP
# tlog-cosignature line, ready to append to the checkpoint note in evidence.
cosignatures = Table(
    "cosignatures",
    metadata,
    Column("log", String(8), primary_key=True),
    Column("size", BigInteger, primary_key=True),
    Column("witness", String(8), primary_key=True),
    Column("root", LargeBinary(32), nullable=False),
    Column("line", Text, nullable=False),
    Column("timestamp", BigInteger, nullable=False),
    Column("received_at", Float, nullable=False),
)

# The latest checkpoint of ``log`` that a partner (``witness``) said it holds, kept until our
# replica reaches its size and the two roots are compared (split-view detection).
witnessed = Table(
    "witnessed",
    metadata,
    Column("log", String(8), primary_key=True),
    Column("witness", String(8), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("root", LargeBinary(32), nullable=False),
    Column("note", Text, nullable=False),
    Column("received_at", Float, nullable=False),
)

# Alerts an operator must see (split views, expired trust): raised once, cleared by hand.
alerts = Table(
    "alerts",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("subject", String(8), nullable=False),
    Column("message", Text, nullable=False),
    # Supporting material, e.g. both conflicting checkpoint notes (JSON).
    Column("detail", Text, nullable=False),
    Column("cleared", Boolean, nullable=False, default=False),
    Index("ix_alerts_open", "cleared", "subject"),
)

# Local clients issued by ``mragw clients add``: each a certificate from our CA with one role.
# Certificates of our CA that are not here (the init admin certificate) stay valid; a row with
# ``revoked_at`` set is refused by a running gateway (matched on the certificate fingerprint).
local_clients = Table(
    "local_clients",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("role", String(32), nullable=False),
    # Certificate serial number (lowercase hex) and SHA-256 of its DER (lowercase hex).
    Column("serial", String(40), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("not_after", Float, nullable=False),
    Column("added_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
    UniqueConstraint("fingerprint", name="uq_local_clients_fingerprint"),
)

# Bumped by every change a running gateway must pick up (partners, dataset, publish).
node_state = Table(
    "node_state",
    metadata,
    Column("key", String(32), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

# The ``mragw serve`` replicas of this administration sharing the database (gateway.cluster):
# registered at start, heartbeat every quarter of ``cluster.takeover_s``, ``stopped_at`` set on
# a clean shutdown. Times are epoch seconds of the database's clock on PostgreSQL.
replicas = Table(
    "replicas",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", BigInteger, nullable=False),
    Column("listen", String(300), nullable=False),
    Column("admin_target", String(300), nullable=False),
    Column("http_url", String(300), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("stopped_at", Float, nullable=True),
)

# Work that runs in one replica at a time: ``replication:<partner code>`` and ``job:<name>``.
# Taken with one conditional UPDATE (``holder = me OR expires_at < now``, now from the
# database's clock); ``epoch`` grows at every change of holder; ``holder`` is "" for a lease
# never held.
leases = Table(
    "leases",
    metadata,
    Column("name", String(80), primary_key=True),
    Column("holder", String(64), nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("acquired_at", Float, nullable=False),
    Column("renewed_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)
