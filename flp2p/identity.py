"""Ed25519 identities: keys on disk, signatures, rotation and reply authentication.

A peer *is* its Ed25519 public key (RFC 8032). Everything that must survive a
re-registration with Flower (reputation, rewards, bans, DHT records) is keyed by the
node id, the hex SHA-256 of the raw 32-byte public key, so it is short, fixed-length
and cannot be claimed without the matching private key.

Signatures use the ``cryptography`` package; :func:`verify` never raises, so callers
can feed it anything a peer sent.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from strategies.records import contribution_message

PUBLIC_KEY_BYTES = 32
"""Length of a raw Ed25519 public key (RFC 8032, section 5.1.5)."""
SIGNATURE_BYTES = 64
"""Length of an Ed25519 signature (RFC 8032, section 5.1.6)."""
KEY_FILE_MODE = 0o600
"""Owner read/write only: a private key readable by others is a leaked key."""
KEY_DIR_MODE = 0o700
"""Mode of a key directory this module creates."""

_ROTATION_DOMAIN = b"flp2p/rotation/v1\n"


def node_id_of(public_key: bytes) -> str:
    """Return the node id of a raw Ed25519 public key: hex SHA-256 of its 32 bytes.

    Raises
    ------
    ValueError
        If ``public_key`` is not 32 bytes.
    """
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_BYTES:
        raise ValueError(
            f"an Ed25519 public key is {PUBLIC_KEY_BYTES} raw bytes, got "
            f"{type(public_key).__name__} of length {_length(public_key)}"
        )
    return hashlib.sha256(public_key).hexdigest()


def verify(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """Return whether ``signature`` is a valid Ed25519 signature of ``data``.

    Never raises: a malformed key, a signature of the wrong length or a value of the
    wrong type simply yields ``False``, so untrusted input can be passed as is.
    """
    if not (
        isinstance(public_key, bytes)
        and isinstance(signature, bytes)
        and isinstance(data, bytes)
        and len(public_key) == PUBLIC_KEY_BYTES
        and len(signature) == SIGNATURE_BYTES
    ):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class RotationRecord:
    """Statement that an identity moved from one key to another.

    Signed by the old key (authority: only the current owner may hand over) and by the
    new key (proof of possession: nobody can rotate *to* a key they do not hold, and
    so claim another peer's history).

    Attributes
    ----------
    old_public_key, new_public_key : bytes
        Raw 32-byte Ed25519 public keys.
    timestamp : float
        Unix seconds when the rotation was made.
    old_signature, new_signature : bytes
        Signatures of :meth:`message` by the old and the new key.
    """

    old_public_key: bytes
    new_public_key: bytes
    timestamp: float
    old_signature: bytes
    new_signature: bytes

    def message(self) -> bytes:
        """The exact bytes both keys sign."""
        return rotation_message(
            self.old_public_key, self.new_public_key, self.timestamp
        )


def rotation_message(old_public_key: bytes, new_public_key: bytes, ts: float) -> bytes:
    """Bytes signed for a key rotation (domain-separated from every other message)."""
    return (
        _ROTATION_DOMAIN
        + old_public_key.hex().encode()
        + b"\n"
        + new_public_key.hex().encode()
        + b"\n"
        + repr(float(ts)).encode()
    )


def verify_rotation(record: RotationRecord) -> bool:
    """Return whether both signatures of ``record`` are valid (never raises)."""
    try:
        message = record.message()
    except (AttributeError, TypeError, ValueError):
        return False
    return (
        record.old_public_key != record.new_public_key
        and verify(record.old_public_key, record.old_signature, message)
        and verify(record.new_public_key, record.new_signature, message)
    )


class Identity:
    """An Ed25519 key pair and the node id derived from it.

    Parameters
    ----------
    private_key : Ed25519PrivateKey
        The secret key; use :meth:`generate` or :meth:`load_or_create` rather than
        building one by hand.
    """

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_key: bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.node_id: str = node_id_of(self.public_key)

    def __repr__(self) -> str:
        # Never print key material; the node id is enough to tell identities apart.
        return f"Identity(node_id={self.node_id[:16]}…)"

    @classmethod
    def generate(cls) -> Identity:
        """Return a fresh random identity."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> Identity:
        """Rebuild an identity from its 32-byte raw private key (tests, simulation)."""
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> Identity:
        """Load the key at ``path``, or create one there if the file does not exist.

        A new key is written as unencrypted PKCS#8 PEM with mode ``0o600``; a missing
        parent directory is created with mode ``0o700``.

        Raises
        ------
        PermissionError
            If an existing key file is readable or writable by group or others.
        ValueError
            If the file is not an Ed25519 private key.
        """
        key_path = Path(path)
        if key_path.exists():
            return cls._load(key_path)
        identity = cls.generate()
        identity.save(key_path)
        return identity

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """Load the existing key at ``path`` (never create one).

        For processes that act *as* a peer but must not invent its identity, such
        as the ClientApp a peer's SuperNode starts.

        Raises
        ------
        FileNotFoundError
            If there is no key at ``path``.
        PermissionError, ValueError
            As for :meth:`load_or_create`.
        """
        key_path = Path(path)
        if not key_path.exists():
            raise FileNotFoundError(f"no identity key at {key_path}")
        return cls._load(key_path)

    @classmethod
    def _load(cls, key_path: Path) -> Identity:
        mode = stat.S_IMODE(key_path.stat().st_mode)
        if mode & 0o077:
            raise PermissionError(
                f"refusing to load private key {key_path}: mode {mode:#o} lets group "
                f"or others access it; run `chmod 600 {key_path}` if it was not leaked"
            )
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(
                f"{key_path} holds a {type(key).__name__}, not an Ed25519 private key"
            )
        return cls(key)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the private key to a new file ``path`` with mode ``0o600``.

        Raises
        ------
        FileExistsError
            If ``path`` exists: overwriting a key silently would lose an identity.
        """
        key_path = Path(path)
        if not key_path.parent.exists():
            key_path.parent.mkdir(mode=KEY_DIR_MODE, parents=True)
            # mkdir's mode is filtered by the umask; make it exact.
            key_path.parent.chmod(KEY_DIR_MODE)
        pem = self._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # O_EXCL + the mode at creation: the key is never briefly world-readable.
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
        try:
            os.fchmod(fd, KEY_FILE_MODE)
            os.write(fd, pem)
        finally:
            os.close(fd)

    def sign(self, data: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``data``."""
        return self._private_key.sign(data)

    def rotate(self, timestamp: float | None = None) -> tuple[Identity, RotationRecord]:
        """Make a new identity and the record that hands this one over to it.

        Parameters
        ----------
        timestamp : float, optional
            Unix seconds to put in the record (default: now).

        Returns
        -------
        tuple[Identity, RotationRecord]
            The new identity (not saved anywhere) and the doubly signed record.
        """
        successor = Identity.generate()
        ts = time.time() if timestamp is None else float(timestamp)
        message = rotation_message(self.public_key, successor.public_key, ts)
        record = RotationRecord(
            old_public_key=self.public_key,
            new_public_key=successor.public_key,
            timestamp=ts,
            old_signature=self.sign(message),
            new_signature=successor.sign(message),
        )
        return successor, record


def sign_contribution(
    identity: Identity, federation: str, server_round: int, update_digest: str
) -> bytes:
    """Client side of :class:`ContributionAuthenticator`: sign one round's update.

    Signs :func:`strategies.records.contribution_message` so the aggregator can check
    that the update with digest ``update_digest``
    (:func:`strategies.records.update_sha256`) was sent by ``identity`` for
    ``server_round`` of ``federation`` and no other.
    """
    return identity.sign(contribution_message(federation, server_round, update_digest))


class ContributionAuthenticator:
    """Ed25519 :class:`strategies.records.ReplyAuthenticator` for one federation.

    Parameters
    ----------
    federation : str
        Federation id bound into every signed message, so a signature made for one
        federation cannot be replayed in another.
    """

    def __init__(self, federation: str) -> None:
        if not federation:
            raise ValueError("federation must be a non-empty string")
        self.federation = federation

    def __call__(
        self,
        identity: str,
        public_key: bytes | None,
        signature: bytes | None,
        server_round: int,
        update_digest: str,
    ) -> str | None:
        """Return ``None`` if the reply is authentic, else why it is not."""
        if not public_key or not signature:
            return "unsigned reply"
        try:
            claimed_by_key = node_id_of(public_key)
        except ValueError:
            return "identity does not match public key"
        if claimed_by_key != identity:
            return "identity does not match public key"
        message = contribution_message(self.federation, server_round, update_digest)
        if not verify(public_key, signature, message):
            return "bad signature"
        return None


def _length(value: object) -> int | str:
    try:
        return len(value)  # type: ignore[arg-type]
    except TypeError:
        return "n/a"
