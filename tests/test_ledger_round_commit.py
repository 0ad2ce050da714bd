"""A round's reputations and its block land in one transaction (issue 11, item 1).

The SQLite ledger is both the strategy's reputation store and its round recorder.
:meth:`strategies.reputation.ReputationBook.commit` writes the standings, then the
block; each is a transaction of its own unless the commit holds the ledger's
:meth:`~flp2p.ledger.Ledger.transaction` around both. Without it a crash between
the two leaves standings that no block records (and the rerun round would count
twice). The crash test forks a writer that commits rounds the way the strategy
does, SIGKILLs it at random moments, and checks that the current standings are
always those of the last block.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
from helpers_ledger import FEDERATION, KeySigner, make_report, make_reputations

from flp2p.ledger import Ledger, LedgerError
from strategies.reputation import ReputationBook

TRIALS = 20
PEERS = 40
"""Contributions per round: enough that a write takes a few milliseconds."""
ROUNDS_PER_WRITER = 3.0
"""A kill comes at most this many round durations (measured here, first) after the
writer began its first commit: several commits complete, many kills land inside
one, however loaded the machine is."""
AGGREGATOR = KeySigner(1)

_FORK = multiprocessing.get_context("fork")


def _commit_round(ledger: Ledger, server_round: int) -> None:
    """One round as the strategy ends it: the ledger is store and recorder."""
    report = make_report(server_round, PEERS)
    ReputationBook(store=ledger).commit(report, make_reputations(report), ledger)


def _commit_rounds_until_killed(path: str, writing: object, committed: object) -> None:
    """Child process: commit rounds forever, flagging when inside a commit and
    counting the commits done."""
    ledger = Ledger.open(path, federation=FEDERATION, signer=AGGREGATOR, create=True)
    server_round = (ledger.height or 0) + 1
    while True:
        writing.value = 1  # type: ignore[attr-defined]
        _commit_round(ledger, server_round)
        writing.value = 0  # type: ignore[attr-defined]
        committed.value += 1  # type: ignore[attr-defined]
        server_round += 1


def _standings_out_of_step(path: Path) -> list[str]:
    """Identities whose current standing is not their snapshot in the last block."""
    with Ledger.open(path) as ledger:
        ledger.verify()
        rows = ledger.db.execute(
            """
            SELECT r.identity FROM reputations AS r
            WHERE r.updated_height IS NULL
               OR r.updated_height != (SELECT MAX(height) FROM blocks)
               OR NOT EXISTS (
                   SELECT 1 FROM reputation_snapshots AS s
                   WHERE s.height = r.updated_height AND s.identity = r.identity
                     AND s.score = r.score AND s.last_round = r.last_round
                     AND s.rounds_participated = r.rounds_participated)
            ORDER BY r.identity
            """
        ).fetchall()
    return [str(identity) for (identity,) in rows]


def test_a_failing_block_takes_the_rounds_reputations_with_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger.open(
        path, federation=FEDERATION, signer=AGGREGATOR, create=True
    ) as ledger:
        _commit_round(ledger, 1)
        before = ledger.all_reputations()
    # A replica has no signing key: its record_round refuses, after the standings
    # were put in the same commit.
    with Ledger.open(path) as replica:
        report = make_report(2, PEERS)
        with pytest.raises(LedgerError, match="no signing identity"):
            ReputationBook(store=replica).commit(
                report, make_reputations(report), replica
            )
        assert replica.all_reputations() == before
        assert replica.height == 1
    assert _standings_out_of_step(path) == []


def test_commit_without_a_shared_transaction_still_writes_both(tmp_path: Path) -> None:
    """Store and recorder need not be one object (nor transactional at all)."""
    from strategies.records import InMemoryStore

    path = tmp_path / "ledger.db"
    store = InMemoryStore()
    with Ledger.open(
        path, federation=FEDERATION, signer=AGGREGATOR, create=True
    ) as ledger:
        report = make_report(1, PEERS)
        ReputationBook(store=store).commit(report, make_reputations(report), ledger)
        assert ledger.height == 1
        assert len(store.all_reputations()) == PEERS
        # The ledger, here only the recorder, keeps the block's standings too.
        assert sorted(s.identity for s in ledger.all_reputations()) == sorted(
            s.identity for s in store.all_reputations()
        )


@pytest.mark.skipif(
    not hasattr(os, "fork"), reason="needs fork to start writers cheaply"
)
def test_sigkill_during_commits_never_leaves_standings_without_their_block(
    tmp_path: Path,
) -> None:
    path = tmp_path / "crash.db"
    with Ledger.open(
        path, federation=FEDERATION, signer=AGGREGATOR, create=True
    ) as ledger:
        started = time.perf_counter()
        _commit_round(ledger, 1)
        max_delay_s = ROUNDS_PER_WRITER * (time.perf_counter() - started)
    rng = random.Random(20261202)
    # No lock: a writer killed while holding a Value's lock would deadlock the test.
    writing = _FORK.RawValue("i", 0)
    committed = _FORK.RawValue("i", 0)
    killed_mid_commit = 0
    heights = []
    for trial in range(TRIALS):
        committed.value = 0
        writer = _FORK.Process(
            target=_commit_rounds_until_killed, args=(str(path), writing, committed)
        )
        writer.start()
        while not writing.value and writer.is_alive():
            time.sleep(0.001)  # until its first commit began (the ledger is open)
        if trial % 4 == 3:
            # Every fourth writer first finishes a commit, so the chain grows even
            # when load makes every commit outlast the measured round duration.
            deadline = time.monotonic() + 60
            while not committed.value and time.monotonic() < deadline:
                time.sleep(0.001)
        time.sleep(rng.uniform(0.0, max_delay_s))
        os.kill(writer.pid, signal.SIGKILL)  # type: ignore[arg-type]
        writer.join()
        assert writer.exitcode == -signal.SIGKILL
        killed_mid_commit += writing.value
        writing.value = 0
        assert _standings_out_of_step(path) == [], "standings without their block"
        with Ledger.open(path) as ledger:
            heights.append(ledger.height or 0)
    assert heights[-1] > 1, "no writer ever committed a round"
    # Many kills must land inside a commit, or the test proved nothing.
    assert killed_mid_commit >= TRIALS // 4, f"only {killed_mid_commit} mid-commit"
