"""A participant killed mid-round does not stop the federation (issue 13, item 2).

A localhost federation (founder, two eligible peers, three clients, digits, three
rounds): once round 1 is advertised, one client is SIGKILLed while round 2 trains.
Round 2 ends without its reply and round 3 samples the two that are left; without
:class:`flp2p.peer.round_deadline.DeadlineGrid` round 3 waited for ever for a third
connected node.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_peer_localhost import (
    TIMEOUT,
    chain_of,
    example,
    final_lines,
    identity_of,
    wait_until_none_left,
)

ROUND_TRAINING_SECONDS = 5.0
"""Pause after round 1 is advertised before the kill: round 2 is then under way."""


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Any]:
    running = example.LocalFederation(tmp_path, clients=3, rounds=3)
    try:
        yield running
    finally:
        running.stop()
        assert wait_until_none_left(tmp_path) == []


@pytest.mark.slow
def test_a_participant_killed_mid_round_holds_nothing(federation: Any) -> None:
    federation.start()

    def reached(last_round: int) -> float:
        lease = federation.observe(
            example.watch_lease(
                federation, lambda x: x.last_round >= last_round, TIMEOUT
            )
        )
        assert lease is not None, federation.log_tail("eligible-a", 20)
        return time.monotonic()

    round_1 = reached(1)
    time.sleep(ROUND_TRAINING_SECONDS)
    victim = "client-2"
    federation.kill(victim)
    killed = time.monotonic()
    round_2 = reached(2)
    round_3 = reached(3)
    survivors = [n for n in federation.client_names() if n != victim]
    codes = {n: federation.processes[n].wait(timeout=TIMEOUT) for n in survivors}
    assert codes == dict.fromkeys(survivors, 0), final_lines(federation)
    for name in survivors:
        assert "finished: round 3" in federation.log_tail(name, 1)
    holder = next(
        n for n in ("eligible-a", "eligible-b")
        if (federation.work_dir / n / "ledger.db").exists()
        and chain_of(federation, n)[-1][0] == 3
    )  # fmt: skip
    left = frozenset(identity_of(federation, n).node_id for n in survivors)
    chain = {r: ids for r, _, ids in chain_of(federation, holder)}
    gone = identity_of(federation, victim).node_id
    assert chain[1] == left | {gone}
    # Round 2: the survivors' replies, none signed by the victim (Flower may hand
    # back an error reply for its node, which the ledger keys by the Flower node
    # id); round 3 sampled only the two still connected.
    assert left <= chain[2] and gone not in chain[2]
    assert chain[3] == left
    print(
        f"round 1 advertised, kill +{killed - round_1:.1f} s; round 2 done "
        f"{round_2 - killed:.1f} s after the kill, round 3 {round_3 - round_2:.1f} s "
        "after round 2"
    )
