"""``python -m flp2p.client``: each failure a participant can act on is one line.

A real DHT runs on loopback in a background thread (the founder, optionally an
eligible peer publishing a lease and a stock, non-validating kademlia node serving
forged leases); the client's ``main`` runs in the test thread against it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kademlia.network import Server

from flp2p.dht import AddressBook, Genesis, Lease, sign_record
from flp2p.identity import Identity
from flp2p.peer.participant import PeerError, build_parser, main, options_from_args
from flp2p.peer.tls import INSECURE_FINGERPRINT, make_self_signed_certificate

T = TypeVar("T")


class LoopbackDht:
    """A founder's DHT node (plus helpers) on an event loop in its own thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.founder = Identity.generate()
        self.eligible = Identity.generate()
        self.genesis = Genesis(
            founder=self.founder.node_id,
            parameters={"rounds": 2, "dataset": "digits", "clients": 2},
            eligible=(self.eligible.node_id,),
            created_at=time.time(),
        )
        self.books: list[AddressBook] = []
        self.evil: Server | None = None
        book = self.call(self._book(self.founder))
        self.address = "{}:{}".format(*book.address)
        self.call(book.publish(self.genesis))

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    async def _book(self, identity: Identity) -> AddressBook:
        book = AddressBook(identity, rpc_timeout=1.0)
        await book.start()
        if self.books:
            await book.bootstrap([self.books[0].address])
        self.books.append(book)
        return book

    def publish_lease(self, address: str, fingerprint: str) -> None:
        """A valid lease by the eligible peer."""
        lease = self.lease(self.eligible, address, fingerprint)
        book = self.call(self._book(self.eligible))
        self.call(book.publish(lease))

    def lease(self, holder: Identity, address: str, fingerprint: str) -> Lease:
        return Lease(
            federation_id=self.genesis.federation_id,
            holder=holder.node_id,
            superlink_address=address,
            tls_fingerprint=fingerprint,
            epoch=1,
            last_round=0,
            model_sha256="cd" * 32,
        )

    def serve_forged_lease(self, signer: Identity, break_signature: bool) -> None:
        """A stock kademlia node (no validation) holding a forged lease."""
        lease = self.lease(signer, "127.0.0.1:9", "ab" * 32)
        record = sign_record(
            signer, Lease.KIND, lease.subject, lease.to_payload(), 1, time.time() + 600
        )
        if break_signature:
            record = dataclasses.replace(record, signature=bytes(64))

        async def start() -> Server:
            evil = Server()
            await evil.listen(0, interface="127.0.0.1")
            await evil.bootstrap([self.books[0].address])
            evil.storage[record.dht_key] = record.encode()
            return evil

        self.evil = self.call(start())

    def close(self) -> None:
        async def stop() -> None:
            for book in self.books:
                await book.stop()
            if self.evil is not None:
                self.evil.stop()

        self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


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
    lines = [line for line in err.splitlines() if line.strip()]
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
