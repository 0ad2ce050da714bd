"""A Byzantine aggregator or a lying auditor across network namespaces (issue 15).

Eight "hosts" on one bridge (:mod:`benchmarks.netns_hosts`): the founder, four
aggregator-eligible peers (a committee of three, threshold two, as the default
k = 3 needs) and three participants, each process in its own namespace, so every
audit request, accusation and take-over crosses the network as between separate
machines. The first aggregator tells each lie of
:data:`~flp2p.peer.round_audit.LIES` in turn (``alter``, ``drop``, ``reward``,
``replay``): the committee refuses it and accuses it in that round, the lease is
revoked, an honest peer continues from the last final block, records the ban, and
the run ends; every replica's chain verifies and holds final blocks only (the
checks of :func:`test_peer_byzantine.check_replaced`). Or one auditor accuses
falsely: both rounds still finalize with the two honest co-signatures and nobody is
banned (:func:`test_peer_byzantine.check_auditor_harmless`). The same checks as on
127.0.0.1 (``tests/test_peer_byzantine.py``). Needs root for ``ip netns``; minutes
on two shared cores each, hence ``slow``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_netns import Hosts, hosts_or_skip
from test_peer_byzantine import (
    K,
    check_auditor_harmless,
    check_replaced,
    run_to_the_end,
)
from test_peer_localhost import wait_until_none_left

from benchmarks.netns_hosts import namespace_federation
from flp2p.peer.round_audit import LIES

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 3
ELIGIBLE = [f"eligible-{c}" for c in "abcd"]
HOST_NAMES = ["founder", *ELIGIBLE] + [f"client-{i}" for i in range(CLIENTS)]


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    yield from hosts_or_skip("flbyz", HOST_NAMES)


@pytest.fixture
def federation(
    hosts: Hosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the peers import this checkout
    running = namespace_federation(
        hosts,
        tmp_path,
        wildcard_listeners=ELIGIBLE,
        clients=CLIENTS,
        rounds=2,
        strategy="median",
        insecure=True,
        eligible_peers=len(ELIGIBLE),
        parameters=(f"audit.committee_size={K}",),
    )
    try:
        yield running
    finally:
        running.stop()
        assert wait_until_none_left(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("lie", LIES)
def test_a_lying_aggregator_on_another_host_is_revoked_and_replaced(
    federation: Any, lie: str
) -> None:
    started = time.monotonic()
    federation.byzantine_aggregator = lie
    lines = run_to_the_end(federation)
    print(f"namespaces Byzantine run ({lie}): {time.monotonic() - started:.0f} s")
    check_replaced(federation, lie, lines)


@pytest.mark.slow
def test_one_lying_auditor_on_another_host_neither_stops_the_round_nor_bans_anyone(
    federation: Any,
) -> None:
    started = time.monotonic()
    federation.byzantine_auditor = True
    lines = run_to_the_end(federation)
    print(f"namespaces lying auditor run: {time.monotonic() - started:.0f} s")
    check_auditor_harmless(federation, lines)
