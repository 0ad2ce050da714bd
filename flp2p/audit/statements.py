"""Audit statements: an auditor's signed word that it re-ran a round and got the block.

An auditor re-runs the round from the signed replies the aggregator sent it; if and
only if its model and block body match the aggregator's, it signs a statement
(federation, round, hash of the sorted input digests, hash of the new model, hash of
the block body) under :data:`~flp2p.signatures.AUDIT_STATEMENT_DOMAIN`. The same
statement is the block's co-signature: ⌈2k/3⌉ of them from the round's committee
make the block final (:mod:`flp2p.audit.finality`).

Hashes are hex SHA-256 strings; the block body hash is
:attr:`flp2p.ledger.Block.body_sha256`, the model hash the block's
``aggregate_sha256``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flp2p.signatures import (
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    Signer,
    audit_statement_message,
    canonical_dht_json,
    verify_ed25519,
)

NO_MODEL_SHA256 = "0" * 64
"""``model_sha256`` of a round that produced no model (every reply rejected)."""
_HEX_SHA256_CHARS = 64
_HEX_DIGITS = frozenset("0123456789abcdef")
_STATEMENT_FIELDS = frozenset(
    {
        "federation",
        "server_round",
        "inputs_sha256",
        "model_sha256",
        "body_sha256",
        "auditor_public_key",
        "signature",
    }
)


class StatementError(ValueError):
    """A value is not a well-formed audit statement."""


def is_hex_sha256(value: object) -> bool:
    """Whether ``value`` is 64 lowercase hex digits (a hex SHA-256)."""
    return (
        isinstance(value, str)
        and len(value) == _HEX_SHA256_CHARS
        and set(value) <= _HEX_DIGITS
    )


def inputs_sha256(inputs: Iterable[tuple[str, str]] | Mapping[str, str]) -> str:
    """Hex SHA-256 of a round's inputs: (identity, update digest) sorted by identity.

    The inputs are every reply the round judged, rejected ones too: exactly the
    (``identity``, ``update_sha256``) pairs of the block's contributions, so a
    verifier can recompute the hash from the block alone. The canonical form is the
    ASCII JSON list ``[[identity, digest], ...]`` sorted by
    identity (:func:`~flp2p.signatures.canonical_dht_json`), so the aggregator and
    every auditor hash the same bytes whatever order the replies arrived in.

    Raises
    ------
    StatementError
        If an identity appears twice (one reply per identity and round).
    """
    pairs = list(inputs.items()) if isinstance(inputs, Mapping) else list(inputs)
    identities = [identity for identity, _ in pairs]
    if len(set(identities)) != len(identities):
        raise StatementError("an identity appears twice among the round's inputs")
    ordered = sorted([str(identity), str(digest)] for identity, digest in pairs)
    return hashlib.sha256(canonical_dht_json(ordered)).hexdigest()


@dataclass(frozen=True)
class AuditStatement:
    """One auditor's co-signature of one round's block.

    Attributes
    ----------
    federation : str
        Federation id.
    server_round : int
        The round audited.
    inputs_sha256 : str
        :func:`inputs_sha256` of the replies the auditor re-ran.
    model_sha256 : str
        Hash of the new global model it computed (the block's ``aggregate_sha256``,
        :data:`NO_MODEL_SHA256` when the round produced none).
    body_sha256 : str
        Hash of the block body it checked (:attr:`flp2p.ledger.Block.body_sha256`).
    auditor_public_key : bytes
        Raw Ed25519 key of the auditor.
    signature : bytes
        Ed25519 signature of :meth:`signing_bytes` (empty while unsigned).
    """

    federation: str
    server_round: int
    inputs_sha256: str
    model_sha256: str
    body_sha256: str
    auditor_public_key: bytes
    signature: bytes = b""

    def __post_init__(self) -> None:
        if not isinstance(self.federation, str) or not self.federation:
            raise StatementError("federation must be a non-empty string")
        if "\n" in self.federation:
            raise StatementError("federation must not contain a newline")
        if isinstance(self.server_round, bool) or not isinstance(
            self.server_round, int
        ):
            raise StatementError("server_round must be an integer")
        if self.server_round < 0:
            raise StatementError("server_round must be non-negative")
        for name in ("inputs_sha256", "model_sha256", "body_sha256"):
            if not is_hex_sha256(getattr(self, name)):
                raise StatementError(f"{name} must be 64 lowercase hex characters")
        if not (
            isinstance(self.auditor_public_key, bytes)
            and len(self.auditor_public_key) == PUBLIC_KEY_BYTES
        ):
            raise StatementError("auditor_public_key must be 32 raw bytes")
        if not isinstance(self.signature, bytes) or len(self.signature) not in (
            0,
            SIGNATURE_BYTES,
        ):
            raise StatementError("signature must be empty or 64 raw bytes")

    @property
    def auditor(self) -> str:
        """Node id of the auditor (hex SHA-256 of its key)."""
        return hashlib.sha256(self.auditor_public_key).hexdigest()

    def signing_bytes(self) -> bytes:
        """The exact bytes the auditor signs."""
        return audit_statement_message(
            self.federation,
            self.server_round,
            self.inputs_sha256,
            self.model_sha256,
            self.body_sha256,
        )

    def signature_is_valid(self) -> bool:
        """Whether :attr:`signature` is the auditor's signature of this statement."""
        return verify_ed25519(
            self.auditor_public_key, self.signature, self.signing_bytes()
        )

    def to_json(self) -> dict[str, Any]:
        """JSON form (bytes as hex), for the wire and the ledger."""
        return {
            "federation": self.federation,
            "server_round": self.server_round,
            "inputs_sha256": self.inputs_sha256,
            "model_sha256": self.model_sha256,
            "body_sha256": self.body_sha256,
            "auditor_public_key": self.auditor_public_key.hex(),
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_json(cls, data: object) -> AuditStatement:
        """Parse :meth:`to_json`'s output strictly; checks form, not the signature.

        Raises
        ------
        StatementError
            On missing, extra or mistyped fields.
        """
        if not isinstance(data, Mapping) or set(data) != _STATEMENT_FIELDS:
            raise StatementError(
                f"statement must have exactly the fields {sorted(_STATEMENT_FIELDS)}"
            )
        for name in _STATEMENT_FIELDS - {"server_round"}:
            if not isinstance(data[name], str):
                raise StatementError(f"statement field {name!r} must be a string")
        try:
            key = bytes.fromhex(data["auditor_public_key"])
            signature = bytes.fromhex(data["signature"])
        except ValueError:
            raise StatementError("key and signature must be hex") from None
        return cls(
            federation=data["federation"],
            server_round=data["server_round"],
            inputs_sha256=data["inputs_sha256"],
            model_sha256=data["model_sha256"],
            body_sha256=data["body_sha256"],
            auditor_public_key=key,
            signature=signature,
        )


def sign_statement(
    auditor: Signer,
    federation: str,
    server_round: int,
    inputs_sha256: str,
    model_sha256: str,
    body_sha256: str,
) -> AuditStatement:
    """Build and sign a statement with ``auditor``'s key.

    Raises
    ------
    StatementError
        If a field is malformed.
    """
    unsigned = AuditStatement(
        federation,
        server_round,
        inputs_sha256,
        model_sha256,
        body_sha256,
        auditor.public_key,
    )
    return AuditStatement(
        federation,
        server_round,
        inputs_sha256,
        model_sha256,
        body_sha256,
        auditor.public_key,
        auditor.sign(unsigned.signing_bytes()),
    )


def verify_statement(statement: object) -> bool:
    """Whether ``statement`` is a well-formed, validly signed :class:`AuditStatement`.

    Never raises (untrusted input may be passed as is).
    """
    return isinstance(statement, AuditStatement) and statement.signature_is_valid()
