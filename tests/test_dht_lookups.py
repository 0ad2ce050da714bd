"""Lookups that do not wait for dead contacts, and a clean stop.

The unit tests drive :class:`Lookup` against a scripted protocol whose dead contacts
never answer at all (no RPC timeout ever fires): a lookup that waited for any of them
would hang, which ``asyncio.wait_for`` turns into a failure. The loopback tests kill
real nodes under a 30 s RPC timeout and check how the lookup spent its requests.
"""

from __future__ import annotations

import asyncio
import gc
import random
import socket
from collections.abc import Coroutine
from typing import Any

import pytest
from helpers_dht import FakeClock, node_record, signed
from kademlia.node import Node

from flp2p.dht import AddressBook, RecordValidator, SignedRecord, record_key
from flp2p.dht.crawling import Lookup
from flp2p.dht.protocol import ValidatingProtocol
from flp2p.dht.routing import XorRoutingTable
from flp2p.dht.storage import ValidatingStorage
from flp2p.identity import Identity

GUARD_S = 20.0
"""Bound on a lookup that must not wait for anyone who never answers (hang guard)."""
LONG_RPC_TIMEOUT = 30.0
"""An RPC timeout no lookup in these tests may sit through."""


class ScriptedProtocol:
    """Just what :class:`Lookup` uses of a protocol; contacts answer as scripted."""

    def __init__(self, holders: dict[bytes, bytes | None], dead: set[bytes]) -> None:
        self.source_node = Node(b"\xff" * 20, "127.0.0.1", 1)
        self.holders = holders  # id -> raw record held (None: holds nothing)
        self.dead = dead
        self.contacts: list[Node] = []
        self.suspects: set[bytes] = set()
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        return task

    def stall_after(self, ceiling: float) -> float:
        return ceiling

    def observe_rtt(self, seconds: float) -> None:
        pass

    def mark_suspect(self, node: Node) -> None:
        self.suspects.add(node.id)

    def is_suspect(self, node: Node) -> bool:
        return node.id in self.suspects

    async def _answer(self, contact: Node, response: object) -> tuple[bool, Any]:
        if contact.id in self.dead:
            await asyncio.Event().wait()  # never answers, never times out
        await asyncio.sleep(0)
        return True, response

    async def call_find_value(self, contact: Node, target: Node) -> tuple[bool, Any]:
        raw = self.holders.get(contact.id)
        if raw is not None:
            return await self._answer(contact, {"value": raw})
        return await self.call_find_node(contact, target)

    async def call_find_node(self, contact: Node, target: Node) -> tuple[bool, Any]:
        # Everyone knows everyone here, so a lookup can see past its start set.
        return await self._answer(contact, [tuple(c) for c in self.contacts])

    async def call_store(self, contact: Node, key: bytes, raw: bytes) -> None:
        pass

    def cancel_all(self) -> None:
        for task in self.tasks:
            task.cancel()


def scripted_network(
    record: SignedRecord, dead_count: int, holder_count: int
) -> tuple[ScriptedProtocol, list[Node], list[Node]]:
    """Contacts sorted by distance to the record: the closest are dead holders."""
    target = Node(record.dht_key)
    contacts = sorted(
        (Node(bytes([i]) * 20, "127.0.0.1", 2000 + i) for i in range(40)),
        key=target.distance_to,
    )
    dead = contacts[:dead_count]
    holders: dict[bytes, bytes | None] = {
        c.id: record.encode() for c in contacts[: dead_count + holder_count]
    }
    protocol = ScriptedProtocol(holders, {c.id for c in dead})
    protocol.contacts = contacts
    return protocol, contacts, dead


async def _check(validator: RecordValidator, key: bytes, raw: object) -> SignedRecord:
    return validator.check(key, raw)


def lookup(
    protocol: ScriptedProtocol, record: SignedRecord, peers: list[Node]
) -> Lookup:
    validator = RecordValidator(clock=FakeClock())
    return Lookup(
        protocol,  # type: ignore[arg-type]
        Node(record.dht_key),
        peers,
        ksize=20,
        alpha=3,
        stall_timeout=0.05,
        check=lambda key, raw: _check(validator, key, raw),
    )


def test_value_lookup_goes_past_contacts_that_never_answer() -> None:
    alice = Identity.generate()
    record = signed(alice, node_record(alice))

    async def main() -> None:
        protocol, contacts, dead = scripted_network(record, 6, holder_count=4)
        crawl = lookup(protocol, record, contacts[:20])
        try:
            found = await asyncio.wait_for(crawl.find_value(), GUARD_S)
        finally:
            protocol.cancel_all()
        assert found == record
        stats = crawl.stats
        # It asked the dead first (they are closest), moved on when they stalled, and
        # finished with every request to them still unanswered.
        first = {c.id for c in dead[:3]}
        assert set(stats.asked[:3]) == first
        asked_dead = [i for i in stats.asked if i in protocol.dead]
        assert stats.stalled >= 3
        assert stats.timeouts_waited == 0
        assert stats.abandoned >= len(asked_dead)
        assert first <= protocol.suspects <= set(asked_dead)

    asyncio.run(main())


def test_node_lookup_leaves_silent_contacts_out_of_its_result() -> None:
    alice = Identity.generate()
    record = signed(alice, node_record(alice))

    async def main() -> None:
        protocol, contacts, _ = scripted_network(record, 5, holder_count=0)
        crawl = lookup(protocol, record, contacts[:20])
        try:
            closest = await asyncio.wait_for(crawl.find_nodes(), GUARD_S)
        finally:
            protocol.cancel_all()
        alive = [c for c in contacts if c.id not in protocol.dead]
        assert [c.id for c in closest] == [c.id for c in alive[:20]]
        assert crawl.stats.timeouts_waited == 0

    asyncio.run(main())


def test_lookup_skips_contacts_that_stalled_an_earlier_one() -> None:
    alice = Identity.generate()
    record = signed(alice, node_record(alice))

    async def main() -> None:
        protocol, contacts, dead = scripted_network(record, 4, holder_count=4)
        protocol.suspects = {c.id for c in dead}
        crawl = lookup(protocol, record, contacts[:20])
        try:
            assert await asyncio.wait_for(crawl.find_value(), GUARD_S) == record
        finally:
            protocol.cancel_all()
        assert not set(crawl.stats.asked) & protocol.dead
        assert crawl.stats.stalled == 0

    asyncio.run(main())


def test_a_value_lookup_with_only_silent_holders_waits_rather_than_miss() -> None:
    """Stalled requests are still awaited when nothing else could bring the value."""
    alice = Identity.generate()
    record = signed(alice, node_record(alice))

    async def main() -> None:
        protocol, contacts, _ = scripted_network(record, 2, holder_count=0)
        crawl = lookup(protocol, record, contacts[:20])
        find = asyncio.ensure_future(crawl.find_value())
        await asyncio.sleep(0.5)  # ten stall timeouts: every live contact answered
        assert not find.done(), "gave up on the only contacts that hold the value"
        protocol.cancel_all()
        find.cancel()
        await asyncio.gather(find, *protocol.tasks, return_exceptions=True)

    asyncio.run(main())


# -- loopback ------------------------------------------------------------------------


async def _network(count: int) -> list[AddressBook]:
    books = [
        AddressBook(
            Identity.generate(), rpc_timeout=LONG_RPC_TIMEOUT, stall_timeout=0.2
        )
        for _ in range(count)
    ]
    first = await books[0].start()
    for book in books[1:]:
        await book.start()
        await book.bootstrap([first])
    for book in books:
        await book.publish(node_record(book.identity))
    return books


def _contact_ids(book: AddressBook) -> set[bytes]:
    buckets = book.server.protocol.router.buckets
    return {contact.id for bucket in buckets for contact in bucket.nodes.values()}


def test_get_with_the_closest_holders_dead_skips_them_and_returns_the_record() -> None:
    async def main() -> None:
        books = await _network(12)
        target, reader, others = books[0], books[1], books[2:]
        key = record_key("node", target.identity.node_id)
        others.sort(key=lambda b: Node(key).distance_to(b.server.node))
        dead = others[:4]
        for book in dead:
            await book.stop()
        dead_ids = {b.server.node.id for b in dead}
        alive = [b for b in books if b not in dead]
        try:
            assert dead_ids <= _contact_ids(reader)  # it will try them first
            for attempt in range(2):
                got = await asyncio.wait_for(
                    reader.get_node(target.identity.node_id), LONG_RPC_TIMEOUT
                )
                assert got == node_record(target.identity)
                stats = reader.server.last_lookup
                assert stats is not None and stats.timeouts_waited == 0
                asked_dead = set(stats.asked) & dead_ids
                if attempt == 0:
                    # The dead holders were asked (they are the closest) and the
                    # lookup ended with all those requests still unanswered.
                    assert asked_dead and stats.stalled >= 1
                    assert stats.abandoned >= len(asked_dead)
                    await asyncio.sleep(0.2)  # the stall ceiling: all have stalled
                else:
                    # Marked as suspects: the next lookup does not ask them again,
                    # although their RPCs have not timed out (nor been evicted) yet.
                    assert not asked_dead
                    assert dead_ids <= _contact_ids(reader)
        finally:
            for book in alive:
                await book.stop()

    asyncio.run(main())


# -- stop ----------------------------------------------------------------------------


def _garbage(address: tuple[str, int]) -> None:
    """Datagrams that made rpcudp's tasks fail: bad msgpack, malformed requests."""
    header = b"\x00" + b"m" * 20
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(header + b"\xc1", address)  # reserved msgpack code
        sock.sendto(header + b"\x93\x01\x02\x03", address)  # not [name, args]
        sock.sendto(header + b"\x92\xa4ping\x90", address)  # rpc_ping without args
        sock.sendto(b"\x01" + b"r" * 20 + b"\xc0", address)  # answer nobody asked for


def test_stop_ends_every_task_and_leaves_no_unretrieved_exception() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _, context: reported.append(context))
        books = await _network(6)
        for book in books:
            _garbage(book.address)
        await asyncio.sleep(0.1)
        dead, alive = books[1:4], books[:1] + books[4:]
        for book in dead:
            await book.stop()
        reader = alive[0]
        # The reader knows 5 contacts, 3 of them dead: its first 3 requests reach at
        # least one, which stalls and stays in the background (30 s RPC timeout).
        await reader.get_node(alive[1].identity.node_id)
        assert reader.server.protocol.running_tasks > 0
        # And this get is still running during stop.
        pending_get = asyncio.ensure_future(reader.get_node(alive[2].identity.node_id))
        await asyncio.sleep(0)
        for book in alive:
            await book.stop()
        await asyncio.wait_for(pending_get, GUARD_S)  # ended, not stuck on RPCs
        left = asyncio.all_tasks() - {asyncio.current_task()}
        assert not left, left
        gc.collect()  # unretrieved task exceptions are reported on collection
        await asyncio.sleep(0)
        assert reported == []

    asyncio.run(main())


def test_stall_timeout_must_lie_within_the_rpc_timeout() -> None:
    with pytest.raises(ValueError, match="stall_timeout"):
        AddressBook(Identity.generate(), rpc_timeout=1.0, stall_timeout=2.0)


# -- hand-over of records to new contacts ---------------------------------------------


def _reference_hand_over(
    table: XorRoutingTable, me: Node, newcomer: Node, key: bytes
) -> bool:
    """Paper §2.5 as kademlia writes it, on an exact k-closest search."""
    neighbors = table.find_neighbors(Node(key))
    if not neighbors:
        return True
    target = Node(key)
    return newcomer.distance_to(target) < neighbors[-1].distance_to(
        target
    ) and me.distance_to(target) < neighbors[0].distance_to(target)


@pytest.mark.parametrize("contact_count", [0, 5, 60])
def test_fast_hand_over_rule_matches_the_k_closest_search(contact_count: int) -> None:
    rng = random.Random(contact_count)
    me = Node(rng.randbytes(20))
    protocol = ValidatingProtocol(
        me, ValidatingStorage(RecordValidator()), 8, rpc_timeout=1.0
    )
    for i in range(contact_count):
        protocol.router.add_contact(Node(rng.randbytes(20), "127.0.0.1", 3000 + i))
    contacts = [c.long_id for b in protocol.router.buckets for c in b.nodes.values()]
    decisions = []
    for i in range(400):
        # Half the keys near me (so I may be the closest), half anywhere.
        key = me.id[:17] + rng.randbytes(3) if i % 2 else rng.randbytes(20)
        newcomer = Node(key[:18] + rng.randbytes(2) if i % 3 else rng.randbytes(20))
        fast = protocol._should_hand_over(newcomer.long_id, key, contacts)
        assert fast == _reference_hand_over(protocol.router, me, newcomer, key)
        decisions.append(fast)
    assert any(decisions)  # the comparison covered both outcomes
    assert contact_count == 0 or not all(decisions)


def test_a_contact_waiting_as_replacement_is_not_new_again() -> None:
    me = Node(b"\x00" * 20)
    protocol = ValidatingProtocol(
        me, ValidatingStorage(RecordValidator()), 2, rpc_timeout=1.0
    )
    table = protocol.router
    # Far from me, and sharing a 5-bit prefix: kademlia does not split that bucket.
    far = [
        Node(bytes([first]) + b"\x00" * 19, "127.0.0.1", 4000 + first)
        for first in (0x80, 0x84, 0x81, 0x82, 0x83)
    ]

    for contact in far:
        table.add_contact(contact)  # the table only names whom to ping
    waiting = [c for c in far if c.id in table.buckets[-1].replacement_nodes]
    assert waiting, "no contact ended up in a replacement list"
    assert not any(table.is_new_node(c) for c in waiting)
    assert table.is_new_node(Node(b"\x90" + b"\x00" * 19))


def test_the_protocol_pings_the_head_the_table_names() -> None:
    me = Node(b"\x00" * 20)
    protocol = ValidatingProtocol(
        me, ValidatingStorage(RecordValidator()), 2, rpc_timeout=1.0
    )
    pinged: list[bytes] = []

    async def call_ping(node: Node) -> tuple[bool, object]:
        pinged.append(node.id)
        return (True, node.id)

    protocol.call_ping = call_ping  # type: ignore[method-assign]
    far = [
        Node(bytes([first]) + b"\x01" * 19, "127.0.0.1", 4000 + first)
        for first in (0x80, 0x84, 0x81)
    ]

    async def welcome() -> None:
        for contact in far:
            protocol.welcome_if_new(contact)
        await asyncio.sleep(0)  # the ping runs as a task of the protocol
        await protocol.close()

    asyncio.run(welcome())
    assert pinged == [far[0].id]  # the full bucket's least recently seen contact
