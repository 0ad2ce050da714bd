"""Ed25519 identities: keys on disk, node ids and reply authentication.

A peer *is* its Ed25519 public key (RFC 8032). Everything that must survive a
re-registration with Flower (reputation, rewards, bans, DHT records) is keyed by the
node id, the hex SHA-256 of the raw 32-byte public key, so it is short, fixed-length
and cannot be claimed without the matching private key.

What is signed, under which domain, and how a signature is checked lives in
:mod:`flp2p.signatures`; this module holds the private key that signs.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flp2p.signatures import PUBLIC_KEY_BYTES, contribution_message, verify_ed25519

KEY_FILE_MODE = 0o600
"""Owner read/write only: a private key readable by others is a leaked key."""
KEY_DIR_MODE = 0o700
"""Mode of a key directory this module creates."""


class IdentityFileError(ValueError):
    """A key file that cannot serve as this peer's identity.

    The message is one line for the person at the keyboard: the file, what is wrong
    with it and how to fix it.
    """


class KeyFileExposed(IdentityFileError, PermissionError):
    """A key file group or others can read or write: refused, it may have leaked."""


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
        KeyFileExposed
            If an existing key file is readable or writable by group or others.
        IdentityFileError
            If ``path`` is a folder or does not hold an Ed25519 private key.
        """
        key_path = Path(path)
        if key_path.exists() or key_path.is_symlink():
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
        KeyFileExposed, IdentityFileError
            As for :meth:`load_or_create`.
        """
        key_path = Path(path)
        if not key_path.exists():
            raise FileNotFoundError(f"no identity key at {key_path}")
        return cls._load(key_path)

    @classmethod
    def _load(cls, key_path: Path) -> Identity:
        check_key_file(key_path)
        try:
            key = serialization.load_pem_private_key(
                key_path.read_bytes(), password=None
            )
        except (ValueError, TypeError):
            # Empty, truncated, encrypted or not PEM at all; cryptography's own
            # message (a URL and an ASN.1 error name) helps nobody here.
            raise IdentityFileError(
                f"{key_path} is not an flp2p identity file (no readable PEM private "
                "key); point --identity at the right file, or at a path that does "
                "not exist yet to create a new identity there"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityFileError(
                f"{key_path} is not an flp2p identity file: it holds a "
                f"{type(key).__name__}, not an Ed25519 private key"
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


def check_key_file(path: str | os.PathLike[str]) -> None:
    """Refuse, before any key is parsed, a ``--identity`` path that cannot work.

    A path that does not exist passes (a key is created there) unless its parent
    is a file; a folder, an unreadable file, or a file that group or others can
    access does not.

    Raises
    ------
    KeyFileExposed
        If group or others can access the file.
    IdentityFileError
        For every other reason, with the fix in the message.
    """
    key_path = Path(path)
    if not key_path.exists():
        parent = key_path.parent
        if parent.exists() and not parent.is_dir():
            raise IdentityFileError(
                f"cannot create an identity key at {key_path}: {parent} is a file"
            )
        return
    if key_path.is_dir():
        raise IdentityFileError(
            f"{key_path} is a folder, not an flp2p identity file; give the key "
            f"file's path, e.g. --identity {key_path / 'identity.key'}"
        )
    mode = stat.S_IMODE(key_path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileExposed(
            f"refusing to load private key {key_path}: mode {mode:#o} lets group "
            f"or others access it; run `chmod 600 {key_path}` if it was not leaked"
        )
    if not os.access(key_path, os.R_OK):
        raise IdentityFileError(
            f"cannot read the identity key {key_path}; run the peer as the user "
            "who owns it"
        )


class ContributionAuthenticator:
    """Ed25519 :class:`strategies.records.ReplyAuthenticator` for one federation.

    Checks that the reply's public key hashes to the node id it claims and signed
    :func:`flp2p.signatures.contribution_message` of this federation, the round and
    the update's digest (what :func:`flp2p.app.identity_record` signs).

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
        if not verify_ed25519(public_key, signature, message):
            return "bad signature"
        return None


def _length(value: object) -> int | str:
    try:
        return len(value)  # type: ignore[arg-type]
    except TypeError:
        return "n/a"
