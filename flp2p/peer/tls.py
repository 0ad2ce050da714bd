"""Self-signed SuperLink certificates and fingerprint pinning.

Peers do not share a certificate authority. The aggregator therefore signs its own
certificate and publishes the SHA-256 of its DER encoding in the signed lease; a client
fetches the certificate the SuperLink presents, accepts it only if its fingerprint
equals the lease's, and then hands exactly that certificate to the SuperNode as its
only root of trust (certificate pinning, RFC 7469 §2.4 — pinning the whole
certificate rather than the key).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from flp2p.peer.addresses import split_host_port

INSECURE_FINGERPRINT = "0" * 64
"""Fingerprint a lease carries when its SuperLink runs without TLS (``--insecure``)."""
CERTIFICATE_LIFETIME = datetime.timedelta(days=7)
"""Validity of a generated certificate; a new aggregator makes a new one anyway."""


class FingerprintMismatch(ConnectionError):
    """The SuperLink presented a certificate other than the one the lease pins."""


@dataclass(frozen=True)
class TlsFiles:
    """Where a generated certificate and key were written, and the pin to publish."""

    certificate: Path
    private_key: Path
    fingerprint: str


def certificate_fingerprint(pem: str | bytes) -> str:
    """Hex SHA-256 of a PEM certificate's DER encoding (what ``openssl x509
    -fingerprint -sha256`` prints, without colons, lower case)."""
    data = pem.encode() if isinstance(pem, str) else pem
    certificate = x509.load_pem_x509_certificate(data)
    return hashlib.sha256(
        certificate.public_bytes(serialization.Encoding.DER)
    ).hexdigest()


def make_self_signed_certificate(
    directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
) -> TlsFiles:
    """Write a self-signed P-256 certificate valid for ``hosts`` into ``directory``.

    IP literals become IP subject-alternative names (gRPC and Python's ``ssl`` check
    SANs, not the common name); other names become DNS SANs.
    """
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flp2p SuperLink")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CERTIFICATE_LIFETIME)
        .add_extension(x509.SubjectAlternativeName(_san(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    files = TlsFiles(
        certificate=directory / "superlink.crt",
        private_key=directory / "superlink.key",
        fingerprint=certificate_fingerprint(pem),
    )
    files.certificate.write_bytes(pem)
    files.private_key.touch(mode=0o600)
    files.private_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def _san(hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def fetch_pinned_certificate(
    address: str, expected_fingerprint: str, timeout: float = 5.0
) -> str:
    """Return the PEM certificate served at ``address`` if it matches the pin.

    The handshake deliberately skips chain verification: trust comes from the
    fingerprint in the signed lease, which is checked here before anything is sent.

    Raises
    ------
    FingerprintMismatch
        If the served certificate is not the pinned one.
    OSError
        If nothing answers TLS at ``address`` within ``timeout``.
    """
    host, port = split_host_port(address)
    pem = ssl.get_server_certificate((host, port), timeout=timeout)
    served = certificate_fingerprint(pem)
    if served != expected_fingerprint:
        raise FingerprintMismatch(
            f"the SuperLink at {address} presented certificate {served[:16]}…, "
            f"but the lease pins {expected_fingerprint[:16]}…"
        )
    return pem
