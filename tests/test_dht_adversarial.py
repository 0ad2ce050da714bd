"""A malicious peer against honest nodes on loopback: refused on STORE and on read.

Mallory runs stock ``kademlia`` (no validation, so she can hold anything) with her own
key. Every attack is tried twice: pushed into each honest node with a STORE RPC (the
node must answer ``False`` and keep what it had), and served by Mallory herself from
storage she wrote directly, from the kademlia id closest to the attacked key so every
lookup asks her first (readers must still get the valid record, or ``None``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import pytest
from helpers_dht import NOW, FakeClock, genesis_for, lease_for, node_record, signed
from kademlia.network import Server
from kademlia.node import Node
from kademlia.storage import ForgetfulStorage

from flp2p.dht import AddressBook, SignedRecord
from flp2p.identity import Identity

HONEST_NODES = 5


@dataclass
class Network:
    """Honest peers plus Mallory's identity and a shared clock."""

    books: list[AddressBook]
    clock: FakeClock
    alice: Identity
    aggregator: Identity
    founder: Identity
    mallory: Identity
    attackers: list[Server]

    @property
    def reader(self) -> AddressBook:
        return self.books[-1]

    async def settled(self, record: SignedRecord) -> None:
        """Wait until every honest node holds ``record`` and has no task in flight.

        Under load a STORE can outlive the writer's timeout and land later; so can a
        hand-over to a contact met during the write.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while self.holders(record.dht_key) != [record.encode()] * HONEST_NODES:
            assert loop.time() < deadline, "the record never reached every node"
            await asyncio.sleep(0.05)
        while pending := [
            task for book in self.books for task in book.server.protocol.tasks()
        ]:
            await asyncio.wait(pending)

    def holders(self, key: bytes) -> list[bytes | None]:
        """What each honest node stores under ``key``."""
        return [book.server.storage.get(key) for book in self.books]

    async def push(self, key: bytes, raw: object) -> list[bool]:
        """Mallory's STORE of ``raw`` into every honest node; their answers.

        The sending node keeps nothing, so it cannot hand honest nodes records they
        were handed before (a test may have made one forget a record on purpose).
        """
        attacker = await self.stock_node(None, keeps_nothing=True)
        answers = await asyncio.gather(
            *(
                attacker.protocol.call_store(_contact(book), key, raw)
                for book in self.books
            )
        )
        assert all(ok for ok, _ in answers), "an honest node did not answer"
        return [stored for _, stored in answers]

    @asynccontextmanager
    async def serving(self, key: bytes, raw: object) -> AsyncIterator[None]:
        """Mallory holds ``raw`` under ``key`` and is the node closest to it."""
        closest = key[:-1] + bytes([key[-1] ^ 1])
        holder = await self.stock_node(closest)
        holder.storage[key] = raw
        for book in self.books:  # make sure every honest router knows her
            await book.server.bootstrap([holder_address(holder)])
        yield

    async def stock_node(
        self, node_id: bytes | None, keeps_nothing: bool = False
    ) -> Server:
        """A Mallory-run stock kademlia node, alive until the scenario ends.

        Alive, so honest routers that met her pay no timeouts for a dead contact.
        """
        server = Server(node_id=node_id)
        if keeps_nothing:  # a TTL of 0 culls every value as it is stored
            server.storage = ForgetfulStorage(ttl=0)
        await server.listen(0, interface="127.0.0.1")
        server.protocol._wait_timeout = 0.5
        await server.bootstrap([self.books[0].address])
        self.attackers.append(server)
        return server


def holder_address(server: Server) -> tuple[str, int]:
    host, port = server.transport.get_extra_info("sockname")[:2]
    return str(host), int(port)


def _contact(book: AddressBook) -> Node:
    host, port = book.address
    return Node(book.server.node.id, host, port)


async def _network() -> Network:
    clock = FakeClock()
    identities = [Identity.generate() for _ in range(HONEST_NODES)]
    books = [AddressBook(i, rpc_timeout=0.5, clock=clock) for i in identities]
    first = await books[0].start()
    for book in books[1:]:
        await book.start()
        await book.bootstrap([first])
    alice, aggregator, founder = identities[0], identities[1], identities[2]
    return Network(books, clock, alice, aggregator, founder, Identity.generate(), [])


def run(scenario: Callable[[Network], Awaitable[None]]) -> None:
    async def main() -> None:
        network = await _network()
        try:
            await scenario(network)
        finally:
            for book in network.books:
                await book.stop()
            for attacker in network.attackers:
                attacker.stop()

    asyncio.run(main())


async def _publish_alice(net: Network, seq: int) -> SignedRecord:
    record = signed(net.alice, node_record(net.alice), seq=seq)
    accepted = await net.books[0].server.put_record(record)
    assert accepted == HONEST_NODES
    return record


def test_honest_records_flow() -> None:
    async def scenario(net: Network) -> None:
        record = await _publish_alice(net, seq=1)
        assert net.holders(record.dht_key) == [record.encode()] * HONEST_NODES
        assert await net.reader.get_node(net.alice.node_id) == node_record(net.alice)

    run(scenario)


def _forged(net: Network, valid: SignedRecord) -> SignedRecord:
    # Alice's signature, Mallory's address and a higher version.
    return replace(
        valid, payload={**valid.payload, "address": "6.6.6.6:666"}, seq=valid.seq + 9
    )


def _oversized(net: Network, size: int = 8100) -> SignedRecord:
    """Mallory's own, validly signed record padded to ``size`` bytes.

    Above MAX_RECORD_BYTES (8000) yet still small enough for one STORE RPC (8137).
    """

    def build(padding: int) -> SignedRecord:
        record = replace(node_record(net.mallory), roles=("x" * padding,))
        unsigned = SignedRecord(
            "node",
            record.subject,
            record.to_payload(),
            net.mallory.public_key,
            1,
            NOW + 600,
        )
        return replace(unsigned, signature=net.mallory.sign(unsigned.signing_bytes()))

    overhead = len(build(0).encode())
    record = build(size - overhead)
    assert len(record.encode()) == size
    return record


ATTACKS = ["forged", "unsigned", "hijack", "wrong-key"]


@pytest.mark.parametrize("attack", ATTACKS)
def test_attacks_on_alices_record(attack: str) -> None:
    """Alice's record exists; every attack must leave it, and only it, visible."""

    async def scenario(net: Network) -> None:
        valid = await _publish_alice(net, seq=1)
        mallory_own = signed(net.mallory, node_record(net.mallory), seq=50)
        bad = {
            "forged": _forged(net, valid).encode(),
            "unsigned": replace(_forged(net, valid), signature=b"").encode(),
            # Mallory signs a record *about Alice* with her own key.
            "hijack": signed(net.mallory, node_record(net.alice, 666), seq=50).encode(),
            # Mallory's own valid record, written under Alice's key.
            "wrong-key": mallory_own.encode(),
        }[attack]
        assert await net.push(valid.dht_key, bad) == [False] * HONEST_NODES
        assert net.holders(valid.dht_key) == [valid.encode()] * HONEST_NODES
        refused: list[str] = []
        # This reader asks everyone and waits for every answer, so it certainly
        # meets Mallory's value (a normal get may finish before she answers).
        server = net.reader.server
        server.value_quorum = len(net.books) + 1
        server.stall_timeout = server.protocol.stall_floor = server.rpc_timeout
        net.reader.server.rejection_listeners.append(
            lambda key, reason: refused.append(str(reason))
        )
        async with net.serving(valid.dht_key, bad):
            assert await net.reader.get_node(net.alice.node_id) == node_record(
                net.alice
            )
        assert refused, "the reader never met Mallory's value"

    run(scenario)


def test_replayed_older_version_is_refused() -> None:
    async def scenario(net: Network) -> None:
        old = signed(net.alice, node_record(net.alice, 9001), seq=1)
        await _publish_alice(net, seq=2)
        current = net.holders(old.dht_key)
        assert await net.push(old.dht_key, old.encode()) == [False] * HONEST_NODES
        assert net.holders(old.dht_key) == current
        async with net.serving(old.dht_key, old.encode()):
            got = await net.reader.server.get_record("node", net.alice.node_id)
            assert got is not None and got.seq == 2

    run(scenario)


@pytest.mark.parametrize("attack", ["expired", "oversized", "list-value"])
def test_attacks_on_an_empty_key(attack: str) -> None:
    """Nothing valid exists: nothing may be stored, and reads must return None."""

    async def scenario(net: Network) -> None:
        key_record = signed(net.mallory, node_record(net.mallory))
        bad: object = {
            "expired": signed(
                net.mallory, node_record(net.mallory), expires_at=NOW - 1
            ).encode(),
            "oversized": _oversized(net).encode(),
            # A list crashes stock kademlia's majority vote (unhashable).
            "list-value": [1, 2, 3],
        }[attack]
        assert await net.push(key_record.dht_key, bad) == [False] * HONEST_NODES
        assert net.holders(key_record.dht_key) == [None] * HONEST_NODES
        async with net.serving(key_record.dht_key, bad):
            assert await net.reader.get_node(net.mallory.node_id) is None

    run(scenario)


def test_lease_from_ineligible_signer_is_refused() -> None:
    async def scenario(net: Network) -> None:
        genesis = genesis_for(net.founder, net.aggregator)
        assert await net.books[2].publish(genesis) == HONEST_NODES
        lease = signed(net.aggregator, lease_for(genesis, net.aggregator), seq=1)
        assert await net.books[1].server.put_record(lease) == HONEST_NODES

        usurper = signed(net.mallory, lease_for(genesis, net.mallory, epoch=2), seq=9)
        assert await net.push(lease.dht_key, usurper.encode()) == [False] * HONEST_NODES
        assert net.holders(lease.dht_key) == [lease.encode()] * HONEST_NODES
        async with net.serving(lease.dht_key, usurper.encode()):
            got = await net.reader.get_lease(genesis.federation_id)
            assert got == lease_for(genesis, net.aggregator)

    run(scenario)


def test_lease_is_checked_against_a_genesis_the_holder_fetches() -> None:
    """A holder that does not know the genesis fetches it to judge a lease."""

    async def scenario(net: Network) -> None:
        genesis = genesis_for(net.founder, net.aggregator)
        genesis_record = signed(net.founder, genesis)
        await net.books[2].server.put_record(genesis_record)
        holder = net.books[3]
        # A STORE or hand-over still on its way would teach the holder it again.
        await net.settled(genesis_record)
        holder.validator._geneses.clear()  # as if it had never seen the genesis
        fetched: list[str] = []
        fetch = holder.server.protocol.fetch_genesis
        assert fetch is not None

        async def recording_fetch(federation_id: str) -> object:
            fetched.append(federation_id)
            return await fetch(federation_id)

        holder.server.protocol.fetch_genesis = recording_fetch
        lease = signed(net.aggregator, lease_for(genesis, net.aggregator))
        assert await net.push(lease.dht_key, lease.encode()) == [True] * HONEST_NODES
        assert fetched == [genesis.federation_id]
        assert holder.validator.known_genesis(genesis.federation_id) == genesis

    run(scenario)


def test_lease_without_any_genesis_is_refused() -> None:
    async def scenario(net: Network) -> None:
        genesis = genesis_for(net.founder, net.aggregator)  # never published
        lease = signed(net.aggregator, lease_for(genesis, net.aggregator))
        holder = net.books[0].server
        lookups: list[tuple[str, str]] = []
        get_record = holder.get_record

        async def counting_get_record(kind: str, subject: str) -> SignedRecord | None:
            lookups.append((kind, subject))
            return await get_record(kind, subject)

        holder.get_record = counting_get_record  # type: ignore[method-assign]
        for _ in range(3):
            refused = await net.push(lease.dht_key, lease.encode())
            assert refused == [False] * HONEST_NODES
        # Repeats do not each cost a lookup for the missing genesis.
        assert lookups == [("genesis", genesis.federation_id)]
        async with net.serving(lease.dht_key, lease.encode()):
            assert await net.reader.get_lease(genesis.federation_id) is None

    run(scenario)


def test_expiry_hides_records_that_holders_still_serve() -> None:
    """Holders republish blindly; readers judge by the signed expiry."""

    async def scenario(net: Network) -> None:
        record = await _publish_alice(net, seq=1)
        async with net.serving(record.dht_key, record.encode()):
            net.clock.now = record.expires_at + 1
            assert await net.reader.get_node(net.alice.node_id) is None
            assert net.holders(record.dht_key) == [None] * HONEST_NODES

    run(scenario)
