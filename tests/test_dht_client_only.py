"""Client-only DHT nodes: they get and put through others and are nobody's contact."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from helpers_dht import node_record
from kademlia.node import Node

from flp2p.dht import AddressBook
from flp2p.dht.protocol import CLIENT_ONLY_SENDER, ValidatingProtocol
from flp2p.dht.record_validation import RecordValidator
from flp2p.dht.storage import ValidatingStorage
from flp2p.identity import Identity

RPC_TIMEOUT = 0.3


def contact_ids(book: AddressBook) -> set[bytes]:
    """Kademlia ids in ``book``'s routing table, replacements included."""
    buckets = book.server.protocol.router.buckets
    return {
        contact_id
        for bucket in buckets
        for contact_id in (*bucket.nodes, *bucket.replacement_nodes)
    }


def contact_addresses(book: AddressBook) -> set[tuple[str, int]]:
    buckets = book.server.protocol.router.buckets
    return {(c.ip, c.port) for b in buckets for c in b.nodes.values()}


def kademlia_id(book: AddressBook) -> bytes:
    return bytes(book.server.node.id)


def run(
    servers: int,
    clients: int,
    scenario: Callable[[list[AddressBook], list[AddressBook]], Awaitable[None]],
) -> None:
    """``servers`` ordinary nodes and ``clients`` client-only ones, all joined."""

    async def main() -> None:
        full = [
            AddressBook(Identity.generate(), rpc_timeout=RPC_TIMEOUT)
            for _ in range(servers)
        ]
        thin = [
            AddressBook(Identity.generate(), rpc_timeout=RPC_TIMEOUT, client_only=True)
            for _ in range(clients)
        ]
        try:
            first = await full[0].start()
            for book in full[1:]:
                await book.start()
                await book.bootstrap([first])
            for book in thin:
                await book.start()
                await book.bootstrap([full[-1].address])
            await scenario(full, thin)
        finally:
            for book in (*full, *thin):
                await book.stop()

    asyncio.run(main())


def test_client_gets_and_puts_through_a_small_dht() -> None:
    async def scenario(full: list[AddressBook], thin: list[AddressBook]) -> None:
        client, other_client = thin
        assert client.client_only and not full[0].client_only
        # Put: the client's own record is held by servers, never by the client.
        accepted = await client.publish(node_record(client.identity, 7000))
        assert accepted == len(full)
        assert len(client.server.storage) == 0
        # Get: servers and the other client find it; the client finds servers'.
        for reader in (*full, other_client):
            found = await reader.get_node(client.identity.node_id)
            assert found == node_record(client.identity, 7000)
        await full[0].publish(node_record(full[0].identity, 7001))
        assert await client.get_node(full[0].identity.node_id) == node_record(
            full[0].identity, 7001
        )
        # The client routes through the servers it met.
        assert contact_ids(client) >= {kademlia_id(full[-1])}

    run(4, 2, scenario)


def test_client_never_enters_a_routing_table() -> None:
    async def scenario(full: list[AddressBook], thin: list[AddressBook]) -> None:
        for client in thin:
            await client.publish(node_record(client.identity))
            await client.heartbeat()  # pings every contact it knows
            for server in full:
                await client.get_node(server.identity.node_id)
        await asyncio.gather(*(server.heartbeat() for server in full))
        clients = {kademlia_id(c) for c in thin}
        client_addresses = {c.address for c in thin}
        for server in full:
            assert not contact_ids(server) & clients
            assert not contact_addresses(server) & client_addresses
            # The servers do know each other: the check above is not vacuous.
            assert contact_ids(server) >= {kademlia_id(s) for s in full} - {
                kademlia_id(server)
            }

    run(4, 2, scenario)


def test_nobody_can_join_through_a_client() -> None:
    async def scenario(full: list[AddressBook], thin: list[AddressBook]) -> None:
        newcomer = AddressBook(Identity.generate(), rpc_timeout=RPC_TIMEOUT)
        await newcomer.start()
        try:
            with pytest.raises(ConnectionError, match="no bootstrap peer"):
                await newcomer.bootstrap([thin[0].address])
        finally:
            await newcomer.stop()

    run(2, 1, scenario)


def test_client_only_requests_carry_no_sender_id() -> None:
    storage = ValidatingStorage(RecordValidator())
    me = Node(b"\x07" * 20)
    assert ValidatingProtocol(me, storage, 20, 1.0).sender_id == me.id
    client = ValidatingProtocol(me, storage, 20, 1.0, client_only=True)
    assert client.sender_id == CLIENT_ONLY_SENDER


def test_server_answers_a_client_only_asker_without_adding_it() -> None:
    server = ValidatingProtocol(
        Node(b"\x00" * 20), ValidatingStorage(RecordValidator()), 20, 1.0
    )
    known = Node(b"\x01" * 20, "127.0.0.1", 4001)
    server.router.add_contact(known)
    asker = ("10.9.9.9", 5000)
    assert server.rpc_ping(asker, CLIENT_ONLY_SENDER) == b"\x00" * 20
    assert server.rpc_find_node(asker, CLIENT_ONLY_SENDER, b"\x02" * 20) == [
        (known.id, "127.0.0.1", 4001)
    ]
    assert server.rpc_find_value(asker, CLIENT_ONLY_SENDER, b"\x02" * 20) == [
        (known.id, "127.0.0.1", 4001)
    ]
    contacts = [c for b in server.router.buckets for c in b.nodes.values()]
    assert [c.id for c in contacts] == [known.id]
    # An ordinary asker is added, as kademlia does.
    server.rpc_ping(("10.9.9.8", 5001), b"\x03" * 20)
    assert len([c for b in server.router.buckets for c in b.nodes.values()]) == 2
    # A sender id that is neither kind is refused (the datagram goes unanswered).
    with pytest.raises(ValueError, match="sender id"):
        server.rpc_ping(asker, b"\x03" * 5)


def test_a_client_whose_every_contact_stalled_still_asks_them() -> None:
    async def scenario(full: list[AddressBook], thin: list[AddressBook]) -> None:
        [client] = thin
        await full[0].publish(node_record(full[0].identity, 7002))
        protocol = client.server.protocol
        contacts = [c for b in protocol.router.buckets for c in b.nodes.values()]
        assert contacts
        for contact in contacts:  # e.g. each missed one answer on a loaded host
            protocol.mark_suspect(contact)
        # Nobody talks to a client unasked, so nothing would ever clear them.
        found = await client.get_node(full[0].identity.node_id)
        assert found == node_record(full[0].identity, 7002)
        assert not any(protocol.is_suspect(c) for c in contacts)

    run(3, 1, scenario)
