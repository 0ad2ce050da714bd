"""The peer runtime across machines: every peer in a network namespace of its own.

Six "hosts" on one bridge (:mod:`benchmarks.netns_hosts`): the founder, two
aggregator-eligible peers listening on the wildcard (so they advertise the address
that routes to the founder) and three participants. Loopback is private to each
host, so a round completes only if every service binds where it is told and every
record and lease names an address the others can reach. After round 2 the
aggregator's process group is killed; the other eligible peer must take over from
what the network shows, and the run finishes. Needs root for ``ip netns``; skipped
with the reason otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from helpers_netns import Hosts, hosts_or_skip
from test_peer_localhost import (
    assert_participants_hold_the_end,
    chain_of,
    example,
    final_leases,
    final_lines,
    identity_of,
    wait_until_none_left,
)

from benchmarks.netns_hosts import namespace_federation
from flp2p.dht import AddressBook
from flp2p.identity import Identity
from flp2p.peer.checkpoints import CheckpointStore

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 3
ROUNDS = 3
KILL_AFTER_ROUND = 2
TIMEOUT = 420.0
HOST_NAMES = ["founder", "eligible-a", "eligible-b"] + [
    f"client-{i}" for i in range(CLIENTS)
]


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    yield from hosts_or_skip("flp2p", HOST_NAMES)


@pytest.fixture
def federation(
    hosts: Hosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the peers import this checkout
    running = namespace_federation(hosts, tmp_path, clients=CLIENTS, rounds=ROUNDS)
    try:
        yield running
    finally:
        running.stop()
        assert wait_until_none_left(tmp_path) == []


def kademlia_id(identity: Identity) -> bytes:
    """A peer's DHT id: the first 160 bits of its node id (AddressBook)."""
    return bytes.fromhex(identity.node_id)[:20]


async def dht_view(
    federation: Any, targets: Sequence[bytes]
) -> tuple[set[bytes], set[bytes]] | None:
    """Kademlia ids of the DHT nodes a client-only observer meets through the
    bootstrap peer, and every id those nodes name when asked for their contacts
    closest to each of ``targets`` (a contact at distance 0 is always named);
    None if a contact did not answer."""
    book = AddressBook(Identity.generate(), rpc_timeout=5.0, client_only=True)
    await book.start(federation.placement("observer")[1])
    try:
        host, port = federation.bootstrap.rsplit(":", 1)
        await book.bootstrap([(host, int(port))])
        protocol = book.server.protocol
        contacts = [c for b in protocol.router.buckets for c in b.nodes.values()]
        named: set[bytes] = set()
        for contact in contacts:
            for target in targets:
                address = (contact.ip, contact.port)
                answered, nodes = await protocol.find_node(
                    address, protocol.sender_id, target
                )
                if not answered:
                    return None
                named |= {bytes(node[0]) for node in nodes}
        return {bytes(c.id) for c in contacts}, named
    finally:
        await book.stop()


def settled_dht_view(
    federation: Any, participants: Sequence[bytes], full_nodes: set[bytes]
) -> tuple[set[bytes], set[bytes]]:
    """Look at the DHT until it shows every full node (up to a minute).

    A lookup skips a contact that is slow to answer (the stall timeout), so on a
    loaded host one look may miss a full node; a participant must never be seen,
    in any look.
    """
    deadline = time.monotonic() + 60.0
    while True:
        view = federation.observe(dht_view(federation, participants))
        if view is not None:
            contacts, named = view
            assert not (contacts | named) & set(participants), "a client is routed"
            if contacts == full_nodes == named or time.monotonic() > deadline:
                return contacts, named
        elif time.monotonic() > deadline:
            raise AssertionError("a DHT node did not answer for a minute")
        time.sleep(2.0)


def test_three_participants_on_other_hosts_survive_the_aggregator(
    federation: Any, hosts: Hosts
) -> None:
    started = time.monotonic()
    federation.start()
    # Once a round finished, the participants (which trained it) are in nobody's
    # routing table: they joined as DHT clients. The founder and both eligible
    # peers are full nodes, and each knows the others.
    federation.observe(
        example.watch_lease(federation, lambda x: x.last_round >= 1, TIMEOUT)
    )
    participants = [
        kademlia_id(identity_of(federation, n)) for n in federation.client_names()
    ]
    full_nodes = {
        kademlia_id(Identity.load(federation.work_dir / "founder.key")),
        *(kademlia_id(identity_of(federation, n)) for n in federation.eligible),
    }
    contacts, named = settled_dht_view(federation, participants, full_nodes)
    assert contacts == full_nodes
    assert named == full_nodes
    failover = example.kill_holder_and_watch(federation, KILL_AFTER_ROUND, TIMEOUT)
    codes = federation.wait_clients(TIMEOUT)
    took = time.monotonic() - started
    moved = example.supernodes_moved_after(federation, failover)
    print(f"namespaces run: {took:.0f} s; SuperNodes moved after {moved} s; {failover}")
    assert codes == dict.fromkeys(federation.client_names(), 0), final_lines(federation)
    survivor = ({"eligible-a", "eligible-b"} - {failover.victim}).pop()
    # Both leases name the holder's address on the bridge (what the wildcard
    # listener found routes to the founder), never a loopback.
    port = failover.victim_superlink.rpartition(":")[2]
    assert failover.victim_superlink == f"{hosts.address[failover.victim]}:{port}"
    assert failover.successor_superlink is not None
    assert failover.successor_superlink.startswith(f"{hosts.address[survivor]}:")
    # Two live eligible peers on different hosts kept one epoch until the kill:
    # the successor's is the second, resuming from the round the victim advertised.
    assert failover.killed_after_round == KILL_AFTER_ROUND
    assert failover.successor_epoch == 2
    assert failover.resumed_from_round == KILL_AFTER_ROUND
    assert moved is not None and 0 < moved < TIMEOUT  # every client followed
    final = CheckpointStore(federation.work_dir / survivor / "checkpoints").load(ROUNDS)
    assert final_leases(federation) == {
        f"federation {federation.federation_id[:12]} finished: round {ROUNDS}, "
        f"model {final.sha256[:12]}, lease epoch 2"
    }
    # Every copy of the ledger verifies (chain_of checks it) and is a prefix of
    # the successor's: the victim signed rounds 0..2, the successor round 3.
    victim_key = identity_of(federation, failover.victim).public_key.hex()
    survivor_key = identity_of(federation, survivor).public_key.hex()
    chain = chain_of(federation, survivor)
    assert [(r, signer) for r, signer, _ in chain] == [
        *((r, victim_key) for r in range(KILL_AFTER_ROUND + 1)),
        *((r, survivor_key) for r in range(KILL_AFTER_ROUND + 1, ROUNDS + 1)),
    ]
    clients = frozenset(
        identity_of(federation, n).node_id for n in federation.client_names()
    )
    assert all(ids == clients for _, _, ids in chain[1:])
    copy = chain_of(federation, failover.victim)
    assert copy == chain[: len(copy)] and len(copy) >= KILL_AFTER_ROUND + 1
    # The clients hold all of it, and the final model (sent after the last round).
    assert_participants_hold_the_end(federation, chain, final.sha256)
