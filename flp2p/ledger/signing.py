"""Who signs blocks, and how a signature is checked.

``flp2p.identity.Identity`` satisfies :class:`Signer`; the ledger only needs this
much of it, so it also works with any other Ed25519 key holder (tests, HSMs).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

BLOCK_SIGNATURE_DOMAIN = b"flp2p/ledger-block/v1\n"
"""Prefix of every signed block payload, so a block signature can never be replayed
as a signature over anything else the same key signs (contributions, DHT records)."""


@runtime_checkable
class Signer(Protocol):
    """An Ed25519 key pair that can sign blocks."""

    @property
    def public_key(self) -> bytes:
        """Raw 32-byte Ed25519 public key."""
        ...

    @property
    def node_id(self) -> str:
        """Hex SHA-256 of :attr:`public_key`."""
        ...

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature of ``data``."""
        ...


def verify_ed25519(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``data`` by ``public_key``.

    Malformed keys or signatures count as invalid rather than raising: a forged block
    must be refused, not crash the verifier.
    """
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True
