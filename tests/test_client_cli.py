"""``python -m flp2p.client``: each failure a participant can act on is one line.

A real DHT runs on loopback in a background thread (the founder, optionally an
eligible peer publishing a lease and a non-validating node serving
forged leases); the client's ``main`` runs in the test thread against it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers_dht import LoopbackDht

from flp2p.dht import NodeRecord
from flp2p.identity import Identity
from flp2p.peer.participant import PeerError, build_parser, main, options_from_args
from flp2p.peer.tls import INSECURE_FINGERPRINT, make_self_signed_certificate


@pytest.fixture
def dht() -> Iterator[LoopbackDht]:
    network = LoopbackDht()
    yield network
    network.close()


def run_client(tmp_path: Path, bootstrap: str, federation: str, *extra: str) -> int:
    return main(
        [
            "--bootstrap", bootstrap, "--federation", federation,
            "--identity", str(tmp_path / "id.key"), "--work-dir", str(tmp_path / "w"),
            "--partition-id", "0", "--num-partitions", "2", "--lease-timeout", "2",
            *extra,
        ]
    )  # fmt: skip


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    # Besides the error, only the address a joined peer always prints and its
    # status line (flp2p.peer.status_line: "federation <id> · <role> · ...").
    lines = [
        line
        for line in err.splitlines()
        if line.strip() and not line.startswith(("DHT ", "federation "))
    ]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("flp2p.client: error: ")
    return lines[0]


def test_no_bootstrap_peer_reachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # bound, never answers
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        assert run_client(tmp_path, address, "ab" * 32) == 1
    assert f"no bootstrap peer reachable at {address}" in one_error_line(capsys)


def test_unknown_federation(
    dht: LoopbackDht, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_client(tmp_path, dht.address, "ab" * 32) == 1
    assert "unknown federation abababababababab" in one_error_line(capsys)


def test_no_lease_within_timeout(
    dht: LoopbackDht, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    assert run_client(tmp_path, dht.address, dht.genesis.federation_id) == 1
    assert "no valid aggregator lease within 2 s" in one_error_line(capsys)
    assert time.monotonic() - started < 20


def test_lease_with_bad_signature(
    dht: LoopbackDht, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dht.serve_forged_lease(dht.eligible, break_signature=True)
    assert run_client(tmp_path, dht.address, dht.genesis.federation_id) == 1
    assert "refused the aggregator lease: bad signature" in one_error_line(capsys)


def test_lease_signed_by_a_non_eligible_peer(
    dht: LoopbackDht, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dht.serve_forged_lease(Identity.generate(), break_signature=False)
    assert run_client(tmp_path, dht.address, dht.genesis.federation_id) == 1
    line = one_error_line(capsys)
    assert "refused the aggregator lease: lease signer is not eligible" in line


def test_certificate_other_than_the_pinned_one(
    dht: LoopbackDht, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_peer_tls import serve_tls

    served = make_self_signed_certificate(tmp_path / "served")
    pinned = make_self_signed_certificate(tmp_path / "pinned")
    address, done = serve_tls(served)
    try:
        dht.publish_lease(address, pinned.fingerprint)
        assert run_client(tmp_path, dht.address, dht.genesis.federation_id) == 1
    finally:
        done.set()
    assert "but the lease pins" in one_error_line(capsys)


def test_lease_without_tls_needs_insecure(
    dht: LoopbackDht, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dht.publish_lease("127.0.0.1:9", INSECURE_FINGERPRINT)
    assert run_client(tmp_path, dht.address, dht.genesis.federation_id) == 1
    assert "runs without TLS; pass --insecure" in one_error_line(capsys)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--partition-id", "0"], "go together"),
        (["--partition-id", "4", "--num-partitions", "4"], r"lie in \[0, 4\)"),
        ([], "nothing to do"),
        (["--aggregator-eligible", "--lease-timeout", "0"], "must be positive"),
    ],
)
def test_inconsistent_options(arguments: list[str], message: str) -> None:
    args = build_parser().parse_args(
        ["--bootstrap", "127.0.0.1:1", "--federation", "ab", *arguments]
    )
    with pytest.raises(PeerError, match=message):
        options_from_args(args)


def test_flp2p_id_prints_the_node_id_the_peer_runs_as(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flp2p.cli import main as flp2p_main

    key = tmp_path / "me.key"
    assert flp2p_main(["id", "--identity", str(key)]) == 0
    created = capsys.readouterr()
    assert f"created a new identity key at {key}" in created.err
    # The same id the peer signs with: the key file is the identity.
    assert created.out.strip() == Identity.load(key).node_id
    assert flp2p_main(["id", "--identity", str(key)]) == 0
    again = capsys.readouterr()
    assert again.out == created.out and again.err == ""
    key.write_text("not a key")
    key.chmod(0o600)
    assert flp2p_main(["id", "--identity", str(key)]) == 1
    assert capsys.readouterr().err.startswith(f"flp2p: error: {key}: ")


def test_relative_folders_become_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The SuperLink and SuperNode run in folders of their own and read
    # certificates and keys by path: a relative --work-dir must not reach them.
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(
        ["--bootstrap", "127.0.0.1:1", "--federation", "ab", "--aggregator-eligible",
         "--identity", "me.key", "--work-dir", "peer"]
    )  # fmt: skip
    options = options_from_args(args)
    assert options.work_dir == tmp_path / "peer"
    assert options.identity == tmp_path / "me.key"


ARGUMENT_CHECK_SECONDS = 5.0
"""Bound on a refused command line, imports included (measured ≈ 0.3 s quiet; the
heavy imports alone take 6 s, so a check after them fails this)."""


def run_command(module: str, *arguments: str) -> tuple[int, str, float]:
    """Run ``python -m module arguments``; exit code, stderr and seconds taken."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", module, *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    return done.returncode, done.stderr, time.monotonic() - started


def the_error_line(stderr: str, program: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    errors = [line for line in lines if line.startswith(f"{program}: error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def client_arguments(key: Path, *extra: str) -> list[str]:
    return [
        "--bootstrap", "127.0.0.1:9", "--federation", "ab", "--identity", str(key),
        "--partition-id", "0", "--num-partitions", "2", *extra,
    ]  # fmt: skip


def _key(tmp_path: Path, kind: str) -> Path:
    key = tmp_path / "peer.key"
    if kind == "folder":
        key.mkdir()
        return key
    if kind == "exposed":
        Identity.generate().save(key)
        key.chmod(0o644)
        return key
    key.write_bytes({"empty": b"", "corrupt": b"not a key\n"}[kind])
    key.chmod(0o600)
    return key


@pytest.mark.parametrize("module", ["flp2p.client", "flp2p.peer.founder"])
@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("empty", "is not an flp2p identity file"),
        ("corrupt", "is not an flp2p identity file"),
        ("exposed", "run `chmod 600 {key}`"),
        ("folder", "is a folder, not an flp2p identity file"),
    ],
)
def test_unusable_key_file_is_one_line_before_the_heavy_imports(
    tmp_path: Path, module: str, kind: str, message: str
) -> None:
    key = _key(tmp_path, kind)
    if module == "flp2p.client":
        arguments = client_arguments(key)
    else:
        arguments = ["--listen", "127.0.0.1:0", "--identity", str(key),
                     "--eligible", "ab"]  # fmt: skip
    code, stderr, seconds = run_command(module, *arguments)
    assert code == 2
    assert message.format(key=key) in the_error_line(stderr, module)
    assert seconds < ARGUMENT_CHECK_SECONDS


def test_dht_port_in_use(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        code, stderr, seconds = run_command(
            "flp2p.client",
            *client_arguments(tmp_path / "k", "--listen", f"127.0.0.1:{port}"),
        )
    assert code == 2
    line = the_error_line(stderr, "flp2p.client")
    assert f"--listen 127.0.0.1:{port}: cannot bind here (Address already in use)" in (
        line
    )
    assert seconds < ARGUMENT_CHECK_SECONDS


def test_superlink_port_in_use(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, stderr, _ = run_command(
            "flp2p.client",
            *client_arguments(
                tmp_path / "k", "--aggregator-eligible", "--superlink-port", str(port)
            ),
        )
    assert code == 2
    assert f"--superlink-port 127.0.0.1:{port}: cannot bind here" in the_error_line(
        stderr, "flp2p.client"
    )


def test_address_not_on_this_host(tmp_path: Path) -> None:
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never an address of this host.
    code, stderr, seconds = run_command(
        "flp2p.client", *client_arguments(tmp_path / "k", "--listen", "192.0.2.7:0")
    )
    assert code == 2
    line = the_error_line(stderr, "flp2p.client")
    assert "--listen 192.0.2.7:0: cannot bind here (Cannot assign requested" in line
    assert seconds < ARGUMENT_CHECK_SECONDS


def test_second_live_process_with_the_same_identity_is_refused(
    dht: LoopbackDht, tmp_path: Path
) -> None:
    twin = Identity.generate()
    key = tmp_path / "twin.key"
    twin.save(key)
    # The first process: a client-only participant (it answers nothing) that keeps
    # renewing its node record, as every live peer does.
    first = dht.call(dht._book(twin, client_only=True, record_ttl=3.0))
    address = "{}:{}".format(*first.address)
    dht.call(first.publish(NodeRecord(twin.node_id, address, ("client",))))
    code, stderr, _ = run_command(
        "flp2p.client",
        "--bootstrap", dht.address, "--federation", dht.genesis.federation_id,
        "--identity", str(key), "--work-dir", str(tmp_path / "w"),
        "--partition-id", "0", "--num-partitions", "2", "--lease-timeout", "2",
    )  # fmt: skip
    assert code == 1
    line = the_error_line(stderr, "flp2p.client")
    assert f"identity {twin.node_id[:16]}… already takes part" in line
    assert f"from {address}" in line


def test_record_left_by_a_dead_process_does_not_block_a_restart(
    dht: LoopbackDht, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    restarted = Identity.generate()
    restarted.save(tmp_path / "id.key")
    crashed = dht.call(dht._book(restarted, client_only=True))
    record = NodeRecord(restarted.node_id, "127.0.0.1:9", ("client",))
    dht.call(crashed.publish(record, ttl=3.0))
    crashed.withdraw(record)  # it crashed: nobody renews the record any more
    # It gets as far as waiting for a lease (none is published here).
    assert run_client(tmp_path, dht.address, dht.genesis.federation_id) == 1
    assert "no valid aggregator lease within 2 s" in one_error_line(capsys)


def test_every_peer_says_whether_others_may_join_through_it(
    dht: LoopbackDht, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A plain participant is a DHT client: nobody can bootstrap from it.
    assert run_client(tmp_path, dht.address, dht.genesis.federation_id) == 1
    err = capsys.readouterr().err
    printed = [line for line in err.splitlines() if line.startswith("DHT ")]
    assert len(printed) == 1 and printed[0].startswith("DHT client-only node"), err
    # An eligible peer is a full DHT node: it prints where others may join.
    code = main(
        [
            "--bootstrap", dht.address, "--federation", dht.genesis.federation_id,
            "--identity", str(tmp_path / "other.key"),
            "--work-dir", str(tmp_path / "e"), "--aggregator-eligible",
        ]
    )  # fmt: skip
    assert code == 1  # its key is not the genesis' eligible one
    err = capsys.readouterr().err
    printed = [line for line in err.splitlines() if line.startswith("DHT ")]
    assert len(printed) == 1 and "--bootstrap 127.0.0.1:" in printed[0], err
    assert "is not aggregator-eligible" in err


def test_after_the_founder_stops_a_new_peer_joins_through_any_live_one(
    dht: LoopbackDht, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dht.publish_lease("127.0.0.1:9", INSECURE_FINGERPRINT)  # by a second peer
    founder, live = dht.books[0], dht.books[1]
    dht.call(founder.stop())
    dht.books.remove(founder)
    code = main(
        [
            "--bootstrap", dht.address, "--bootstrap", "{}:{}".format(*live.address),
            "--federation", dht.genesis.federation_id,
            "--identity", str(tmp_path / "id.key"), "--work-dir", str(tmp_path / "w"),
            "--partition-id", "0", "--num-partitions", "2", "--lease-timeout", "2",
        ]
    )  # fmt: skip
    # It found the genesis and the lease through the live peer alone: what stops
    # it now is only the lease's missing TLS.
    assert code == 1
    assert "runs without TLS; pass --insecure" in one_error_line(capsys)


def test_flp2p_status_dht_lists_live_peers_and_the_lease(
    dht: LoopbackDht, capsys: pytest.CaptureFixture[str]
) -> None:
    from flp2p.cli import main as flp2p_main

    dht.publish_lease("127.0.0.1:9", INSECURE_FINGERPRINT)
    live = "{}:{}".format(*dht.books[1].address)
    federation = dht.genesis.federation_id
    assert flp2p_main(["status", "--dht", live, "--federation", federation]) == 0
    out = capsys.readouterr().out
    holder = dht.eligible.node_id[:12]
    assert f"lease        holder {holder}  epoch 1  round 0/2" in out
    # The lease's holder published no node record here: the DHT still shows it.
    assert f"eligible     {holder}  not live" in out
    assert "live peers   2 answering the DHT" in out
    assert f"{live}" in out and "aggregator (epoch 1)" in out
    assert dht.founder.node_id[:12] in out and "founder" in out


def test_flp2p_id_help_shows_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    from flp2p.cli import main as flp2p_main

    with pytest.raises(SystemExit) as exited:
        flp2p_main(["id", "--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the text
    assert "e.g. flp2p id --identity " in out and "--eligible" in out


def test_flp2p_status_dht_unknown_federation_is_one_line(
    dht: LoopbackDht, capsys: pytest.CaptureFixture[str]
) -> None:
    from flp2p.cli import main as flp2p_main

    assert flp2p_main(["status", "--dht", dht.address, "--federation", "ab"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "flp2p: error: no genesis of federation ab… in the DHT\n"


@pytest.mark.parametrize(
    ("command", "module"),
    [("join", "flp2p.client"), ("found", "flp2p.peer.founder")],
)
def test_flp2p_join_and_found_are_the_peer_programs(
    tmp_path: Path, command: str, module: str
) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "flp2p.cli", command, "--help"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )  # fmt: skip
    assert done.returncode == 0
    assert done.stdout.startswith(f"usage: flp2p {command} ")
    assert "example" in done.stdout and f"  flp2p {command} --" in done.stdout
    assert time.monotonic() - started < ARGUMENT_CHECK_SECONDS
    key = _key(tmp_path, "corrupt")
    arguments = (
        client_arguments(key)
        if command == "join"
        else ["--identity", str(key), "--eligible", "ab"]
    )
    done = subprocess.run(
        [sys.executable, "-c",
         "import sys; from flp2p.cli import main; code = main(sys.argv[1:]); "
         "heavy = {'torch', 'flwr'} & set(sys.modules); "
         "print('heavy:', sorted(heavy)); sys.exit(code)",
         command, *arguments],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )  # fmt: skip
    assert done.returncode == 2
    assert "not an flp2p identity file" in the_error_line(
        done.stderr, f"flp2p {command}"
    )
    assert "heavy: []" in done.stdout


def test_without_verbose_a_joined_peer_shows_its_status_line(
    dht: LoopbackDht, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    federation = dht.genesis.federation_id
    assert run_client(tmp_path, dht.address, federation) == 1
    status = f"federation {federation[:12]} · participant · round -/2 · "
    assert status in capsys.readouterr().err
    assert run_client(tmp_path, dht.address, federation, "--verbose") == 1
    assert status not in capsys.readouterr().err  # -v: the log lines instead
