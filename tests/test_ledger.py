"""The SQLite ledger: protocols, persistence, tampering, replication, bad files."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest
from helpers_ledger import (
    FEDERATION,
    KeySigner,
    database_dump,
    make_report,
    make_reputations,
    record_rounds,
    tamper,
)

from flp2p.ledger import (
    Block,
    BlockFormatError,
    ChainError,
    FederationMismatchError,
    ForeignDatabaseError,
    Ledger,
    LedgerError,
    LedgerNotFoundError,
    RewardPolicy,
)
from flp2p.ledger.schema import SCHEMA_VERSION, read_meta
from flp2p.signatures import canonical_ledger_json
from strategies.records import (
    Contribution,
    ReputationState,
    ReputationStore,
    RoundRecorder,
    RoundReport,
    Tier,
    Verdict,
)

AGGREGATOR = KeySigner(1)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


def aggregator_ledger(
    path: Path,
    signer: KeySigner = AGGREGATOR,
    allowed_signers: Sequence[bytes] = (),
    policy: RewardPolicy | None = None,
) -> Ledger:
    return Ledger.open(
        path,
        federation=FEDERATION,
        signer=signer,
        allowed_signers=allowed_signers,
        policy=policy,
        create=True,
    )


@pytest.fixture
def five_rounds(db_path: Path) -> Path:
    """A ledger of genesis + 5 round blocks (heights 0..5)."""
    with aggregator_ledger(db_path) as ledger:
        record_rounds(ledger, range(1, 6))
    return db_path


# -- protocols and persistence -------------------------------------------------------


def test_implements_strategy_protocols(db_path: Path) -> None:
    with aggregator_ledger(db_path) as ledger:
        assert isinstance(ledger, ReputationStore)
        assert isinstance(ledger, RoundRecorder)


def test_reputation_round_trips_and_survives_reopen(db_path: Path) -> None:
    state = ReputationState("peer-a", 0.75, Tier.GOLD, 1, 4, 4, 3, 1, banned_until=0)
    with aggregator_ledger(db_path) as ledger:
        assert ledger.get_reputation("peer-a") is None
        ledger.put_reputations([state, ReputationState("peer-b", 0.1)])
        ledger.put_reputations([state.evolve(score=0.8)])
    with Ledger.open(db_path) as reopened:
        assert reopened.get_reputation("peer-a") == state.evolve(score=0.8)
        assert [s.identity for s in reopened.all_reputations()] == ["peer-a", "peer-b"]


def test_record_round_persists_rows_rewards_and_reputations(five_rounds: Path) -> None:
    with Ledger.open(five_rounds) as ledger:
        assert ledger.height == 5
        assert ledger.verify() == 6
        block = ledger.block(3)
        report = make_report(3)
        assert block.server_round == 3
        assert [r["identity"] for r in block.contributions] == [
            c.identity for c in report.contributions
        ]
        # uint64 node ids survive SQLite's signed INTEGER.
        assert block.contributions[0]["node_id"] == 2**64 - 1
        # Hand computation: 3 accepted with weights 10/60, 20/60, 30/60 → quality
        # min(1, 3w) = 0.5, 1, 1; silver ×1.25 (make_reputations); base 10.
        tokens = [r["tokens"] for r in block.rewards]
        assert tokens == pytest.approx([6.25, 12.5, 12.5, 0.0])
        assert ledger.get_reputation("peer-003") == make_reputations(report)[3].evolve(
            last_round=5, rounds_participated=5, rounds_rejected=5
        )
        totals = dict(
            ledger.db.execute(
                "SELECT identity, SUM(tokens) FROM rewards GROUP BY identity"
            ).fetchall()
        )
        assert totals["peer-001"] == pytest.approx(5 * 12.5)
        assert totals["peer-003"] == 0.0


def test_bans_and_non_finite_scores_are_recorded(db_path: Path) -> None:
    banned = Contribution(
        "bad", 7, 5, "", {"norm": float("inf")}, Verdict.REJECTED, "nan update", 0.0
    )
    good = Contribution("good", 8, 5, "", {"norm": 0.1}, Verdict.ACCEPTED, "", 1.0)
    report = RoundReport(2, (banned, good), None)
    states = [
        ReputationState("bad", 0.0, banned_until=12),
        ReputationState("good", 0.6),
    ]
    with aggregator_ledger(db_path) as ledger:
        ledger.record_round(report, states)
        ledger.record_round(RoundReport(3, (good,), None), states)
        assert ledger.verify() == 3
        assert ledger.block(1).contributions[0]["scores"] == {"norm": "inf"}
        bans = list(ledger.db.query("SELECT * FROM bans"))
    # One ban, recorded when first seen, with the contribution's reason.
    assert bans == [
        {
            "identity": "bad",
            "height": 1,
            "server_round": 2,
            "banned_until": 12,
            "reason": "nan update",
        }
    ]


def test_reward_policy_is_applied(db_path: Path) -> None:
    policy = RewardPolicy(base_tokens=2.0, silver_multiplier=3.0)
    with aggregator_ledger(db_path, policy=policy) as ledger:
        record_rounds(ledger, [1])
        tokens = [r["tokens"] for r in ledger.block(1).rewards]
    assert tokens == pytest.approx([1.0 * 3.0, 2.0 * 3.0, 2.0 * 3.0, 0.0])


def test_replica_without_signer_cannot_record(db_path: Path) -> None:
    with Ledger.open(db_path, federation=FEDERATION, create=True) as replica:
        report = make_report(1)
        with pytest.raises(LedgerError, match="no signing identity"):
            replica.record_round(report, make_reputations(report))
        assert replica.height is None


def test_chain_rows_are_append_only(five_rounds: Path) -> None:
    with Ledger.open(five_rounds) as ledger:
        conn = ledger.db.conn
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE contributions SET weight = 1 WHERE height = 2")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM blocks WHERE height = 5")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(
                "INSERT OR REPLACE INTO rewards SELECT * FROM rewards WHERE height = 1"
            )
        conn.rollback()
        assert ledger.verify() == 6


# -- tamper evidence: verify names the first bad block ---------------------------------


def _verify_fails_at(path: Path, height: int, reason: str) -> None:
    with Ledger.open(path) as ledger, pytest.raises(ChainError, match=reason) as error:
        ledger.verify()
    assert error.value.height == height


def test_altered_contribution_row_fails_at_its_block(five_rounds: Path) -> None:
    tamper(
        five_rounds,
        ("UPDATE contributions SET weight = 0.9 WHERE height = 3 AND position = 0", ()),
    )
    _verify_fails_at(five_rounds, 3, "signature")


def test_altered_reward_and_snapshot_fail_at_their_blocks(five_rounds: Path) -> None:
    tamper(five_rounds, ("UPDATE rewards SET tokens = 1000 WHERE height = 4", ()))
    _verify_fails_at(five_rounds, 4, "signature")
    tamper(
        five_rounds,
        ("UPDATE reputation_snapshots SET score = 1 WHERE height = 2", ()),
    )
    _verify_fails_at(five_rounds, 2, "signature")


def test_mistyped_row_fails_at_its_block(five_rounds: Path) -> None:
    tamper(five_rounds, ("UPDATE contributions SET scores = 'x' WHERE height = 2", ()))
    _verify_fails_at(five_rounds, 2, "malformed")


def test_deleted_block_fails_where_it_is_missing(five_rounds: Path) -> None:
    tamper(
        five_rounds,
        *[
            (f"DELETE FROM {table} WHERE height = 3", ())
            for table in ("blocks", "contributions", "rewards", "reputation_snapshots")
        ],
    )
    _verify_fails_at(five_rounds, 3, "missing")


def test_deleted_block_header_leaves_orphan_rows(five_rounds: Path) -> None:
    tamper(five_rounds, ("DELETE FROM blocks WHERE height = 3", ()))
    _verify_fails_at(five_rounds, 3, "without their block")


def test_reordered_blocks_fail_at_the_first_swapped(five_rounds: Path) -> None:
    tables = ("blocks", "contributions", "rewards", "reputation_snapshots")
    swap = [
        (f"UPDATE {table} SET height = ? WHERE height = ?", (new, old))
        for old, new in ((2, -1), (3, 2), (-1, 3))
        for table in tables
    ]
    tamper(five_rounds, *swap)
    with Ledger.open(five_rounds) as ledger:
        assert ledger.db.execute(
            "SELECT server_round FROM blocks WHERE height = 2"
        ).fetchone() == (3,)
    _verify_fails_at(five_rounds, 2, "previous hash")


def test_swapped_signer_without_its_key_fails_at_that_block(five_rounds: Path) -> None:
    other = KeySigner(9).public_key.hex()
    tamper(five_rounds, ("UPDATE blocks SET signer = ? WHERE height = 4", (other,)))
    _verify_fails_at(five_rounds, 4, "signature")


def _resign(path: Path, height: int, signer: KeySigner) -> None:
    with Ledger.open(path) as ledger:
        forged = ledger.block(height).signed_by(signer)
    tamper(
        path,
        (
            "UPDATE blocks SET signer = ?, signature = ?, block_hash = ? "
            "WHERE height = ?",
            (forged.signer, forged.signature, forged.block_hash, height),
        ),
    )


def test_swapped_signer_outside_genesis_list_fails_at_that_block(
    db_path: Path,
) -> None:
    allowed = [AGGREGATOR.public_key]
    with aggregator_ledger(db_path, allowed_signers=allowed) as ledger:
        record_rounds(ledger, range(1, 6))
    _resign(db_path, 4, KeySigner(9))  # a valid signature, by the wrong key
    _verify_fails_at(db_path, 4, "not allowed")


def test_swapped_signer_without_genesis_list_breaks_the_next_link(
    five_rounds: Path,
) -> None:
    # With any key allowed, a re-signed block is self-consistent; the hash link
    # from the next block still exposes it. (Allowed signers make it block 4.)
    _resign(five_rounds, 4, KeySigner(9))
    _verify_fails_at(five_rounds, 5, "previous hash")


def test_foreign_federation_block_in_database(five_rounds: Path) -> None:
    tamper(five_rounds, ("UPDATE blocks SET federation = 'evil' WHERE height = 2", ()))
    _verify_fails_at(five_rounds, 2, "federation 'evil'")


# -- replication -----------------------------------------------------------------------


def test_replicas_hold_the_same_chain_over_five_rounds(tmp_path: Path) -> None:
    aggregator = aggregator_ledger(tmp_path / "aggregator.db")
    replicas = [
        Ledger.open(tmp_path / f"replica{i}.db", federation=FEDERATION, create=True)
        for i in range(3)
    ]
    for server_round in range(1, 6):
        record_rounds(aggregator, [server_round])
        for replica in replicas:
            # A replica asks for whatever it lacks (the genesis, the first time).
            have = -1 if replica.height is None else replica.height
            for block_bytes in aggregator.blocks_bytes_after(have):
                replica.append_block(block_bytes)
    expected = aggregator.blocks_bytes_after(-1)
    assert len(expected) == 6
    for replica in replicas:
        assert replica.blocks_bytes_after(-1) == expected
        assert replica.verify() == 6
        assert replica.all_reputations() == aggregator.all_reputations()
    for ledger in (aggregator, *replicas):
        ledger.close()


@pytest.fixture
def replica_at_two(tmp_path: Path, five_rounds: Path) -> tuple[Ledger, list[bytes]]:
    """A replica holding heights 0..2 of ``five_rounds``, and all six blocks."""
    with Ledger.open(five_rounds) as source:
        blocks = source.blocks_bytes_after(-1)
    replica = Ledger.open(tmp_path / "replica.db", federation=FEDERATION, create=True)
    for block_bytes in blocks[:3]:
        replica.append_block(block_bytes)
    return replica, blocks


def _refused(
    replica: Ledger, block_bytes: bytes, error: type[Exception], reason: str
) -> None:
    before = database_dump(replica.path)
    with pytest.raises(error, match=reason):
        replica.append_block(block_bytes)
    assert database_dump(replica.path) == before
    assert replica.height == 2


def test_replica_refuses_forged_block(
    replica_at_two: tuple[Ledger, list[bytes]],
) -> None:
    replica, blocks = replica_at_two
    decoded = json.loads(blocks[3])
    decoded["rewards"][0]["tokens"] = 1e6
    _refused(replica, canonical_ledger_json(decoded), ChainError, "signature")
    replica.close()


def test_replica_refuses_foreign_federation_block(
    tmp_path: Path, replica_at_two: tuple[Ledger, list[bytes]]
) -> None:
    replica, _ = replica_at_two
    foreign = Ledger.open(
        tmp_path / "foreign.db", federation="other", signer=AGGREGATOR, create=True
    )
    record_rounds(foreign, range(1, 4))
    _refused(replica, foreign.block(3).to_bytes(), ChainError, "federation 'other'")
    foreign.close()
    replica.close()


def test_replica_refuses_out_of_order_and_replayed_blocks(
    replica_at_two: tuple[Ledger, list[bytes]],
) -> None:
    replica, blocks = replica_at_two
    _refused(replica, blocks[4], ChainError, "block 3: missing")
    _refused(replica, blocks[2], ChainError, "out of order")
    _refused(replica, b"not a block", BlockFormatError, "not JSON")
    replica.append_block(blocks[3])  # the right one is still welcome
    assert replica.height == 3
    replica.close()


def test_successor_aggregator_continues_the_chain(tmp_path: Path) -> None:
    first, successor, outsider = AGGREGATOR, KeySigner(2), KeySigner(3)
    allowed = [first.public_key, successor.public_key]
    original = aggregator_ledger(tmp_path / "a.db", allowed_signers=allowed)
    record_rounds(original, [1, 2])
    # The successor's own replica becomes the aggregator's ledger: same file, now
    # opened with its key.
    with Ledger.open(tmp_path / "b.db", federation=FEDERATION, create=True) as replica:
        for block_bytes in original.blocks_bytes_after(-1):
            replica.append_block(block_bytes)
    original.close()
    with aggregator_ledger(tmp_path / "b.db", signer=successor) as continued:
        record_rounds(continued, [3, 4, 5])
        assert continued.get_reputation("peer-000") is not None
        chain = continued.blocks_bytes_after(-1)
        signers = [block.signer for block in continued.blocks()]
    assert signers == [first.public_key.hex()] * 3 + [successor.public_key.hex()] * 3
    with Ledger.open(tmp_path / "c.db", federation=FEDERATION, create=True) as third:
        for block_bytes in chain:
            third.append_block(block_bytes)
        assert third.verify() == 6
    # A key the genesis does not list cannot take over, and writes nothing.
    before = database_dump(tmp_path / "b.db")
    with (
        aggregator_ledger(tmp_path / "b.db", signer=outsider) as usurper,
        pytest.raises(ChainError, match="not allowed"),
    ):
        record_rounds(usurper, [6])
    assert database_dump(tmp_path / "b.db") == before


def test_parsed_block_equals_stored_block(five_rounds: Path) -> None:
    with Ledger.open(five_rounds) as ledger:
        for block in ledger.blocks():
            assert Block.from_bytes(block.to_bytes()) == block


# -- bad files ----------------------------------------------------------------------


def test_missing_file_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    with pytest.raises(LedgerNotFoundError, match="no ledger"):
        Ledger.open(path)
    assert not path.exists()
    with pytest.raises(LedgerError, match="federation id"):
        Ledger.open(path, create=True)
    assert not path.exists()


def test_corrupt_file_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"definitely not sqlite " * 200)
    for create in (False, True):
        with pytest.raises(ForeignDatabaseError, match="not a readable"):
            Ledger.open(path, federation=FEDERATION, create=create)
    assert path.read_bytes() == b"definitely not sqlite " * 200


def test_foreign_schema_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    conn.execute("INSERT INTO meta VALUES ('schema', 'someone-else')")
    conn.execute("CREATE TABLE blocks (x)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    for create in (False, True):
        with pytest.raises(ForeignDatabaseError, match="foreign schema"):
            Ledger.open(path, federation=FEDERATION, create=create)
    assert path.read_bytes() == before


def test_other_federation_ledger_is_refused(five_rounds: Path) -> None:
    with pytest.raises(FederationMismatchError, match=FEDERATION):
        Ledger.open(five_rounds, federation="another", create=True)


def test_a_version_1_ledger_is_upgraded_in_place_and_keeps_its_chain(
    five_rounds: Path,
) -> None:
    # A ledger written before co-signatures existed: no cosignatures table,
    # schema_version 1.
    conn = sqlite3.connect(five_rounds)
    for action in ("update", "delete", "replace"):
        conn.execute(f"DROP TRIGGER cosignatures_no_{action}")
    conn.execute("DROP TABLE cosignatures")
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    before = [row for row in database_dump(five_rounds) if "cosignatures" not in row]

    with Ledger.open(five_rounds) as ledger:
        assert ledger.verify() == 6  # genesis + 5 rounds
        assert ledger.cosignatures(3) == []
    after = database_dump(five_rounds)
    assert any("CREATE TABLE" in row and "cosignatures" in row for row in after)
    assert [row for row in after if "cosignatures" not in row] == [
        row.replace("'schema_version','1'", "'schema_version','3'") for row in before
    ]


def test_a_version_2_ledger_gains_the_candidates_column_and_keeps_its_chain(
    five_rounds: Path,
) -> None:
    with Ledger.open(five_rounds) as ledger:
        hashes = [block.block_hash for block in ledger.blocks()]
    # A ledger written before committees were drawn from live peers: no
    # blocks.candidates column, schema_version 2.
    conn = sqlite3.connect(five_rounds)
    conn.execute("ALTER TABLE blocks DROP COLUMN candidates")
    conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()

    with Ledger.open(five_rounds) as ledger:
        assert ledger.verify() == 6
        assert [block.block_hash for block in ledger.blocks()] == hashes
        assert "candidates" in ledger.db.table("blocks").columns_dict
        assert read_meta(ledger.db, five_rounds)["schema_version"] == SCHEMA_VERSION
