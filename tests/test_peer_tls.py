"""Self-signed SuperLink certificates and fingerprint pinning on loopback."""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from flp2p.peer.tls import (
    FingerprintMismatch,
    TlsFiles,
    certificate_fingerprint,
    fetch_pinned_certificate,
    make_self_signed_certificate,
)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_self_signed_certificate(tmp_path_factory.mktemp("tls"))


def serve_tls(files: TlsFiles) -> tuple[str, threading.Event]:
    """A TLS server on 127.0.0.1 that completes handshakes until told to stop."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.certificate, files.private_key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    done = threading.Event()

    def loop() -> None:
        with listener:
            while not done.is_set():
                try:
                    connection, _ = listener.accept()
                except TimeoutError:
                    continue
                try:
                    with context.wrap_socket(connection, server_side=True):
                        pass
                except (ssl.SSLError, OSError):
                    connection.close()

    threading.Thread(target=loop, daemon=True).start()
    return f"127.0.0.1:{listener.getsockname()[1]}", done


@pytest.fixture
def tls_server(tls: TlsFiles) -> Iterator[str]:
    address, done = serve_tls(tls)
    yield address
    done.set()


def test_fingerprint_is_sha256_of_der(tls: TlsFiles) -> None:
    pem = tls.certificate.read_text()
    der = ssl.PEM_cert_to_DER_cert(pem)
    assert tls.fingerprint == hashlib.sha256(der).hexdigest()
    assert certificate_fingerprint(pem) == tls.fingerprint


def test_certificate_names_loopback_and_key_is_private(tls: TlsFiles) -> None:
    certificate = x509.load_pem_x509_certificate(tls.certificate.read_bytes())
    san = certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert tls.private_key.stat().st_mode & 0o077 == 0


def test_each_certificate_is_new(tls: TlsFiles, tmp_path: Path) -> None:
    assert make_self_signed_certificate(tmp_path).fingerprint != tls.fingerprint


def test_pinned_certificate_is_returned_and_verifies_the_server(
    tls: TlsFiles, tls_server: str
) -> None:
    pem = fetch_pinned_certificate(tls_server, tls.fingerprint)
    assert certificate_fingerprint(pem) == tls.fingerprint
    # The fetched PEM is a sufficient root of trust for a verifying client.
    context = ssl.create_default_context(cadata=pem)
    host, port = tls_server.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host),
    ):
        pass


def test_other_certificate_is_refused(tls_server: str, tmp_path: Path) -> None:
    other = make_self_signed_certificate(tmp_path)
    with pytest.raises(FingerprintMismatch, match="lease pins"):
        fetch_pinned_certificate(tls_server, other.fingerprint)


def test_nothing_listening_is_an_os_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OSError):
        fetch_pinned_certificate(f"127.0.0.1:{port}", "0" * 64, timeout=1)
