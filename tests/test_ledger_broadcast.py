"""Ledger replication: blocks ride on instructions; replicas verify and append."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from helpers_ledger import FEDERATION, KeySigner, make_report
from helpers_messages import make_train_reply

from flp2p.ledger import Ledger, LedgerError
from flp2p.ledger_broadcast import (
    CATCH_UP_BLOCKS,
    LEDGER_BLOCKS_KEY,
    LedgerBroadcast,
    block_height,
    sync_replica,
)
from strategies.base import ScreenedFedAvg
from strategies.records import ReputationState, Tier


class FakeGrid:
    """Just enough of a Flower Grid for ``configure_train``."""

    def get_node_ids(self) -> list[int]:
        return [11, 12, 13]


def aggregator_ledger(tmp_path: Path, rounds: int) -> Ledger:
    ledger = Ledger.open(
        tmp_path / "aggregator.db",
        federation=FEDERATION,
        signer=KeySigner(0),
        create=True,
    )
    for r in range(1, rounds + 1):
        ledger.record_round(make_report(r), [])
    return ledger


def _sent_heights(messages: list[Message]) -> dict[int, list[int]]:
    return {
        m.metadata.dst_node_id: [
            block_height(b)
            for b in m.content.config_records["config"][LEDGER_BLOCKS_KEY]
        ]
        for m in messages
    }


def test_instructions_carry_the_newest_blocks_to_recent_replicas(
    tmp_path: Path,
) -> None:
    ledger = aggregator_ledger(tmp_path, rounds=CATCH_UP_BLOCKS + 4)
    strategy = LedgerBroadcast(ScreenedFedAvg(min_available_nodes=3), ledger)
    arrays = ArrayRecord({"w": Array(np.zeros(2))})
    config = ConfigRecord({"lr": 0.1})
    height = ledger.height
    assert height is not None
    # Node 11 reported the height before last, node 12 one far behind the window.
    reports = {11: height - 1, 12: height - CATCH_UP_BLOCKS - 3}
    list(strategy.configure_train(4, arrays, config, FakeGrid()))
    strategy.aggregate_train(
        4,
        [
            make_train_reply({"w": np.ones(2)}, 5, node, metrics={"ledger-height": h})
            for node, h in reports.items()
        ],
    )
    messages = list(strategy.configure_train(5, arrays, config, FakeGrid()))
    sent = _sent_heights(messages)
    assert sent[11] == list(range(height - CATCH_UP_BLOCKS + 1, height + 1))
    assert sent[12] == list(range(reports[12] + 1, height + 1))
    assert sent[13] == list(range(height + 1))  # never reported: the whole chain
    for m in messages:  # the held strategy's own config survives
        assert m.content.config_records["config"]["lr"] == 0.1
    assert LEDGER_BLOCKS_KEY not in config  # the caller's record is not touched
    ledger.close()


def test_a_fresh_client_after_many_rounds_catches_up_and_a_refusal_resends(
    tmp_path: Path,
) -> None:
    ledger = aggregator_ledger(tmp_path, rounds=CATCH_UP_BLOCKS + 4)
    strategy = LedgerBroadcast(ScreenedFedAvg(min_available_nodes=3), ledger)
    arrays = ArrayRecord({"w": Array(np.zeros(2))})
    messages = list(strategy.configure_train(13, arrays, ConfigRecord(), FakeGrid()))
    blocks = messages[0].content.config_records["config"][LEDGER_BLOCKS_KEY]
    # A window alone (the former behaviour) cannot start an empty replica:
    with pytest.raises(LedgerError):
        sync_replica(tmp_path / "window.db", FEDERATION, blocks[-CATCH_UP_BLOCKS:])
    fresh = tmp_path / "fresh.db"
    assert sync_replica(fresh, FEDERATION, blocks) == ledger.height
    with Ledger.open(fresh) as replica:
        assert replica.verify() == ledger.height + 1
    # A node that reported a height, then refused a block, gets everything again.
    height = ledger.height
    assert height is not None
    strategy.aggregate_train(
        13,
        [make_train_reply({"w": np.ones(2)}, 5, 11, metrics={"ledger-height": height})],
    )
    list(strategy.configure_train(14, arrays, ConfigRecord(), FakeGrid()))
    strategy.aggregate_train(
        14, [make_train_reply({"w": np.ones(2)}, 5, 11, metrics={"ledger-refused": 1})]
    )
    messages = list(strategy.configure_train(15, arrays, ConfigRecord(), FakeGrid()))
    assert _sent_heights(messages)[11] == list(range(height + 1))
    ledger.close()


def test_replicas_hold_the_same_chain_over_five_rounds(tmp_path: Path) -> None:
    ledger = Ledger.open(
        tmp_path / "agg.db", federation=FEDERATION, signer=KeySigner(0), create=True
    )
    replicas = [tmp_path / f"replica-{i}.db" for i in range(3)]
    for r in range(1, 6):
        ledger.record_round(make_report(r), [])
        window = ledger.blocks_bytes_after(ledger.height - CATCH_UP_BLOCKS)
        # replica 2 sits out round 3 and catches up afterwards
        for i, path in enumerate(replicas):
            if not (i == 2 and r == 3):
                sync_replica(path, FEDERATION, window)
    hashes = [b.block_hash for b in ledger.blocks()]
    for path in replicas:
        with Ledger.open(path) as replica:
            assert [b.block_hash for b in replica.blocks()] == hashes
            assert replica.verify() == len(hashes)
    ledger.close()


def test_forged_or_foreign_block_is_refused_and_nothing_written(tmp_path: Path) -> None:
    ledger = aggregator_ledger(tmp_path, rounds=2)
    blocks = ledger.blocks_bytes_after(-1)
    replica = tmp_path / "replica.db"
    sync_replica(replica, FEDERATION, blocks[:2])
    forged = blocks[2].replace(b'"server_round":2', b'"server_round":9')
    assert forged != blocks[2]
    with pytest.raises(LedgerError):
        sync_replica(replica, FEDERATION, [forged])
    with pytest.raises(LedgerError):
        sync_replica(tmp_path / "other.db", "another-federation", blocks)
    with Ledger.open(replica) as copy:
        assert copy.height == 1
    ledger.close()


def test_reputation_carries_over_between_runs_through_a_fixed_ledger(
    tmp_path: Path,
) -> None:
    from flp2p.app import open_run_ledger
    from flp2p.config import RunSettings, compose

    shared = tmp_path / "federation.db"
    settings = RunSettings.from_config(
        compose(["dataset=digits", "strategy=trusted", f"ledger.path={shared}"])
    )
    first = open_run_ledger(settings, tmp_path / "run-1")
    assert first is not None
    first.record_round(make_report(1), [])
    first.put_reputations([ReputationState("peer-a", 0.9, Tier.GOLD)])
    first.close()
    second = open_run_ledger(settings, tmp_path / "run-2")
    assert second is not None and second.path == shared
    assert second.height == 1  # genesis + the first run's round
    carried = second.get_reputation("peer-a")
    assert carried is not None and carried.score == 0.9 and carried.tier is Tier.GOLD
    second.close()


def count_commits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every COMMIT the ledgers opened from now on issue (traced by SQLite)."""
    commits: list[str] = []
    real_open = Ledger.open.__func__  # type: ignore[attr-defined]

    def traced_open(cls: type[Ledger], *args: object, **kwargs: object) -> Ledger:
        ledger: Ledger = real_open(cls, *args, **kwargs)
        ledger.db.conn.set_trace_callback(
            lambda sql: commits.append(sql) if sql.strip().upper() == "COMMIT" else None
        )
        return ledger

    monkeypatch.setattr(Ledger, "open", classmethod(traced_open))
    return commits


@pytest.mark.parametrize("rounds", [3, 12])
def test_catching_up_n_blocks_commits_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rounds: int
) -> None:
    ledger = aggregator_ledger(tmp_path, rounds=rounds)
    blocks = ledger.blocks_bytes_after(-1)
    commits = count_commits(monkeypatch)
    height = sync_replica(tmp_path / "fresh.db", FEDERATION, blocks)
    assert height == rounds
    assert len(commits) == 1  # not one per block: the catch-up is one transaction
    with Ledger.open(tmp_path / "fresh.db") as replica:
        assert replica.verify() == rounds + 1
    ledger.close()


def test_a_bad_block_in_the_middle_keeps_the_verified_prefix(tmp_path: Path) -> None:
    ledger = aggregator_ledger(tmp_path, rounds=5)
    blocks = ledger.blocks_bytes_after(-1)
    forged = blocks[3].replace(b'"server_round":3', b'"server_round":9')
    assert forged != blocks[3]
    replica = tmp_path / "replica.db"
    with pytest.raises(LedgerError):
        sync_replica(replica, FEDERATION, [*blocks[:3], forged, *blocks[4:]])
    with Ledger.open(replica) as copy:
        assert copy.height == 2  # genesis, rounds 1 and 2: verified and committed
        assert copy.verify() == 3
    # the refused block and those after it arrive again, genuine: the chain completes
    assert sync_replica(replica, FEDERATION, blocks) == 5
    ledger.close()


class CapturingGrid:
    """A grid with one participant that keeps what it is sent."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return [21]

    def send_and_receive(
        self, messages: list[Message], timeout: float
    ) -> list[Message]:
        self.sent.extend(messages)
        return []


def test_the_final_model_reaches_a_participant_far_behind_with_the_whole_chain(
    tmp_path: Path,
) -> None:
    from flp2p.peer.checkpoints import Checkpoint
    from flp2p.peer.federation_app import deliver_final_model

    ledger = aggregator_ledger(tmp_path, rounds=CATCH_UP_BLOCKS + 4)
    height = ledger.height
    assert height is not None
    grid = CapturingGrid()
    deliver_final_model(
        grid, Checkpoint(height, {"w": np.zeros(2)}), ledger, FEDERATION
    )
    (message,) = grid.sent
    blocks = message.content.config_records["config"][LEDGER_BLOCKS_KEY]
    far_behind = tmp_path / "far-behind.db"
    sync_replica(far_behind, FEDERATION, blocks[:2])  # it left after round 1
    assert sync_replica(far_behind, FEDERATION, blocks) == height
    with Ledger.open(far_behind) as replica:
        assert replica.verify() == height + 1
    ledger.close()
