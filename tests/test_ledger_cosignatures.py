"""Co-signatures in the ledger: stored append-only, counted by ``ledger verify``."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from helpers_ledger import FEDERATION, KeySigner, make_report, make_reputations, tamper

from flp2p.audit import AuditStatement, draw_committee, inputs_sha256, sign_statement
from flp2p.cli import main
from flp2p.ledger import Block, Ledger, LedgerError
from flp2p.ledger.reports import finality_report
from strategies.records import ReputationState, Tier

AGGREGATOR = KeySigner(1)
AUDITORS = [KeySigner(10 + i) for i in range(5)]
ELIGIBLE = [AGGREGATOR.node_id] + [a.node_id for a in AUDITORS]
BY_ID = {a.node_id: a for a in AUDITORS}
GOLD = AUDITORS[2]


def _record(ledger: Ledger, server_round: int) -> None:
    report = make_report(server_round)
    # One auditor earns Gold in round 1: later committees weigh it higher.
    standing = [ReputationState(GOLD.node_id, 0.8, Tier.GOLD, 1, server_round)]
    ledger.record_round(report, make_reputations(report) + standing)


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    """Genesis naming six eligible peers, rounds 1–3 signed by the aggregator."""
    path = tmp_path / "ledger.db"
    with Ledger.open(
        path,
        federation=FEDERATION,
        signer=AGGREGATOR,
        allowed_signers=ELIGIBLE,
        create=True,
    ) as ledger:
        for server_round in (1, 2, 3):
            _record(ledger, server_round)
    return path


def cosign(auditor: KeySigner, block: Block, **changes: str) -> AuditStatement:
    inputs = inputs_sha256(
        (str(r["identity"]), str(r["update_sha256"])) for r in block.contributions
    )
    fields = {
        "inputs_sha256": inputs,
        "model_sha256": str(block.aggregate_sha256),
        "body_sha256": block.body_sha256,
        **changes,
    }
    return sign_statement(
        auditor,
        block.federation,
        block.server_round,
        fields["inputs_sha256"],
        fields["model_sha256"],
        fields["body_sha256"],
    )


def committee_of(ledger: Ledger, height: int) -> list[KeySigner]:
    """The committee drawn independently of the report: seed, eligible, tiers."""
    tiers = {GOLD.node_id: Tier.GOLD} if height > 1 else {}
    committee = draw_committee(
        ELIGIBLE, AGGREGATOR.node_id, ledger.block(height - 1).block_hash, tiers, 3
    )
    return [BY_ID[m] for m in committee.members]


def test_cosignatures_are_stored_once_and_read_back(ledger_path: Path) -> None:
    with Ledger.open(ledger_path) as ledger:
        block = ledger.block(1)
        statements = [cosign(a, block) for a in committee_of(ledger, 1)]
        assert ledger.add_cosignatures(1, statements) == 3
        assert ledger.add_cosignatures(1, statements[:1]) == 0  # same bytes: skipped
        held = ledger.cosignatures(1)
        assert sorted(held, key=lambda s: s.auditor_public_key) == sorted(
            statements, key=lambda s: s.auditor_public_key
        )
        assert ledger.cosignatures(2) == []
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            ledger.db.execute("DELETE FROM cosignatures")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            ledger.db.execute("UPDATE cosignatures SET signature = ''")


def test_a_cosignature_of_anything_else_is_refused_and_nothing_written(
    ledger_path: Path,
) -> None:
    with Ledger.open(ledger_path) as ledger:
        block = ledger.block(2)
        auditor = AUDITORS[0]
        good = cosign(auditor, block)
        bad = {
            "not of block 2": cosign(
                auditor, block, body_sha256=ledger.block(1).body_sha256
            ),
            "is not of block": cosign(auditor, block, model_sha256="e" * 64),
            "not of block": cosign(auditor, block, inputs_sha256="e" * 64),
            "does not verify": AuditStatement(
                good.federation,
                good.server_round,
                good.inputs_sha256,
                good.model_sha256,
                good.body_sha256,
                good.auditor_public_key,
                AUDITORS[1].sign(good.signing_bytes()),
            ),
        }
        for reason, statement in bad.items():
            with pytest.raises(LedgerError, match=reason):
                ledger.add_cosignatures(2, [cosign(AUDITORS[3], block), statement])
        assert ledger.cosignatures(2) == []
        with pytest.raises(LedgerError, match="no block at height 9"):
            ledger.add_cosignatures(9, [good])
        ledger.add_cosignatures(2, [good])
        # Every field is pinned by the block and Ed25519 is deterministic, so an
        # auditor's second co-signature of a block is a byte-for-byte repeat.
        other = sign_statement(
            auditor,
            good.federation,
            good.server_round,
            good.inputs_sha256,
            good.model_sha256,
            good.body_sha256,
        )
        assert other == good
        assert ledger.add_cosignatures(2, [other]) == 0


def test_report_counts_committee_cosignatures_per_block(ledger_path: Path) -> None:
    with Ledger.open(ledger_path) as ledger:
        first, second = committee_of(ledger, 1), committee_of(ledger, 2)
        outsider = next(a for a in AUDITORS if a not in committee_of(ledger, 3))
        ledger.add_cosignatures(1, [cosign(a, ledger.block(1)) for a in first[:2]])
        ledger.add_cosignatures(2, [cosign(second[0], ledger.block(2))])
        ledger.add_cosignatures(3, [cosign(outsider, ledger.block(3))])
        statuses = finality_report(ledger, committee_size=3)
    assert [s.height for s in statuses] == [1, 2, 3]
    one, two, three = statuses
    assert one.committee is not None
    assert list(one.committee.members) == [a.node_id for a in first]
    assert two.committee is not None
    assert list(two.committee.members) == [a.node_id for a in second]
    assert (one.is_final, two.is_final, three.is_final) == (True, False, False)
    assert one.summary() == (
        "block 1 (round 1): 2/2 valid co-signatures from a committee of 3: final"
    )
    assert "1/2 valid" in two.summary() and "not final" in two.summary()
    assert three.finality is not None and three.finality.valid == 0
    assert "not a member of the round's committee" in three.finality.refused[0]


def test_tier_weighting_reaches_the_reports_committees(ledger_path: Path) -> None:
    """Committees after round 1 are drawn with the Gold tier the chain recorded."""
    with Ledger.open(ledger_path) as ledger:
        statuses = finality_report(ledger)
        for status in statuses:
            expected = [a.node_id for a in committee_of(ledger, status.height)]
            assert status.committee is not None
            assert list(status.committee.members) == expected


def test_small_federations_and_simulations(tmp_path: Path) -> None:
    alone = tmp_path / "alone.db"
    with Ledger.open(
        alone,
        federation=FEDERATION,
        signer=AGGREGATOR,
        allowed_signers=[AGGREGATOR.node_id],
        create=True,
    ) as ledger:
        _record(ledger, 1)
        (status,) = finality_report(ledger)
    assert status.committee is None
    assert "only 0 eligible peer(s)" in status.summary()
    simulation = tmp_path / "simulation.db"
    with Ledger.open(
        simulation, federation=FEDERATION, signer=AGGREGATOR, create=True
    ) as ledger:
        _record(ledger, 1)
        (status,) = finality_report(ledger)
    assert status.summary() == (
        "block 1 (round 1): no committee (the genesis allows any signer)"
    )
    assert not status.is_final


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_verify_says_how_many_cosignatures_each_block_has(
    ledger_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Ledger.open(ledger_path) as ledger:
        first = committee_of(ledger, 1)
        ledger.add_cosignatures(1, [cosign(a, ledger.block(1)) for a in first])
    code, out, err = run(capsys, "ledger", "verify", "--db", str(ledger_path))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("ok: 4 blocks verified")
    assert lines[1] == (
        "block 1 (round 1): 3/2 valid co-signatures from a committee of 3: final"
    )
    assert (
        lines[2].startswith("block 2 (round 2): 0/2 valid") and "not final" in lines[2]
    )
    assert lines[-1] == "final: 1 of 3 audited round blocks"
    _, small, _ = run(
        capsys, "ledger", "verify", "--committee-size", "1", "--db", str(ledger_path)
    )
    # A committee of one is drawn from the same seed: its first-drawn member.
    assert "from a committee of 1: final" in small.splitlines()[1]


def test_cli_verify_lists_a_tampered_cosignature(
    ledger_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Ledger.open(ledger_path) as ledger:
        first = committee_of(ledger, 1)
        ledger.add_cosignatures(1, [cosign(a, ledger.block(1)) for a in first[:2]])
    tamper(
        ledger_path,
        ("UPDATE cosignatures SET inputs_sha256 = ? WHERE height = 1", ["f" * 64]),
    )
    code, out, _ = run(capsys, "ledger", "verify", "--db", str(ledger_path))
    assert code == 0  # the chain is intact; the block is just not final
    assert "block 1 (round 1): 0/2 valid" in out
    assert out.count("not counted:") == 2
    assert "signature does not verify" in out


def test_cli_verify_of_a_simulation_ledger_says_no_committee(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "simulation.db"
    with Ledger.open(
        path, federation=FEDERATION, signer=AGGREGATOR, create=True
    ) as ledger:
        _record(ledger, 1)
        _record(ledger, 2)
    code, out, _ = run(capsys, "ledger", "verify", "--db", str(path))
    assert code == 0
    assert out.count("no committee (the genesis allows any signer)") == 2
    assert out.splitlines()[-1] == "final: 0 of 0 audited round blocks"


# -- audited rounds: propose, co-sign, append only when final ------------------------


def _replica(tmp_path: Path, source: Path) -> Ledger:
    """A participant's copy holding the source's genesis only."""
    replica = Ledger.open(tmp_path / "replica.db", federation=FEDERATION, create=True)
    with Ledger.open(source) as ledger:
        replica.append_block(ledger.block(0).to_bytes())
    return replica


def test_a_proposed_block_is_appended_only_once_final(ledger_path: Path) -> None:
    with Ledger.open(ledger_path, signer=AGGREGATOR) as ledger:
        committee = ledger.next_committee(AGGREGATOR.node_id)
        assert committee is not None
        report = make_report(4)
        block = ledger.propose_round(report, make_reputations(report))
        assert ledger.height == 3  # proposing writes nothing
        members = [BY_ID[m] for m in committee.members]
        outsider = next(a for a in AUDITORS if a not in members)
        weak = [cosign(members[0], block), cosign(outsider, block)]
        with pytest.raises(LedgerError, match=r"not final: 1/2 .*not a member"):
            ledger.append_final_block(block.to_bytes(), weak)
        assert ledger.height == 3 and ledger.cosignatures(4) == []
        wrong_then_right = [
            cosign(members[1], block, body_sha256="e" * 64),
            *weak,
            cosign(members[1], block),
        ]
        appended = ledger.append_final_block(block.to_bytes(), wrong_then_right)
        assert appended == block and ledger.height == 4
        stored = {s.auditor for s in ledger.cosignatures(4)}
        assert stored == {members[0].node_id, members[1].node_id}
        assert all(s.signature_is_valid() for s in ledger.cosignatures(4))
        (status,) = [s for s in finality_report(ledger) if s.height == 4]
        assert status.is_final
        assert status.committee == committee  # the report redraws the same one


def test_next_committee_matches_the_reports_committee_for_every_block(
    ledger_path: Path,
) -> None:
    with Ledger.open(ledger_path, signer=AGGREGATOR) as ledger:
        drawn = []
        for server_round in (4, 5):
            drawn.append(ledger.next_committee(AGGREGATOR.node_id))
            _record(ledger, server_round)
        reported = [s.committee for s in finality_report(ledger)][-2:]
    assert drawn == reported


def test_a_simulation_block_has_no_committee_to_finalise_it(tmp_path: Path) -> None:
    path = tmp_path / "simulation.db"
    with Ledger.open(
        path, federation=FEDERATION, signer=AGGREGATOR, create=True
    ) as ledger:
        report = make_report(1)
        block = ledger.propose_round(report, make_reputations(report))
        assert ledger.next_committee(AGGREGATOR.node_id) is None
        with pytest.raises(LedgerError, match="no committee"):
            ledger.append_final_block(block.to_bytes(), [])
        assert ledger.append_block(block.to_bytes()) == block


def test_a_replica_appends_a_final_block_with_its_cosignatures(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source.db"
    with Ledger.open(
        source,
        federation=FEDERATION,
        signer=AGGREGATOR,
        allowed_signers=ELIGIBLE,
        create=True,
    ) as ledger:
        report = make_report(1)
        block = ledger.propose_round(report, make_reputations(report))
        committee = ledger.next_committee(AGGREGATOR.node_id)
    assert committee is not None
    statements = [cosign(BY_ID[m], block) for m in committee.members]
    with _replica(tmp_path, source) as replica:
        with pytest.raises(LedgerError, match="not final"):
            replica.append_final_block(block.to_bytes(), statements[:1])
        replica.append_final_block(block.to_bytes(), statements)
        assert replica.height == 1 and len(replica.cosignatures(1)) == 3


def test_cli_refuses_a_negative_committee_size(
    ledger_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["ledger", "verify", "--committee-size", "-1", "--db", str(ledger_path)])
    assert exit_.value.code == 2
    assert "must be 0 or more" in capsys.readouterr().err
