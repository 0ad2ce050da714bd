"""Complaint and accusation records: refused on store and on read when bad.

Every check runs in :class:`RecordValidator`, which both the storage (STORE) and
the lookups (read) call; the last tests push Mallory's records through honest nodes
on loopback, as ``tests/test_dht_adversarial.py`` does for the other kinds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest
from helpers_dht import NOW, FakeClock, genesis_for, signed
from test_dht_adversarial import HONEST_NODES, Network, run

from flp2p.dht import RecordError, RecordRejected, RecordValidator, SignedRecord
from flp2p.dht.kinds import (
    MAX_ACCUSATION_OMITTED,
    Accusation,
    Complaint,
    Genesis,
    round_subject,
)
from flp2p.dht.record_validation import UnknownFederation
from flp2p.dht.storage import ValidatingStorage
from flp2p.identity import Identity
from flp2p.signatures import canonical_dht_json, contribution_message

ROUND = 3


def _hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def complaint_for(
    genesis: Genesis, participant: Identity, evidence: bool = True
) -> Complaint:
    digest = _hex(f"update of {participant.node_id}")
    reply = contribution_message(genesis.federation_id, ROUND, digest)
    return Complaint(
        federation_id=genesis.federation_id,
        server_round=ROUND,
        participant=participant.node_id,
        update_sha256=digest,
        reply_signature=participant.sign(reply) if evidence else None,
    )


def accusation_for(
    genesis: Genesis, auditor: Identity, aggregator: Identity, **changes: object
) -> Accusation:
    accusation = Accusation(
        federation_id=genesis.federation_id,
        server_round=ROUND,
        aggregator=aggregator.node_id,
        auditor=auditor.node_id,
        expected_sha256=_hex("honest model"),
        claimed_sha256=_hex("noisy model"),
        reason="mismatch",
        inputs_sha256=_hex("inputs"),
    )
    return replace(accusation, **changes)  # type: ignore[arg-type]


class Cast:
    """A federation: founder, aggregator, two auditors, a participant, Mallory."""

    def __init__(self) -> None:
        self.founder, self.aggregator, self.auditor, self.auditor2 = (
            Identity.generate() for _ in range(4)
        )
        self.participant, self.mallory = Identity.generate(), Identity.generate()
        self.genesis = genesis_for(
            self.founder, self.aggregator, self.auditor, self.auditor2
        )
        self.clock = FakeClock()
        self.validator = RecordValidator(clock=self.clock, max_ttl=3600)
        genesis_record = signed(self.founder, self.genesis)
        self.validator.check(genesis_record.dht_key, genesis_record.encode())

    def complaint(self) -> SignedRecord:
        return signed(self.participant, complaint_for(self.genesis, self.participant))

    def accusation(self) -> SignedRecord:
        return signed(
            self.auditor, accusation_for(self.genesis, self.auditor, self.aggregator)
        )


@pytest.fixture
def cast() -> Cast:
    return Cast()


# -- kinds ---------------------------------------------------------------------------


def test_kinds_round_trip_and_live_in_their_authors_round_slot(cast: Cast) -> None:
    complaint = complaint_for(cast.genesis, cast.participant)
    no_evidence = complaint_for(cast.genesis, cast.participant, evidence=False)
    accusation = accusation_for(cast.genesis, cast.auditor, cast.aggregator)
    omission = accusation_for(
        cast.genesis,
        cast.auditor,
        cast.aggregator,
        reason="omission",
        omitted=(cast.participant.node_id,),
    )
    for typed in (complaint, no_evidence, accusation, omission):
        payload = json.loads(canonical_dht_json(typed.to_payload()))
        assert type(typed).from_payload(payload) == typed
    fed = cast.genesis.federation_id
    assert complaint.subject == round_subject(fed, ROUND, cast.participant.node_id)
    assert accusation.subject == f"{fed}/{ROUND}/{cast.auditor.node_id}"


@pytest.mark.parametrize(
    "change",
    [
        {"server_round": 0},
        {"server_round": True},
        {"claimed_sha256": "XYZ"},
        {"reason": "dislike"},
        {"expected_sha256": _hex("noisy model")},  # a mismatch of equal hashes
        {"reason": "omission"},  # names nobody
        {"reason": "omission", "omitted": ("b" * 64, "a" * 64)},  # unsorted
        {"reason": "omission", "omitted": ("a" * 64, "a" * 64)},  # repeated
        {"omitted": tuple(f"{i:064x}" for i in range(MAX_ACCUSATION_OMITTED + 1))},
    ],
)
def test_malformed_accusations_cannot_be_built(
    cast: Cast, change: dict[str, object]
) -> None:
    with pytest.raises(RecordError):
        accusation_for(cast.genesis, cast.auditor, cast.aggregator, **change)


def test_an_aggregator_cannot_accuse_itself(cast: Cast) -> None:
    with pytest.raises(RecordError, match="itself"):
        accusation_for(cast.genesis, cast.aggregator, cast.aggregator)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda p: {**p, "extra": 1},
        lambda p: {k: v for k, v in p.items() if k != "reply_signature"},
        lambda p: {**p, "reply_signature": "zz"},
        lambda p: {**p, "reply_signature": "ab"},
        lambda p: {**p, "server_round": "3"},
        lambda p: {**p, "update_sha256": 5},
    ],
)
def test_complaint_payloads_are_parsed_strictly(cast: Cast, mangle: object) -> None:
    payload = complaint_for(cast.genesis, cast.participant).to_payload()
    with pytest.raises(RecordError):
        Complaint.from_payload(mangle(payload))  # type: ignore[operator]


# -- validation (on store and on read) -----------------------------------------------


def test_valid_complaints_and_accusations_pass(cast: Cast) -> None:
    for record in (
        cast.complaint(),
        signed(
            cast.participant,
            complaint_for(cast.genesis, cast.participant, evidence=False),
        ),
        cast.accusation(),
    ):
        assert cast.validator.check(record.dht_key, record.encode()) == record


def test_mallorys_complaints_and_accusations_are_refused(cast: Cast) -> None:
    good_complaint, good_accusation = cast.complaint(), cast.accusation()
    fake_evidence = replace(
        complaint_for(cast.genesis, cast.participant),
        reply_signature=cast.mallory.sign(b"anything"),
    )
    other_genesis = genesis_for(cast.founder, cast.aggregator, cast.mallory)
    cases: dict[str, tuple[bytes, object]] = {
        # Mallory complains in the participant's name.
        "complaint not signed by its participant": (
            good_complaint.dht_key,
            signed(
                cast.mallory, complaint_for(cast.genesis, cast.participant)
            ).encode(),
        ),
        # The participant's own complaint with a reply signature it never made.
        "evidence is not the participant's reply": (
            good_complaint.dht_key,
            signed(cast.participant, fake_evidence).encode(),
        ),
        "accusation not signed by its auditor": (
            good_accusation.dht_key,
            signed(
                cast.mallory,
                accusation_for(cast.genesis, cast.auditor, cast.aggregator),
            ).encode(),
        ),
        # Mallory is no auditor-eligible peer: she cannot sit on a committee.
        "accusing auditor is not eligible": (
            signed(
                cast.mallory,
                accusation_for(cast.genesis, cast.mallory, cast.aggregator),
            ).dht_key,
            signed(
                cast.mallory,
                accusation_for(cast.genesis, cast.mallory, cast.aggregator),
            ).encode(),
        ),
        "accused aggregator is not eligible": (
            signed(
                cast.auditor,
                accusation_for(cast.genesis, cast.auditor, cast.participant),
            ).dht_key,
            signed(
                cast.auditor,
                accusation_for(cast.genesis, cast.auditor, cast.participant),
            ).encode(),
        ),
        "bad signature": (
            good_accusation.dht_key,
            replace(
                good_accusation,
                payload={**good_accusation.payload, "claimed_sha256": _hex("x")},
            ).encode(),
        ),
        "unsigned record": (
            good_complaint.dht_key,
            replace(good_complaint, signature=b"").encode(),
        ),
        "expired record": (
            good_accusation.dht_key,
            signed(
                cast.auditor,
                accusation_for(cast.genesis, cast.auditor, cast.aggregator),
                expires_at=NOW,
            ).encode(),
        ),
        "oversized": (good_complaint.dht_key, good_complaint.encode() + b" " * 8000),
        "not a signed record": (good_complaint.dht_key, [1, 2]),
        # This federation's accusation replayed at another federation's key.
        "not stored under the key": (
            replace(
                good_accusation,
                subject=round_subject(
                    other_genesis.federation_id, ROUND, cast.auditor.node_id
                ),
            ).dht_key,
            good_accusation.encode(),
        ),
        "malformed record": (
            good_complaint.dht_key,
            good_complaint.encode().replace(b'"public_key":"', b'"public_key":"zz'),
        ),
        "payload must have exactly the fields": (
            good_complaint.dht_key,
            _resigned(cast.participant, good_complaint, extra=1).encode(),
        ),
    }
    for reason, (key, raw) in cases.items():
        with pytest.raises(RecordRejected, match=reason):
            cast.validator.check(key, raw)


def _resigned(signer: Identity, record: SignedRecord, **extra: object) -> SignedRecord:
    """``record`` with extra payload fields, validly signed by ``signer``."""
    unsigned = replace(record, payload={**record.payload, **extra}, signature=b"")
    return replace(unsigned, signature=signer.sign(unsigned.signing_bytes()))


def test_records_of_an_unknown_federation_wait_for_its_genesis(cast: Cast) -> None:
    fresh = RecordValidator(clock=cast.clock, max_ttl=3600)
    for record in (cast.complaint(), cast.accusation()):
        with pytest.raises(UnknownFederation) as unknown:
            fresh.check(record.dht_key, record.encode())
        assert unknown.value.federation_id == cast.genesis.federation_id


def test_a_replayed_older_accusation_is_refused(cast: Cast) -> None:
    storage = ValidatingStorage(cast.validator)
    first = signed(
        cast.auditor, accusation_for(cast.genesis, cast.auditor, cast.aggregator), seq=1
    )
    withdrawn = signed(
        cast.auditor,
        accusation_for(
            cast.genesis,
            cast.auditor,
            cast.aggregator,
            expected_sha256=_hex("on second look"),
        ),
        seq=2,
    )
    assert storage.offer(first.dht_key, withdrawn.encode()) is None
    assert "stale" in str(storage.offer(first.dht_key, first.encode()))
    assert storage.record(first.dht_key) == withdrawn


# -- on loopback ---------------------------------------------------------------------


def test_forged_accusation_is_refused_by_every_node_and_every_reader() -> None:
    async def scenario(net: Network) -> None:
        genesis = genesis_for(net.founder, net.aggregator, net.alice)
        assert await net.books[2].publish(genesis) == HONEST_NODES
        honest = signed(net.alice, accusation_for(genesis, net.alice, net.aggregator))
        assert await net.books[0].server.put_record(honest) == HONEST_NODES
        # Mallory rewrites Alice's accusation into a false one, at a higher seq.
        forged = replace(
            honest,
            payload={**honest.payload, "aggregator": net.founder.node_id},
            seq=honest.seq + 5,
        )
        assert await net.push(honest.dht_key, forged.encode()) == [False] * (
            HONEST_NODES
        )
        assert net.holders(honest.dht_key) == [honest.encode()] * HONEST_NODES
        async with net.serving(honest.dht_key, forged.encode()):
            got = await net.reader.server.get_record(Accusation.KIND, honest.subject)
            assert got == honest

    run(scenario)


def test_complaint_in_a_participants_name_is_never_stored() -> None:
    async def scenario(net: Network) -> None:
        genesis = genesis_for(net.founder, net.aggregator)
        assert await net.books[2].publish(genesis) == HONEST_NODES
        impostor = signed(net.mallory, complaint_for(genesis, net.alice))
        assert await net.push(impostor.dht_key, impostor.encode()) == [False] * (
            HONEST_NODES
        )
        assert net.holders(impostor.dht_key) == [None] * HONEST_NODES
        async with net.serving(impostor.dht_key, impostor.encode()):
            got = await net.reader.server.get_record(Complaint.KIND, impostor.subject)
            assert got is None

    run(scenario)
