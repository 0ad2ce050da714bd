"""``--listen`` / ``--advertise``: parsing, the default advertised host, and bad
addresses refused with one line and exit code 2 before any heavy import."""

from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509

from flp2p.peer.addresses import (
    AddressError,
    check_advertise,
    check_listen,
    join_host_port,
    parse_address,
    parse_advertise,
    resolve_advertise,
    route_source,
    split_host_port,
)
from flp2p.peer.aggregator import certificate_hosts
from flp2p.peer.founder import main as founder_main
from flp2p.peer.participant import build_parser, main, options_from_args
from flp2p.peer.tls import make_self_signed_certificate

ROOT = Path(__file__).resolve().parent.parent
NOT_HERE = "203.0.113.7"
"""TEST-NET-3 (RFC 5737): an address no interface of the test machine carries."""


def test_addresses_parse_with_and_without_port() -> None:
    assert parse_address("10.0.0.1:9400") == ("10.0.0.1", 9400)
    assert parse_address("[::1]:9400") == ("::1", 9400)
    assert parse_advertise("10.0.0.1") == ("10.0.0.1", None)
    assert parse_advertise("peer.example:9401") == ("peer.example", 9401)
    assert parse_advertise("fd00::5") == ("fd00::5", None)
    assert parse_advertise("[fd00::5]:7") == ("fd00::5", 7)
    for bad in ("10.0.0.1", "10.0.0.1:x", ":9400", "h:70000"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_address(bad)
    assert join_host_port("fd00::5", 7) == "[fd00::5]:7"


def test_default_advertise_is_the_listen_host_or_the_route_to_the_bootstrap() -> None:
    bootstrap = [("127.0.0.1", 9400)]
    assert resolve_advertise("127.0.0.2", None, bootstrap) == "127.0.0.2"
    # A wildcard: the interface the kernel would send from (loopback, here).
    assert resolve_advertise("0.0.0.0", None, bootstrap) == "127.0.0.1"
    assert route_source(("127.0.0.1", 1)) == "127.0.0.1"
    assert resolve_advertise("0.0.0.0", "localhost", bootstrap) == "localhost"


def test_addresses_this_host_lacks_are_refused_naming_the_flag() -> None:
    with pytest.raises(AddressError, match=f"^--advertise {NOT_HERE}: not an addr"):
        check_advertise(NOT_HERE)
    with pytest.raises(AddressError, match=r"^--advertise 0\.0\.0\.0: a wildcard"):
        check_advertise("0.0.0.0")
    with pytest.raises(AddressError, match=f"^--listen {NOT_HERE}:0: cannot bind"):
        check_listen(NOT_HERE, 0)
    check_listen("127.0.0.1", 0)
    check_advertise("127.0.0.1")


def _client_args(*extra: str) -> list[str]:
    return [
        "--bootstrap", "127.0.0.1:1", "--federation", "ab",
        "--partition-id", "0", "--num-partitions", "2", *extra,
    ]  # fmt: skip


def test_options_carry_the_advertised_host_and_ports() -> None:
    args = build_parser().parse_args(
        _client_args(
            "--listen", "0.0.0.0:0", "--advertise", "127.0.0.1:9555",
            "--superlink-port", "9556", "--sync-port", "9557",
        )
    )  # fmt: skip
    options = options_from_args(args)
    assert options.listen == ("0.0.0.0", 0)
    assert (options.advertise, options.advertise_port) == ("127.0.0.1", 9555)
    assert (options.superlink_port, options.sync_port) == (9556, 9557)


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--advertise", NOT_HERE), ("--listen", f"{NOT_HERE}:9400")],
)
def test_bad_address_exits_2_with_one_line(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_client_args(flag, value)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"flp2p.client: error: {flag} ")


def test_bad_address_is_refused_before_flower_or_torch_are_imported() -> None:
    probe = (
        "import sys; from flp2p.peer.participant import main; "
        f"code = main({_client_args('--advertise', NOT_HERE)!r}); "
        "print(code, sorted(m for m in ('torch', 'flwr', 'numpy') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.stdout.split() == ["2", "[]"], done.stdout + done.stderr


def test_founder_refuses_a_listen_address_this_host_lacks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = founder_main(
        ["--listen", f"{NOT_HERE}:9400", "--identity", "x.key", "--eligible", "ab"]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"flp2p.peer.founder: error: --listen {NOT_HERE}:9400: cannot bind here "
        "(Cannot assign requested address)"
    )


def test_founder_writes_the_federation_id_it_prints(tmp_path: Path) -> None:
    federation_file = tmp_path / "federation.id"
    founder = subprocess.Popen(
        [
            sys.executable, "-m", "flp2p.peer.founder",
            "--listen", "127.0.0.1:0", "--identity", str(tmp_path / "f.key"),
            "--eligible", "ab" * 32, "--federation-file", str(federation_file),
            "--param", "rounds=1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert founder.stdout is not None
        printed = founder.stdout.readline().strip()
        deadline = time.monotonic() + 10
        while not federation_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(printed) == 64
        assert federation_file.read_text() == printed + "\n"
    finally:
        founder.terminate()
        founder.wait(timeout=10)


def test_superlink_certificate_names_the_advertised_host(tmp_path: Path) -> None:
    hosts = certificate_hosts("10.77.0.5", "127.0.0.1")
    assert hosts == ("10.77.0.5", "127.0.0.1", "localhost")
    named = certificate_hosts("peer.example", "10.77.0.5")
    tls = make_self_signed_certificate(tmp_path, named)
    certificate = x509.load_pem_x509_certificate(tls.certificate.read_bytes())
    san = certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value
    assert "peer.example" in san.get_values_for_type(x509.DNSName)
    ips = san.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("10.77.0.5") in ips
    assert ipaddress.ip_address("127.0.0.1") in ips


def test_ipv6_addresses_round_trip() -> None:
    assert split_host_port(join_host_port("fd00::5", 9402)) == ("fd00::5", 9402)
    assert split_host_port("10.77.0.2:9402") == ("10.77.0.2", 9402)
