"""Revoking a lying aggregator's lease, and keeping it out of the next election."""

from __future__ import annotations

import hashlib
from dataclasses import replace

from helpers_dht import genesis_for, signed
from test_audit_records import ROUND, accusation_for, complaint_for

from flp2p.audit import Committee, draw_committee
from flp2p.audit.revocation import (
    Revocation,
    revocation,
    revoked_aggregators,
    without_revoked,
)
from flp2p.dht import SignedRecord
from flp2p.identity import Identity

SEED = hashlib.sha256(b"previous block").hexdigest()


class Federation:
    """Six eligible peers; the first aggregates, a committee of 3 audits."""

    def __init__(self) -> None:
        self.founder = Identity.generate()
        self.peers = [Identity.generate() for _ in range(6)]
        self.aggregator = self.peers[0]
        self.genesis = genesis_for(self.founder, *self.peers)
        self.committee = draw_committee(
            [p.node_id for p in self.peers], self.aggregator.node_id, SEED, k=3
        )
        self.members = [p for p in self.peers if p.node_id in self.committee]
        self.outsiders = [p for p in self.peers[1:] if p.node_id not in self.committee]

    def accuse(self, auditor: Identity, **changes: object) -> SignedRecord:
        return signed(
            auditor,
            accusation_for(self.genesis, auditor, self.aggregator, **changes),
        )

    def judge(
        self, records: list[SignedRecord], committee: Committee | None = None
    ) -> Revocation:
        return revocation(
            self.genesis.federation_id, ROUND, committee or self.committee, records
        )


def test_two_of_three_committee_accusations_revoke_the_lease() -> None:
    fed = Federation()
    assert len(fed.members) == 3
    one = fed.judge([fed.accuse(fed.members[0])])
    assert not one.revoked and one.threshold == 2
    assert "not revoked: 1/2" in one.reason
    two = fed.judge([fed.accuse(m) for m in fed.members[:2]])
    assert two.revoked and "revoked: 2/2" in two.reason
    assert two.accusers == tuple(sorted(m.node_id for m in fed.members[:2]))
    assert two.aggregator == fed.aggregator.node_id


def test_one_lying_auditor_cannot_revoke_an_honest_aggregator() -> None:
    fed = Federation()
    liar = fed.members[0]
    records = [fed.accuse(liar), fed.accuse(liar, claimed_sha256="e" * 64)]
    verdict = fed.judge(records)
    assert not verdict.revoked
    assert verdict.accusers == (liar.node_id,)
    assert any("counted once already" in reason for reason in verdict.ignored)


def test_only_committee_accusations_of_this_round_and_holder_count() -> None:
    fed = Federation()
    member = fed.members[0]
    other_fed = genesis_for(fed.founder, *fed.peers)
    other_fed = replace(other_fed, parameters={"rounds": 99})
    forged = fed.accuse(fed.members[1])
    forged = replace(forged, payload={**forged.payload, "expected_sha256": "1" * 64})
    records = [
        fed.accuse(fed.outsiders[0]),  # valid, but not on the committee
        signed(
            member,
            accusation_for(fed.genesis, member, fed.aggregator, server_round=ROUND + 1),
        ),
        signed(member, accusation_for(other_fed, member, fed.aggregator)),
        signed(member, accusation_for(fed.genesis, member, fed.outsiders[0])),
        forged,  # Mallory edits an accusation: signature no longer verifies
        signed(member, complaint_for(fed.genesis, member)),  # not an accusation
    ]
    verdict = fed.judge(records)
    assert verdict.accusers == () and not verdict.revoked
    reasons = " | ".join(verdict.ignored)
    for expected in (
        "not a member of the round's committee",
        f"round {ROUND + 1}",
        "another federation",
        "not the holder",
        "signature does not verify",
        "is not an accusation",
    ):
        assert expected in reasons
    assert len(verdict.ignored) == len(records)


def test_an_accusation_signed_by_someone_else_does_not_count() -> None:
    fed = Federation()
    mallory = Identity.generate()
    records = [
        signed(mallory, accusation_for(fed.genesis, m, fed.aggregator))
        for m in fed.members
    ]
    verdict = fed.judge(records)
    assert not verdict.revoked
    assert all("not signed by its auditor" in r for r in verdict.ignored)


def test_no_committee_revokes_nobody() -> None:
    fed = Federation()
    empty = draw_committee([fed.aggregator.node_id], fed.aggregator.node_id, SEED)
    verdict = fed.judge([fed.accuse(m) for m in fed.members], empty)
    assert not verdict.revoked and verdict.reason.startswith("no committee")


def test_election_filter_drops_revoked_aggregators_only() -> None:
    fed = Federation()
    revoked = fed.judge([fed.accuse(m) for m in fed.members])
    kept = fed.judge([fed.accuse(fed.members[0])])
    kept = replace(kept, aggregator=fed.peers[1].node_id)
    eligible = [p.node_id for p in fed.peers]
    assert revoked_aggregators([revoked, kept]) == {fed.aggregator.node_id}
    assert without_revoked(eligible, [revoked, kept]) == tuple(eligible[1:])
    assert without_revoked(eligible, [kept]) == tuple(eligible)
