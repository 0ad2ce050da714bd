"""End to end on 127.0.0.1: a Byzantine aggregator and a lying auditor (issue 15).

Four aggregator-eligible peers (so the holder has a committee of three, threshold
two) and three clients, each its own process (``examples/localhost/run.py``), two
rounds of ``digits`` with the exact median (a strategy without run-to-run state, so
that a fresh auditor recomputes every round bit for bit; see the README's threat
model for the default). Minutes on two shared cores, hence ``slow``::

    .venv/bin/pytest tests/test_peer_byzantine.py -m slow

The same paths run in seconds in process in ``tests/test_round_audit.py``.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from flp2p.identity import Identity
from flp2p.ledger import Ledger
from flp2p.ledger.reports import finality_report
from flp2p.peer.round_audit import LIES, REVOKED_UNTIL

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "localhost" / "run.py"
TIMEOUT = 900.0
K = 3


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("localhost_byzantine", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


example = _example()


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Any]:
    running = example.LocalFederation(
        tmp_path,
        clients=3,
        rounds=2,
        strategy="median",
        insecure=True,
        eligible_peers=4,
        parameters=(f"audit.committee_size={K}",),
    )
    try:
        yield running
    finally:
        running.stop()


def node_id(federation: Any, name: str) -> str:
    return Identity.load(federation.work_dir / name / "identity.key").node_id


def final_chain(federation: Any, name: str) -> list[Any]:
    """The blocks of ``name``'s ledger, after checking the chain and that every
    round block is final with its committee."""
    with Ledger.open(federation.work_dir / name / "ledger.db") as ledger:
        ledger.verify()
        statuses = finality_report(ledger, K)
        assert statuses and all(s.is_final for s in statuses), [
            s.summary() for s in statuses
        ]
        blocks = list(ledger.blocks())
    # Every round was trained: no round ended at its deadline without replies.
    assert all(block.contributions for block in blocks[1:])
    return blocks


def run_to_the_end(federation: Any) -> dict[str, str]:
    federation.start()
    codes = federation.wait_clients(TIMEOUT)
    lines = {n: federation.log_tail(n, 1) for n in federation.client_names()}
    assert codes == dict.fromkeys(federation.client_names(), 0), lines
    return lines


def replicas(federation: Any) -> list[str]:
    return [*federation.eligible, *federation.client_names()]


@pytest.mark.slow
@pytest.mark.parametrize("lie", LIES)
def test_a_lying_aggregator_is_revoked_and_replaced(federation: Any, lie: str) -> None:
    federation.byzantine_aggregator = lie
    lines = run_to_the_end(federation)
    check_replaced(federation, lie, lines)


def check_replaced(federation: Any, lie: str, lines: dict[str, str]) -> None:
    """What a run with a Byzantine first aggregator must show once it ended."""
    liar = federation.first_aggregator()
    liar_id = node_id(federation, liar)
    logs = {
        name: (federation.work_dir / f"{name}.log").read_text()
        for name in federation.eligible
    }
    # Detected in round 1, where it lied: the committee accused it (for a dropped
    # reply: once the participant left out complained), the successor counted the
    # accusations, and took over as epoch 2.
    accusers = [n for n, text in logs.items() if n != liar and "accusing" in text]
    assert len(accusers) >= 2, accusers
    (successor,) = [n for n, t in logs.items() if "as lease epoch 2" in t]
    assert successor != liar
    assert f"of {liar_id[:12]}…: revoked" in logs[successor]
    assert "committee accusations in round 1" in logs[successor]
    for line in lines.values():
        assert "finished: round 2" in line and "lease epoch 2" in line
    # Every replica holds one chain of final blocks only; the successor signed
    # every round after the last final one and recorded the ban.
    chains = {name: final_chain(federation, name) for name in replicas(federation)}
    successor_chain = max(chains.values(), key=len)
    assert [b.server_round for b in successor_chain] == [0, 1, 2]
    for chain in chains.values():
        assert [b.block_hash for b in chain] == [
            b.block_hash for b in successor_chain[: len(chain)]
        ]
    liar_key = Identity.load(federation.work_dir / liar / "identity.key").public_key
    by_liar = [
        b.server_round for b in successor_chain[1:] if b.signer == liar_key.hex()
    ]
    if lie == "drop":
        # Its round 1 was consistent for the committee, hence final; one client
        # is missing from it, and that client complained.
        assert by_liar == [1]
        assert len(successor_chain[1].contributions) == federation.clients - 1
        complained = [
            n
            for n in federation.client_names()
            if "complained about round 1"
            in (federation.work_dir / f"{n}.log").read_text()
        ]
        assert len(complained) == 1
    else:
        assert by_liar == []
    bans = [
        row
        for block in successor_chain
        for row in block.reputations
        if row["identity"] == liar_id
    ]
    assert bans and bans[0]["banned_until"] == REVOKED_UNTIL
    # No participant was ever handed the liar's model: none refused to train.
    for name in federation.client_names():
        for log in (f"{name}.log", f"{name}/supernode.log"):
            assert "refusing to train" not in (federation.work_dir / log).read_text()


@pytest.mark.slow
def test_one_lying_auditor_neither_stops_the_round_nor_bans_anyone(
    federation: Any,
) -> None:
    federation.byzantine_auditor = True
    lines = run_to_the_end(federation)
    check_auditor_harmless(federation, lines)


def check_auditor_harmless(federation: Any, lines: dict[str, str]) -> None:
    """What a run with one falsely accusing auditor must show once it ended."""
    # The honest aggregator kept its lease for both rounds ...
    for line in lines.values():
        assert "finished: round 2" in line and "lease epoch 1" in line
    # ... and each round is final with the two honest co-signatures of three.
    liar_id = node_id(federation, federation.lying_auditor())
    for name in replicas(federation):
        chain = final_chain(federation, name)
        assert all(
            row["banned_until"] < REVOKED_UNTIL for b in chain for row in b.reputations
        )
    with Ledger.open(
        federation.work_dir / federation.first_aggregator() / "ledger.db"
    ) as ledger:
        for height in (1, 2):
            signers = {s.auditor for s in ledger.cosignatures(height)}
            assert len(signers) == 2 and liar_id not in signers
