"""Canonical encoding, signing and DHT keys of signed records.

A record travels through kademlia as one ``bytes`` value: the compact, sorted-key
JSON of its envelope (kind, subject, payload, signer public key, sequence number,
expiry, signature). The signature covers the same encoding minus the signature field,
prefixed by a domain tag, so the bytes a verifier checks are a pure function of the
record's fields (cf. BEP 44's signed mutable items and hivemind's
``RSASignatureValidator``, which bind owner and value the same way).

The DHT key is derived from kind and subject: a writer cannot choose where a record
lands, only what it is about, and validation recomputes the key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flp2p.signatures import (
    DHT_RECORD_DOMAIN,
    JSONValue,
    NotCanonicalJSON,
    Signer,
    canonical_dht_json,
    verify_ed25519,
)

MAX_RECORD_BYTES = 8000
"""Largest encoded record accepted anywhere.

rpcudp refuses requests above 8192 bytes after msgpack; a STORE request carries two
20-byte ids besides the value, so 8137 bytes is the largest value that still fits
(measured, see ``tests/test_dht_records.py``). The margin leaves room for framing.
"""

# Hashed into DHT keys, never signed, hence not in flp2p.signatures.SIGNING_DOMAINS.
_KEY_DOMAIN = "flp2p/dht-key/v1"
_ENVELOPE_FIELDS = frozenset(
    {"kind", "subject", "payload", "public_key", "seq", "expires_at", "signature"}
)


class RecordError(ValueError):
    """A value is not a well-formed, correctly signed record."""


def _canonical(value: Any) -> bytes:
    """:func:`~flp2p.signatures.canonical_dht_json`, raising :class:`RecordError`."""
    try:
        return canonical_dht_json(value)
    except NotCanonicalJSON as error:
        raise RecordError(str(error)) from None


def record_key(kind: str, subject: str) -> bytes:
    """The 160-bit kademlia key where the record about ``subject`` of ``kind`` lives.

    SHA-256 truncated to kademlia's 20-byte id space; SHA-256 rather than kademlia's
    SHA-1 ``digest`` because the key is a commitment checked on every read.
    """
    return hashlib.sha256(f"{_KEY_DOMAIN}\n{kind}\n{subject}".encode()).digest()[:20]


@dataclass(frozen=True)
class SignedRecord:
    """The signed envelope of every DHT record.

    Attributes
    ----------
    kind : str
        Record kind (``"node"``, ``"genesis"``, ``"lease"``).
    subject : str
        What the record is about (a node id, a federation id); with ``kind`` it
        determines the DHT key (:func:`record_key`).
    payload : Mapping[str, JSONValue]
        Kind-specific content (see :mod:`flp2p.dht.kinds`).
    public_key : bytes
        Raw Ed25519 public key of the signer.
    seq : int
        Version; a stored record is replaced only by one with a larger ``seq``.
    expires_at : float
        Unix seconds after which every reader and holder ignores the record.
    signature : bytes
        Ed25519 signature of :meth:`signing_bytes`.
    """

    kind: str
    subject: str
    payload: Mapping[str, JSONValue]
    public_key: bytes
    seq: int
    expires_at: float
    signature: bytes = b""

    @property
    def dht_key(self) -> bytes:
        """Where this record must be stored (:func:`record_key`)."""
        return record_key(self.kind, self.subject)

    def _fields(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "subject": self.subject,
            "payload": dict(self.payload),
            "public_key": self.public_key.hex(),
            "seq": self.seq,
            "expires_at": self.expires_at,
        }

    def signing_bytes(self) -> bytes:
        """The exact bytes the signer signs (domain tag + canonical fields)."""
        return DHT_RECORD_DOMAIN + _canonical(self._fields())

    def signature_is_valid(self) -> bool:
        """Whether :attr:`signature` is the signer's signature of this record."""
        return verify_ed25519(self.public_key, self.signature, self.signing_bytes())

    def encode(self) -> bytes:
        """The value stored in kademlia."""
        return _canonical({**self._fields(), "signature": self.signature.hex()})

    @classmethod
    def decode(cls, raw: object) -> SignedRecord:
        """Parse a stored value; checks the structure, not the signature.

        Raises
        ------
        RecordError
            If ``raw`` is not bytes holding a complete, well-typed envelope.
        """
        if not isinstance(raw, bytes):
            raise RecordError(f"record must be bytes, got {type(raw).__name__}")
        try:
            fields = json.loads(raw, parse_constant=_refuse_non_finite)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RecordError(f"record is not JSON: {error}") from None
        if not isinstance(fields, dict) or set(fields) != _ENVELOPE_FIELDS:
            raise RecordError(
                f"record must have exactly the fields {sorted(_ENVELOPE_FIELDS)}"
            )
        try:
            record = cls(
                kind=_typed(fields, "kind", str),
                subject=_typed(fields, "subject", str),
                payload=_typed(fields, "payload", dict),
                public_key=bytes.fromhex(_typed(fields, "public_key", str)),
                seq=_typed(fields, "seq", int),
                expires_at=float(_typed(fields, "expires_at", (int, float))),
                signature=bytes.fromhex(_typed(fields, "signature", str)),
            )
        except ValueError as error:
            raise RecordError(f"malformed record: {error}") from None
        return record


def _refuse_non_finite(constant: str) -> float:
    # json.loads accepts NaN and Infinity, which no canonical encoding (hence no
    # signature check) can handle: such a record is malformed, not a crash later.
    raise RecordError(f"record holds {constant}, which JSON does not allow")


def _typed(fields: dict[str, Any], name: str, types: type | tuple[type, ...]) -> Any:
    value = fields[name]
    # bool is an int subclass; a boolean seq or expiry is a type confusion, not data.
    if isinstance(value, bool) or not isinstance(value, types):
        raise RecordError(f"record field {name!r} has type {type(value).__name__}")
    return value


def sign_record(
    identity: Signer,
    kind: str,
    subject: str,
    payload: Mapping[str, JSONValue],
    seq: int,
    expires_at: float,
) -> SignedRecord:
    """Build and sign a record with ``identity``.

    Raises
    ------
    RecordError
        If the payload cannot be encoded or the encoded record exceeds
        :data:`MAX_RECORD_BYTES`.
    """
    if seq < 0:
        raise RecordError(f"seq must be non-negative, got {seq}")
    unsigned = SignedRecord(
        kind, subject, dict(payload), identity.public_key, seq, float(expires_at)
    )
    record = SignedRecord(
        kind,
        subject,
        dict(payload),
        identity.public_key,
        seq,
        float(expires_at),
        identity.sign(unsigned.signing_bytes()),
    )
    size = len(record.encode())
    if size > MAX_RECORD_BYTES:
        raise RecordError(
            f"encoded {kind} record is {size} bytes, above the {MAX_RECORD_BYTES}-byte"
            " limit of one kademlia STORE"
        )
    return record
