"""C2SP tlog-checkpoint bodies in C2SP signed notes, signed with Ed25519.

Format (https://c2sp.org/tlog-checkpoint, https://c2sp.org/signed-note)::

    <origin>\\n
    <tree size, ASCII decimal, no leading zeros>\\n
    <base64 of the 32-byte RFC 6962 root hash>\\n
    [<non-empty extension line>\\n ...]
    \\n
    — <key name> <base64(4-byte key hint || 64-byte Ed25519 signature)>\\n
    [... more signature lines: cosignatures]

Invariants:

* A signature covers the note text (body) including its final newline, and nothing else.
* The Ed25519 key hint is SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4].
* Parsing is strict and bounded: UTF-8, no control characters except newline, no empty body
  lines (so the body/signature split is unambiguous; checkpoints never contain any), a final
  newline, at least one and at most :data:`MAX_SIGNATURES` signature lines, no duplicate
  signature lines, at most :data:`MAX_NOTE_BYTES` bytes, canonical base64 everywhere.
* Verification ignores signature lines whose (name, key hint) pair is unknown, as C2SP requires,
  rejects the note if a *known* key's signature fails (the C2SP "SHOULD"), and demands a valid
  signature from the required name. Every failure raises a
  :class:`~crypto.errors.VerificationError` (parse failures: its subclass
  :class:`~crypto.errors.MalformedNoteError`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from crypto.errors import MalformedNoteError, UnsupportedKeyTypeError, VerificationError
from crypto.keys import ED25519_SIGNATURE_SIZE, PublicKey, Scheme, Signer
from crypto.merkle import HASH_SIZE

__all__ = [
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "Checkpoint",
    "NoteSignature",
    "SignedNote",
    "add_signature",
    "ed25519_key_hint",
    "parse_checkpoint_body",
    "parse_note",
    "sign_checkpoint",
    "verify_checkpoint",
    "verify_note",
]

#: C2SP requires accepting at least 16 signatures; 100 is the cap of Go's sumdb/note.
MAX_SIGNATURES = 100
#: Generous for 100 Ed25519 lines and a checkpoint body, small enough to bound parsing work.
MAX_NOTE_BYTES = 64 * 1024
KEY_HINT_SIZE = 4
_SIG_TYPE_ED25519 = b"\x01"
_SIG_PREFIX = "\u2014 "  # em dash, space
# Key names: non-empty, no Unicode whitespace, no '+'. (\s covers the Unicode spaces.)
_KEY_NAME = re.compile(r"[^\s+]+")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


def _b64_strict(value: str, what: str) -> bytes:
    try:
        decoded = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise MalformedNoteError(f"{what} is not valid base64") from exc
    if base64.b64encode(decoded).decode("ascii") != value:
        raise MalformedNoteError(f"{what} is not canonical base64")
    return decoded


def _check_text_line(line: str, what: str) -> None:
    if not line:
        raise MalformedNoteError(f"{what} is empty")
    if "\n" in line or _CONTROL.search(line):
        raise MalformedNoteError(f"{what} contains a newline or control character")


def check_key_name(name: str) -> None:
    if not _KEY_NAME.fullmatch(name):
        raise MalformedNoteError(
            f"key name {name!r} must be non-empty and contain no spaces or '+'"
        )


def ed25519_key_hint(name: str, key: PublicKey) -> bytes:
    """C2SP signed-note key ID of an Ed25519 key: SHA-256(name || 0x0A || 0x01 || key)[:4]."""
    check_key_name(name)
    raw = key.ed25519_raw()
    return hashlib.sha256(name.encode("utf-8") + b"\n" + _SIG_TYPE_ED25519 + raw).digest()[
        :KEY_HINT_SIZE
    ]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's tree head: origin, size and root (plus rarely used opaque extension lines)."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_text_line(self.origin, "checkpoint origin")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise MalformedNoteError(f"checkpoint size must be a non-negative int: {self.size!r}")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != HASH_SIZE:
            raise MalformedNoteError(f"checkpoint root hash must be {HASH_SIZE} bytes")
        if not isinstance(self.extensions, tuple):
            raise MalformedNoteError("checkpoint extensions must be a tuple of str")
        for i, line in enumerate(self.extensions):
            _check_text_line(line, f"checkpoint extension line {i}")

    def body(self) -> bytes:
        """The note text the signatures cover (UTF-8, every line newline-terminated)."""
        lines = [
            self.origin,
            str(self.size),
            base64.b64encode(self.root_hash).decode("ascii"),
            *self.extensions,
        ]
        return "".join(f"{line}\n" for line in lines).encode("utf-8")


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: key name, 4-byte key hint and the signature bytes."""

    name: str
    key_hint: bytes
    signature: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if len(self.key_hint) != KEY_HINT_SIZE or not self.signature:
            raise MalformedNoteError("a note signature needs a 4-byte key hint and a signature")

    def line(self) -> str:
        blob = base64.b64encode(self.key_hint + self.signature).decode("ascii")
        return f"{_SIG_PREFIX}{self.name} {blob}\n"


@dataclass(frozen=True, slots=True)
class SignedNote:
    """A parsed or freshly signed note: the exact body bytes and every signature line, in order.

    Cosigning appends a line (:func:`add_signature`) without touching the body or other lines.
    """

    body: bytes
    signatures: tuple[NoteSignature, ...] = field(default_factory=tuple)

    def to_bytes(self) -> bytes:
        lines = "".join(s.line() for s in self.signatures)
        return self.body + b"\n" + lines.encode("utf-8")

    def to_text(self) -> str:
        return self.to_bytes().decode("utf-8")

    def checkpoint(self) -> Checkpoint:
        """Parse the body as a checkpoint (does NOT verify anything)."""
        return parse_checkpoint_body(self.body)


def _sign_body(body: bytes, name: str, signer: Signer) -> NoteSignature:
    if signer.scheme is not Scheme.ED25519:
        raise UnsupportedKeyTypeError(
            f"C2SP note signatures here are Ed25519 only; key {signer.key_id} is "
            f"{signer.scheme.value}"
        )
    return NoteSignature(name, ed25519_key_hint(name, signer.public_key), signer.sign(body))


def sign_checkpoint(checkpoint: Checkpoint, name: str, signer: Signer) -> str:
    """Sign ``checkpoint`` as key ``name`` (normally the origin); return the note text."""
    body = checkpoint.body()
    return SignedNote(body, (_sign_body(body, name, signer),)).to_text()


def add_signature(note: SignedNote | str | bytes, name: str, signer: Signer) -> SignedNote:
    """Append a (co)signature by ``signer`` as ``name``; verify the note first if it matters.

    Raises MalformedNoteError if an identical (name, key hint) already signed (the note
    would then carry two lines for one key, which verifiers treat as ambiguous).
    """
    parsed = note if isinstance(note, SignedNote) else parse_note(note)
    new = _sign_body(parsed.body, name, signer)
    if any((s.name, s.key_hint) == (new.name, new.key_hint) for s in parsed.signatures):
        raise MalformedNoteError(f"note is already signed by key {name!r}")
    if len(parsed.signatures) >= MAX_SIGNATURES:
        raise MalformedNoteError(f"note already has {MAX_SIGNATURES} signatures")
    return SignedNote(parsed.body, (*parsed.signatures, new))


def _parse_signature_line(line: str, number: int) -> NoteSignature:
    what = f"signature line {number}"
    if not line.startswith(_SIG_PREFIX):
        raise MalformedNoteError(f"{what} does not start with an em dash and a space")
    rest = line[len(_SIG_PREFIX) :]
    parts = rest.split(" ")
    if len(parts) != 2:
        raise MalformedNoteError(f"{what} must be '— <name> <base64>'")
    name, blob = parts
    check_key_name(name)
    raw = _b64_strict(blob, f"{what} signature")
    if len(raw) <= KEY_HINT_SIZE:
        raise MalformedNoteError(f"{what} signature is too short ({len(raw)} bytes)")
    return NoteSignature(name, raw[:KEY_HINT_SIZE], raw[KEY_HINT_SIZE:])


def parse_note(note: str | bytes) -> SignedNote:
    """Parse a signed note strictly (see the module docstring). Verifies nothing."""
    raw = note.encode("utf-8") if isinstance(note, str) else bytes(note)
    if len(raw) > MAX_NOTE_BYTES:
        raise MalformedNoteError(f"note is {len(raw)} bytes, more than {MAX_NOTE_BYTES}")
    try:
        text = raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise MalformedNoteError("note is not valid UTF-8") from exc
    if _CONTROL.search(text):
        raise MalformedNoteError("note contains a control character other than newline")
    if not text.endswith("\n"):
        raise MalformedNoteError("note does not end with a newline")
    split = text.find("\n\n")
    if split < 0:
        raise MalformedNoteError("note has no blank line separating text and signatures")
    body_text = text[: split + 1]
    sig_text = text[split + 2 :]
    if not body_text.strip("\n"):
        raise MalformedNoteError("note text is empty")
    if "\n\n" in sig_text or sig_text.startswith("\n"):
        raise MalformedNoteError("note has an empty line among the signature lines")
    sig_lines = sig_text.splitlines(keepends=False)
    if not sig_lines:
        raise MalformedNoteError("note has no signature lines")
    if len(sig_lines) > MAX_SIGNATURES:
        raise MalformedNoteError(
            f"note has {len(sig_lines)} signature lines, at most {MAX_SIGNATURES} allowed"
        )
    if len(set(sig_lines)) != len(sig_lines):
        raise MalformedNoteError("note has duplicate signature lines")
    signatures = tuple(_parse_signature_line(line, i) for i, line in enumerate(sig_lines))
    # The body is kept as the exact received bytes: signatures are checked over them.
    return SignedNote(body_text.encode("utf-8"), signatures)


def parse_checkpoint_body(body: bytes) -> Checkpoint:
    """Parse checkpoint note text (origin, size, root, extensions), strictly."""
    try:
        text = body.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise MalformedNoteError("checkpoint text is not valid UTF-8") from exc
    if not text.endswith("\n"):
        raise MalformedNoteError("checkpoint text does not end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise MalformedNoteError(f"checkpoint text has {len(lines)} lines, at least 3 required")
    origin, size_text, root_text, *extensions = lines
    for i, line in enumerate(lines):
        if not line:
            raise MalformedNoteError(f"checkpoint line {i + 1} is empty")
    if not _DECIMAL.fullmatch(size_text):
        raise MalformedNoteError(
            "checkpoint tree size is not canonical decimal (digits, no leading zeros)"
        )
    if len(size_text) > 20 or int(size_text) >= 1 << 64:
        raise MalformedNoteError("checkpoint tree size exceeds 64 bits")
    root = _b64_strict(root_text, "checkpoint root hash")
    if len(root) != HASH_SIZE:
        raise MalformedNoteError(f"checkpoint root hash is {len(root)} bytes, not {HASH_SIZE}")
    return Checkpoint(origin, int(size_text), root, tuple(extensions))


def verify_note(note: SignedNote | str | bytes, verifiers: Mapping[str, PublicKey]) -> set[str]:
    """Verify every signature line from a known (name, key hint); return the names that verified.

    Lines from unknown names, or from a known name with another key hint, are ignored. A line
    from a known key whose signature fails makes the whole note fail.
    """
    parsed = note if isinstance(note, SignedNote) else parse_note(note)
    known: dict[tuple[str, bytes], PublicKey] = {}
    for name, key in verifiers.items():
        if key.scheme is not Scheme.ED25519:
            raise UnsupportedKeyTypeError(
                f"checkpoint verifier {name!r} must be Ed25519, key {key.key_id} is "
                f"{key.scheme.value}"
            )
        known[(name, ed25519_key_hint(name, key))] = key
    verified: set[str] = set()
    for sig in parsed.signatures:
        trusted = known.get((sig.name, sig.key_hint))
        if trusted is None:
            continue
        if len(sig.signature) != ED25519_SIGNATURE_SIZE:
            raise VerificationError(
                f"signature by {sig.name!r} is {len(sig.signature)} bytes, "
                f"not {ED25519_SIGNATURE_SIZE}"
            )
        try:
            trusted.verify(sig.signature, parsed.body)
        except VerificationError as exc:
            raise VerificationError(f"note signature by {sig.name!r} does not verify") from exc
        verified.add(sig.name)
    return verified


def verify_checkpoint(
    note: SignedNote | str | bytes,
    verifiers: Mapping[str, PublicKey],
    required_name: str,
) -> Checkpoint:
    """Verify a checkpoint note and return its checkpoint.

    ``verifiers`` maps key names to Ed25519 keys (the log's, and optionally known witnesses');
    a valid signature by ``required_name`` is mandatory.
    """
    if required_name not in verifiers:
        raise VerificationError(f"no verifier key configured for required name {required_name!r}")
    parsed = note if isinstance(note, SignedNote) else parse_note(note)
    verified = verify_note(parsed, verifiers)
    if required_name not in verified:
        raise VerificationError(f"checkpoint has no signature by required key {required_name!r}")
    # Only signed text is interpreted: the body is parsed after the signature checked out.
    return parse_checkpoint_body(parsed.body)
