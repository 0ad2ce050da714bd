"""Crash safety: a writer killed with SIGKILL never leaves half a round behind.

Each trial forks a process that appends rounds to the same ledger as fast as it can,
kills it after a random delay, then checks the survivor: the chain verifies and every
block has all of its rows. A shared flag records whether the writer was inside
``record_round`` when it died, so the test proves it hit writes in flight.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
from helpers_ledger import FEDERATION, KeySigner, record_rounds

from flp2p.ledger import Ledger

TRIALS = 50
PEERS = 40
"""Contributions per round: enough that a write takes a few milliseconds."""
MAX_DELAY_S = 0.05
AGGREGATOR = KeySigner(1)

_FORK = multiprocessing.get_context("fork")


def _write_rounds_until_killed(path: str, writing: object) -> None:
    """Child process: append rounds forever, flagging when inside a write."""
    ledger = Ledger.open(path, federation=FEDERATION, signer=AGGREGATOR, create=True)
    server_round = (ledger.height or 0) + 1
    while True:
        writing.value = 1  # type: ignore[attr-defined]
        record_rounds(ledger, [server_round], peers=PEERS)
        writing.value = 0  # type: ignore[attr-defined]
        server_round += 1


def _check_whole(path: Path) -> int:
    """Verify the chain and that every block holds all its rows; return blocks."""
    with Ledger.open(path) as ledger:
        blocks = ledger.verify()
        rounds = blocks - 1  # the genesis has no rows
        for table in ("contributions", "rewards", "reputation_snapshots"):
            rows = ledger.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            assert rows == rounds * PEERS, f"{table}: {rows} rows for {rounds} rounds"
        assert ledger.db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    return blocks


@pytest.mark.skipif(
    not hasattr(os, "fork"), reason="needs fork to start writers cheaply"
)
def test_sigkill_during_writes_never_leaves_half_a_round(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    with Ledger.open(
        path, federation=FEDERATION, signer=AGGREGATOR, create=True
    ) as ledger:
        record_rounds(ledger, [1], peers=PEERS)
    rng = random.Random(20261122)
    # No lock: a writer killed while holding a Value's lock would deadlock the test.
    writing = _FORK.RawValue("i", 0)
    killed_mid_write = 0
    blocks = [_check_whole(path)]
    for _ in range(TRIALS):
        writer = _FORK.Process(
            target=_write_rounds_until_killed, args=(str(path), writing)
        )
        writer.start()
        time.sleep(rng.uniform(0.0, MAX_DELAY_S))
        os.kill(writer.pid, signal.SIGKILL)  # type: ignore[arg-type]
        writer.join()
        assert writer.exitcode == -signal.SIGKILL
        killed_mid_write += writing.value
        writing.value = 0
        blocks.append(_check_whole(path))
    assert blocks == sorted(blocks), "a committed block disappeared"
    assert blocks[-1] > blocks[0], "no writer ever committed a round"
    # Many kills must land inside a write, or the test proved nothing (a quiet run
    # here sees about three in four).
    assert killed_mid_write >= TRIALS // 4, f"only {killed_mid_write} mid-write kills"
