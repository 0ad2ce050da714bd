"""The peer runtime across machines: every peer in a network namespace of its own.

Six "hosts" on one bridge (:mod:`helpers_netns`): the founder, two
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

from flp2p.peer.checkpoints import CheckpointStore

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 3
ROUNDS = 3
KILL_AFTER_ROUND = 2
TIMEOUT = 420.0
HOST_NAMES = ["founder", "eligible-a", "eligible-b"] + [
    f"client-{i}" for i in range(CLIENTS)
]
WILDCARD_LISTENERS = ("eligible-a", "eligible-b")


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    yield from hosts_or_skip("flp2p", HOST_NAMES)


@pytest.fixture
def federation(
    hosts: Hosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the peers import this checkout

    def placement(name: str) -> tuple[Sequence[str], str]:
        host = "founder" if name == "observer" else name
        listen = "0.0.0.0" if name in WILDCARD_LISTENERS else hosts.address[host]
        return hosts.launcher(host), listen

    running = example.LocalFederation(
        tmp_path,
        clients=CLIENTS,
        rounds=ROUNDS,
        placement=placement,
        observe=hosts.asyncio_on("founder"),
        bootstrap_port=9400,
    )
    try:
        yield running
    finally:
        running.stop()
        assert wait_until_none_left(tmp_path) == []


def test_three_participants_on_other_hosts_survive_the_aggregator(
    federation: Any, hosts: Hosts
) -> None:
    started = time.monotonic()
    federation.start()
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
