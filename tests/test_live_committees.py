"""Committees drawn from the live eligible peers a block records (issue 15).

The aggregator records the candidate set in the block; every replica and
``flp2p ledger verify`` redraws the committee from it by the public seed, and
refuses a set that leaves out an eligible co-signer of the previous block. With no
other live eligible peer, the round is final on the aggregator's signature alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_ledger import FEDERATION, KeySigner, make_report, make_reputations

from flp2p.audit import AuditStatement, draw_committee, inputs_sha256, sign_statement
from flp2p.dht.codec import RecordError
from flp2p.dht.kinds import MAX_LEASE_CANDIDATES, Lease
from flp2p.ledger import Block, BlockFormatError, ChainError, Ledger, LedgerError
from flp2p.ledger.reports import finality_report
from flp2p.ledger_broadcast import sync_replica
from flp2p.peer.revocation_watch import final_round_committee, round_committee
from flp2p.signatures import canonical_ledger_json

AGGREGATOR = KeySigner(1)
SUCCESSOR = KeySigner(2)
AUDITORS = [KeySigner(10 + i) for i in range(4)]
ELIGIBLE = [AGGREGATOR.node_id, SUCCESSOR.node_id] + [a.node_id for a in AUDITORS]
SIGNERS = {s.node_id: s for s in (AGGREGATOR, SUCCESSOR, *AUDITORS)}
SIGNERS_OF = {s.public_key.hex(): s.node_id for s in SIGNERS.values()}


def cosign(auditor: KeySigner, block: Block) -> AuditStatement:
    inputs = inputs_sha256(
        (str(r["identity"]), str(r["update_sha256"])) for r in block.contributions
    )
    return sign_statement(
        auditor,
        block.federation,
        block.server_round,
        inputs,
        str(block.aggregate_sha256),
        block.body_sha256,
    )


def open_chain(path: Path, signer: KeySigner, eligible: list[str]) -> Ledger:
    return Ledger.open(
        path,
        federation=FEDERATION,
        signer=signer,
        allowed_signers=eligible,
        create=True,
    )


def propose(ledger: Ledger, server_round: int, candidates: list[str]) -> Block:
    report = make_report(server_round)
    return ledger.propose_round(report, make_reputations(report), candidates)


def finalise(ledger: Ledger, block: Block, k: int = 3) -> list[str]:
    """Append ``block`` with every committee member's co-signature; return them."""
    committee = ledger.next_committee(SIGNERS_OF[block.signer], k, block.candidates)
    assert committee is not None
    ledger.append_final_block(
        block.to_bytes(), [cosign(SIGNERS[m], block) for m in committee.members], k
    )
    return list(committee.members)


def test_the_committee_is_drawn_from_the_recorded_live_peers_only(
    tmp_path: Path,
) -> None:
    # Two of the four auditors are down: drawn from all eligible peers, a
    # committee of 3 would hold at least one of them and could never be final.
    live = sorted(a.node_id for a in AUDITORS[:2])
    with open_chain(tmp_path / "l.db", AGGREGATOR, ELIGIBLE) as ledger:
        ledger.start_chain()
        block = propose(ledger, 1, live)
        assert block.candidates == tuple(live)
        members = finalise(ledger, block)
        assert sorted(members) == live
        (status,) = finality_report(ledger, 3)
    assert status.is_final
    assert status.committee is not None and sorted(status.committee.members) == live
    seed_draw = draw_committee(live, AGGREGATOR.node_id, status.committee.seed, {}, 3)
    assert status.committee == seed_draw


def test_no_live_peer_finalises_on_the_aggregators_signature_alone(
    tmp_path: Path,
) -> None:
    # Two eligible peers, the other one dead: the round does not stall.
    eligible = [AGGREGATOR.node_id, SUCCESSOR.node_id]
    with open_chain(tmp_path / "l.db", AGGREGATOR, eligible) as ledger:
        ledger.start_chain()
        block = propose(ledger, 1, [])
        assert ledger.next_committee(AGGREGATOR.node_id, 3, ()) is not None
        ledger.append_final_block(block.to_bytes(), [], 3)
        assert ledger.height == 1
        (status,) = finality_report(ledger, 3)
    assert status.committee is None and "no live committee" in status.summary()
    replica = tmp_path / "replica.db"
    with Ledger.open(tmp_path / "l.db") as ledger:
        chain = [b.to_bytes() for b in ledger.blocks()]
    assert sync_replica(replica, FEDERATION, chain, committee_size=3) == 1


def test_candidates_that_leave_out_a_previous_cosigner_are_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.db"
    with open_chain(path, AGGREGATOR, ELIGIBLE) as ledger:
        ledger.start_chain()
        cosigners = finalise(ledger, propose(ledger, 1, ELIGIBLE[1:]))
    assert len(cosigners) == 3
    # The successor takes over and claims only one of them is live, to draw its
    # committee among the rest.
    with Ledger.open(path, signer=SUCCESSOR) as ledger:
        required = ledger.required_candidates(SUCCESSOR.node_id)
        assert required == tuple(sorted(set(cosigners) - {SUCCESSOR.node_id}))
        friends = sorted(set(ELIGIBLE[2:]) - set(required[1:]))
        cheat = propose(ledger, 2, friends)
        with pytest.raises(ChainError, match=r"leave out .*co-signed the previous"):
            ledger.append_final_block(cheat.to_bytes(), [], 3)
        with pytest.raises(ChainError, match="leave out"):
            ledger.append_block(cheat.to_bytes())
        assert ledger.height == 1
        honest = propose(ledger, 2, list(required))
        finalise(ledger, honest)
        assert ledger.height == 2


def test_ledger_verify_reports_a_cherry_picked_committee_as_not_final(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "l.db"
    with open_chain(path, AGGREGATOR, ELIGIBLE) as ledger:
        ledger.start_chain()
        cosigners = finalise(ledger, propose(ledger, 1, ELIGIBLE[1:]))
        # A ledger written by code that skips the candidate check, as an attacker
        # with the file can: round 2 leaves out a co-signer of round 1.
        monkeypatch.setattr("flp2p.ledger.store.candidate_refusal", lambda *_: "")
        cheat = propose(ledger, 2, sorted(set(ELIGIBLE[1:]) - {cosigners[0]}))
        finalise(ledger, cheat)
        monkeypatch.undo()
        statuses = finality_report(ledger, 3)
    assert statuses[0].is_final
    assert not statuses[1].is_final
    assert "leave out" in statuses[1].summary()


def test_candidates_must_be_eligible_and_exclude_the_aggregator(
    tmp_path: Path,
) -> None:
    stranger = KeySigner(99).node_id
    with open_chain(tmp_path / "l.db", AGGREGATOR, ELIGIBLE) as ledger:
        ledger.start_chain()
        for candidates, reason in (
            ([stranger], "not aggregator-eligible"),
            ([AGGREGATOR.node_id], "its own committee candidates"),
        ):
            block = propose(ledger, 1, candidates)
            with pytest.raises(ChainError, match=reason):
                ledger.append_block(block.to_bytes())
        assert ledger.height == 0


def test_a_block_without_candidates_keeps_its_bytes_and_one_with_them_round_trips(
    tmp_path: Path,
) -> None:
    with open_chain(tmp_path / "l.db", AGGREGATOR, ELIGIBLE) as ledger:
        ledger.start_chain()
        report = make_report(1)
        plain = ledger.propose_round(report, make_reputations(report))
        audited = propose(ledger, 1, ELIGIBLE[2:])
    assert "candidates" not in json.loads(plain.to_bytes())
    assert Block.from_bytes(audited.to_bytes()) == audited
    assert audited.signature_valid()
    assert json.loads(audited.to_bytes())["candidates"] == sorted(ELIGIBLE[2:])
    body = json.loads(audited.to_bytes())
    for bad, reason in (
        (sorted(ELIGIBLE[2:], reverse=True), "sorted"),
        ([1, 2], "list strings"),
        ("x", "list strings"),
    ):
        with pytest.raises(BlockFormatError, match=reason):
            Block.from_bytes(canonical_ledger_json({**body, "candidates": bad}))


def test_a_lease_carries_sorted_candidates_and_refuses_bad_ones() -> None:
    fields = {
        "federation_id": "a" * 64,
        "holder": AGGREGATOR.node_id,
        "superlink_address": "127.0.0.1:9092",
        "tls_fingerprint": "b" * 64,
        "epoch": 1,
        "last_round": 2,
        "model_sha256": "c" * 64,
    }
    plain = Lease(**fields)
    assert "candidates" not in plain.to_payload()
    assert Lease.from_payload(plain.to_payload()) == plain
    live = tuple(sorted(a.node_id for a in AUDITORS))
    audited = Lease(**fields, candidates=live)
    assert Lease.from_payload(audited.to_payload()) == audited
    for bad, reason in (
        (tuple(reversed(live)), "sorted"),
        ((AGGREGATOR.node_id,), "its own committee candidate"),
        (("zz",), "candidate node id"),
        (tuple(f"{i:064x}" for i in range(MAX_LEASE_CANDIDATES + 1)), "at most"),
    ):
        with pytest.raises(RecordError, match=reason):
            Lease(**fields, candidates=bad)
    with pytest.raises(RecordError, match="list of strings"):
        Lease.from_payload({**audited.to_payload(), "candidates": "x"})


def test_a_replica_refuses_a_no_live_committee_block_after_a_cosigned_one(
    tmp_path: Path,
) -> None:
    # Claiming "no live committee" to skip the audit is refused once the
    # previous block had co-signers: they must be candidates.
    path = tmp_path / "l.db"
    with open_chain(path, AGGREGATOR, ELIGIBLE) as ledger:
        ledger.start_chain()
        finalise(ledger, propose(ledger, 1, ELIGIBLE[1:]))
        skip = propose(ledger, 2, [])
        chain = [b.to_bytes() for b in ledger.blocks()]
        statements = ledger.cosignatures(1)
    replica = tmp_path / "replica.db"
    assert sync_replica(replica, FEDERATION, chain, None, statements, 3) == 1
    with pytest.raises(LedgerError, match="leave out"):
        sync_replica(replica, FEDERATION, [skip.to_bytes()], None, (), 3)


def _lease(last_round: int, candidates: tuple[str, ...] | None) -> Lease:
    return Lease(
        federation_id=FEDERATION_ID,
        holder=AGGREGATOR.node_id,
        superlink_address="127.0.0.1:9092",
        tls_fingerprint="b" * 64,
        epoch=1,
        last_round=last_round,
        model_sha256="c" * 64,
        candidates=candidates,
    )


FEDERATION_ID = "f" * 64


def test_watchers_draw_the_round_in_progress_from_the_leases_candidates(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.db"
    with Ledger.open(
        path,
        federation=FEDERATION_ID,
        signer=AGGREGATOR,
        allowed_signers=ELIGIBLE,
        create=True,
    ) as ledger:
        ledger.record_round(make_report(1), make_reputations(make_report(1)))
    live = tuple(sorted(a.node_id for a in AUDITORS[:2]))
    committee = round_committee(path, FEDERATION_ID, _lease(1, live), 3)
    assert committee is not None and sorted(committee.members) == list(live)
    everyone = round_committee(path, FEDERATION_ID, _lease(1, None), 3)
    assert everyone is not None and len(everyone.members) == 3


def test_the_revocation_watch_judges_only_the_leases_last_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "l.db"
    with Ledger.open(
        path,
        federation=FEDERATION_ID,
        signer=AGGREGATOR,
        allowed_signers=ELIGIBLE,
        create=True,
    ) as ledger:
        for server_round in range(1, 21):
            report = make_report(server_round)
            ledger.record_round(report, make_reputations(report))
        whole = finality_report(ledger, 3)
    starts: list[int] = []

    def counting(chain: Ledger, k: int, start_height: int = 0) -> object:
        starts.append(start_height)
        return finality_report(chain, k, start_height)

    monkeypatch.setattr("flp2p.peer.revocation_watch.finality_report", counting)
    for last_round in (20, 7):
        committee = final_round_committee(
            path, FEDERATION_ID, _lease(last_round, None), 3
        )
        assert committee == whole[last_round - 1].committee
    assert starts == [20, 7]  # one block each, not the chain from its genesis
    assert final_round_committee(path, FEDERATION_ID, _lease(21, None), 3) is None
