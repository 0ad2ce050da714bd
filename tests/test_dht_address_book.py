"""AddressBook: publishing, lookups, heartbeat renewal, expiry and churn on loopback."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Awaitable, Callable

import pytest
from helpers_dht import FakeClock, genesis_for, lease_for, node_record
from kademlia.node import Node

from flp2p.dht import AddressBook, RecordRejected, RecordValidator
from flp2p.dht.address_book import fresh_seq, heartbeat_delay, heartbeat_interval
from flp2p.dht.protocol import ValidatingProtocol
from flp2p.dht.storage import ValidatingStorage
from flp2p.identity import Identity


def test_fresh_seq_is_clock_microseconds_and_strictly_increasing() -> None:
    assert fresh_seq(None, 1.5) == 1_500_000
    assert fresh_seq(1_000_000, 1.5) == 1_500_000
    assert fresh_seq(2_000_000, 1.5) == 2_000_001  # clock went back: still newer
    assert fresh_seq(1_500_000, 1.5) == 1_500_001


def test_heartbeat_leaves_room_for_two_missed_beats() -> None:
    assert heartbeat_interval(300.0) == 100.0


def test_heartbeats_are_spread_and_never_later_than_the_interval() -> None:
    rng = random.Random(1)
    delays = [heartbeat_delay(300.0, rng) for _ in range(200)]
    assert all(50.0 <= d <= 100.0 for d in delays)
    # Peers started together drift apart: the delays are spread over the range.
    assert max(delays) - min(delays) > 40.0


def test_record_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError, match="record_ttl"):
        AddressBook(Identity.generate(), record_ttl=0)


async def _peers(count: int, **options: object) -> list[AddressBook]:
    options.setdefault("rpc_timeout", 0.3)
    books = [
        AddressBook(Identity.generate(), **options)  # type: ignore[arg-type]
        for _ in range(count)
    ]
    first = await books[0].start()
    for book in books[1:]:
        await book.start()
        await book.bootstrap([first])
    return books


def run(
    count: int,
    scenario: Callable[[list[AddressBook]], Awaitable[None]],
    **options: object,
) -> None:
    async def main() -> None:
        books = await _peers(count, **options)
        try:
            await scenario(books)
        finally:
            for book in books:
                await book.stop()

    asyncio.run(main())


def test_start_binds_an_ephemeral_loopback_port() -> None:
    async def scenario(books: list[AddressBook]) -> None:
        host, port = books[0].address
        assert host == "127.0.0.1" and port > 0
        assert len({b.address for b in books}) == 3

    run(3, scenario)


def test_bootstrap_without_answer_raises() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        silent = probe.getsockname()  # bound but never answers

        async def main() -> None:
            book = AddressBook(Identity.generate(), rpc_timeout=0.2)
            await book.start()
            try:
                with pytest.raises(ConnectionError, match="no bootstrap peer"):
                    await book.bootstrap([silent])
            finally:
                await book.stop()

        asyncio.run(main())


def test_every_peer_finds_every_other_and_the_lease() -> None:
    async def scenario(books: list[AddressBook]) -> None:
        for book in books:
            assert await book.publish(node_record(book.identity, book.address[1])) > 0
        founder, aggregator = books[0].identity, books[1].identity
        genesis = genesis_for(founder, aggregator)
        assert await books[0].publish(genesis) > 0
        assert await books[1].publish(lease_for(genesis, aggregator)) > 0
        for reader in books:
            for book in books:
                node = await reader.get_node(book.identity.node_id)
                assert node == node_record(book.identity, book.address[1])
            assert await reader.get_genesis(genesis.federation_id) == genesis
            assert await reader.get_lease(genesis.federation_id) == lease_for(
                genesis, aggregator
            )

    run(8, scenario)


def test_heartbeat_renews_and_silent_peers_expire() -> None:
    clock = FakeClock()

    async def scenario(books: list[AddressBook]) -> None:
        alive, silent, reader = books[0], books[1], books[2]
        for book in (alive, silent):
            await book.publish(node_record(book.identity))
        first = await reader.server.get_record("node", alive.identity.node_id)
        assert first is not None and first.expires_at == clock.now + 300

        clock.now += 200
        assert await alive.heartbeat() == 1  # `silent` stopped beating
        clock.now += 200  # 400 s after publishing: only renewed records live
        renewed = await reader.server.get_record("node", alive.identity.node_id)
        assert renewed is not None and renewed.seq > first.seq
        assert await reader.get_node(alive.identity.node_id) is not None
        assert await reader.get_node(silent.identity.node_id) is None

    run(3, scenario, clock=clock, record_ttl=300.0)


def test_background_heartbeat_keeps_short_lived_records_alive() -> None:
    async def scenario(books: list[AddressBook]) -> None:
        owner, quitter = books
        await owner.publish(node_record(owner.identity))
        await quitter.publish(node_record(quitter.identity))
        quitter.withdraw(node_record(quitter.identity))  # published once, not renewed
        first = await quitter.server.get_record("node", owner.identity.node_id)
        await asyncio.sleep(1.0)  # > 2 lifetimes of 0.4 s
        later = await quitter.server.get_record("node", owner.identity.node_id)
        assert first is not None and later is not None
        assert later.seq > first.seq and later.expires_at > first.expires_at
        assert await owner.get_node(quitter.identity.node_id) is None

    run(2, scenario, record_ttl=0.4)


def contact_ids(book: AddressBook) -> set[bytes]:
    """Kademlia ids in ``book``'s routing table."""
    buckets = book.server.protocol.router.buckets
    return {contact.id for bucket in buckets for contact in bucket.nodes.values()}


def test_failed_call_evicts_only_silent_contacts() -> None:
    async def main() -> None:
        me = Node(b"\x00" * 20)
        protocol = ValidatingProtocol(
            me, ValidatingStorage(RecordValidator()), 20, rpc_timeout=0.5
        )
        speaker = Node(b"\x01" * 20, "127.0.0.1", 4001)
        silent = Node(b"\x02" * 20, "127.0.0.1", 4002)
        for contact in (speaker, silent):
            protocol.router.add_contact(contact)
        # A datagram (here a runt one, ignored by rpcudp) proves the speaker alive.
        protocol.datagram_received(b"late", ("127.0.0.1", 4001))
        for contact in (speaker, silent):
            protocol.handle_call_response((False, None), contact)
        remaining = {c.id for b in protocol.router.buckets for c in b.nodes.values()}
        assert remaining == {speaker.id}

    asyncio.run(main())


def test_lookups_survive_churn() -> None:
    async def scenario(books: list[AddressBook]) -> None:
        for book in books:
            await book.publish(node_record(book.identity))
        dead, alive = books[:3], books[3:]
        for book in dead:
            await book.stop()
        dead_ids = {book.server.node.id for book in dead}
        assert dead_ids <= contact_ids(alive[0])
        # Sweeps dead contacts, republishes.
        await asyncio.gather(*(book.heartbeat() for book in alive))
        for book in alive:
            assert contact_ids(book) == {
                other.server.node.id for other in alive if other is not book
            }
        for reader in alive:
            for book in alive:
                assert await reader.get_node(book.identity.node_id) is not None
        # Records of dead peers still live until their expiry (no one can delete).
        assert await alive[0].get_node(dead[0].identity.node_id) is not None

    # A generous timeout: a live peer slowed by a loaded test machine must not be
    # mistaken for a dead one.
    run(12, scenario, rpc_timeout=1.0)


def test_publishing_what_peers_would_refuse_raises() -> None:
    async def scenario(books: list[AddressBook]) -> None:
        founder, aggregator, outsider = books
        genesis = genesis_for(founder.identity, aggregator.identity)
        with pytest.raises(RecordRejected, match="founder"):
            await outsider.publish(genesis)
        await founder.publish(genesis)
        with pytest.raises(RecordRejected, match="not eligible"):
            await outsider.publish(lease_for(genesis, outsider.identity))
        with pytest.raises(RecordRejected, match="node it describes"):
            await outsider.publish(node_record(founder.identity))
        assert await aggregator.get_lease(genesis.federation_id) is None

    run(3, scenario)


def test_raw_kademlia_get_and_set_are_disabled() -> None:
    server = AddressBook(Identity.generate()).server
    with pytest.raises(NotImplementedError, match="put_record"):
        asyncio.run(server.set("key", "unsigned value"))
    with pytest.raises(NotImplementedError, match="get_record"):
        asyncio.run(server.get("key"))
