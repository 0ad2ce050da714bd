"""Ed25519 identities: keys on disk, node ids, signing, reply authentication."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from flp2p.identity import (
    ContributionAuthenticator,
    Identity,
    IdentityFileError,
    KeyFileExposed,
    check_key_file,
    node_id_of,
)
from flp2p.signatures import contribution_message, verify_ed25519
from strategies.records import update_sha256

# RFC 8032, section 7.1, TEST 1 (empty message).
RFC_SECRET = bytes.fromhex(
    "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
)
RFC_PUBLIC = bytes.fromhex(
    "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
)
RFC_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555"
    "fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def test_rfc8032_vector_signs_and_verifies() -> None:
    identity = Identity.from_private_bytes(RFC_SECRET)
    assert identity.public_key == RFC_PUBLIC
    assert identity.sign(b"") == RFC_SIGNATURE
    assert verify_ed25519(RFC_PUBLIC, RFC_SIGNATURE, b"")
    assert not verify_ed25519(RFC_PUBLIC, RFC_SIGNATURE, b"\x00")


def test_node_id_is_hex_sha256_of_raw_public_key() -> None:
    identity = Identity.from_private_bytes(RFC_SECRET)
    assert identity.node_id == hashlib.sha256(RFC_PUBLIC).hexdigest()
    assert node_id_of(RFC_PUBLIC) == identity.node_id
    assert "9d61b1" not in repr(identity)  # the secret never shows up


@pytest.mark.parametrize("bad", [b"", b"\x01" * 31, b"\x01" * 33, "ab" * 16])
def test_node_id_of_rejects_wrong_keys(bad: object) -> None:
    with pytest.raises(ValueError, match="32 raw bytes"):
        node_id_of(bad)  # type: ignore[arg-type]


def test_signature_does_not_verify_under_other_key_or_data() -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    signature = alice.sign(b"round 3")
    assert verify_ed25519(alice.public_key, signature, b"round 3")
    assert not verify_ed25519(mallory.public_key, signature, b"round 3")
    assert not verify_ed25519(alice.public_key, signature, b"round 4")
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not verify_ed25519(alice.public_key, flipped, b"round 3")


def test_load_or_create_writes_owner_only_key_and_reloads_it(tmp_path: Path) -> None:
    key_path = tmp_path / "keys" / "node.pem"
    created = Identity.load_or_create(key_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path.parent.stat().st_mode) == 0o700
    reloaded = Identity.load_or_create(key_path)
    assert reloaded.node_id == created.node_id
    assert verify_ed25519(created.public_key, reloaded.sign(b"m"), b"m")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_refuses_key_readable_by_others(tmp_path: Path, mode: int) -> None:
    key_path = tmp_path / "node.pem"
    Identity.load_or_create(key_path)
    os.chmod(key_path, mode)
    with pytest.raises(PermissionError, match="chmod 600"):
        Identity.load_or_create(key_path)


def test_refuses_non_ed25519_key(tmp_path: Path) -> None:
    key_path = tmp_path / "x25519.pem"
    key_path.write_bytes(
        X25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    with pytest.raises(ValueError, match="not an Ed25519"):
        Identity.load_or_create(key_path)


def test_save_never_overwrites(tmp_path: Path) -> None:
    key_path = tmp_path / "node.pem"
    first = Identity.load_or_create(key_path)
    with pytest.raises(FileExistsError):
        Identity.generate().save(key_path)
    assert Identity.load_or_create(key_path).node_id == first.node_id


FEDERATION = "f" * 64


@pytest.fixture
def signed_reply() -> tuple[Identity, str, bytes]:
    identity = Identity.generate()
    digest = update_sha256({"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    return identity, digest, identity.sign(contribution_message(FEDERATION, 3, digest))


def test_authentic_reply_is_accepted(signed_reply: tuple[Identity, str, bytes]) -> None:
    identity, digest, signature = signed_reply
    authenticate = ContributionAuthenticator(FEDERATION)
    assert (
        authenticate(identity.node_id, identity.public_key, signature, 3, digest)
        is None
    )
    # The signature is over exactly the shared message definition.
    message = contribution_message(FEDERATION, 3, digest)
    assert verify_ed25519(identity.public_key, signature, message)


def test_rejection_reasons(signed_reply: tuple[Identity, str, bytes]) -> None:
    identity, digest, signature = signed_reply
    other = Identity.generate()
    check = ContributionAuthenticator(FEDERATION)
    node_id, key = identity.node_id, identity.public_key
    assert check(node_id, None, signature, 3, digest) == "unsigned reply"
    assert check(node_id, key, None, 3, digest) == "unsigned reply"
    assert check(node_id, b"", b"", 3, digest) == "unsigned reply"
    mismatch = "identity does not match public key"
    assert check(other.node_id, key, signature, 3, digest) == mismatch
    assert check(node_id, other.public_key, signature, 3, digest) == mismatch
    assert check(node_id, b"\x01" * 7, signature, 3, digest) == mismatch
    # Replays into another round, federation or update all fail.
    assert check(node_id, key, signature, 4, digest) == "bad signature"
    assert check(node_id, key, signature, 3, "0" * 64) == "bad signature"
    elsewhere = ContributionAuthenticator("e" * 64)
    assert elsewhere(node_id, key, signature, 3, digest) == "bad signature"
    # Another key signing on the victim's behalf is caught by the key binding.
    forged = other.sign(contribution_message(FEDERATION, 3, digest))
    assert check(node_id, key, forged, 3, digest) == "bad signature"


def test_authenticator_needs_a_federation() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        ContributionAuthenticator("")


@pytest.mark.parametrize(
    "content", [b"", b"garbage\n", b"-----BEGIN PRIVATE KEY-----\n"]
)
def test_corrupt_or_empty_key_file_is_named_as_such(
    tmp_path: Path, content: bytes
) -> None:
    key_path = tmp_path / "node.pem"
    key_path.write_bytes(content)
    key_path.chmod(0o600)
    with pytest.raises(IdentityFileError, match="not an flp2p identity file"):
        Identity.load_or_create(key_path)


def test_folder_is_no_key_file(tmp_path: Path) -> None:
    with pytest.raises(IdentityFileError, match="is a folder"):
        Identity.load_or_create(tmp_path)
    with pytest.raises(IdentityFileError, match="is a folder"):
        check_key_file(tmp_path)


def test_exposed_key_is_refused_before_parsing(tmp_path: Path) -> None:
    key_path = tmp_path / "node.pem"
    key_path.write_bytes(b"garbage")
    key_path.chmod(0o644)
    # The mode is the first thing said: fixing the content first would not help.
    with pytest.raises(KeyFileExposed, match=f"chmod 600 {key_path}"):
        check_key_file(key_path)
    check_key_file(tmp_path / "new.pem")  # a key is created there: fine
