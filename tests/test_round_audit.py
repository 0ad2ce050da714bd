"""Audited rounds in process, over loopback TCP (issue 15, items 2–6).

An aggregator's :class:`~flp2p.peer.round_audit.AuditedRounds` asks a committee of
three real audit receivers (:func:`flp2p.peer.auditor.committee_auditor`, each with
its own ledger copy and checkpoints) to co-sign round 1. An honest round becomes
final with the co-signatures in the ledger; each Byzantine aggregator's round is
refused, is not appended, and the members' accusations revoke its lease; one lying
auditor neither stops an honest round nor revokes anybody.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from helpers_messages import make_train_reply

from flp2p.audit.revocation import revocation
from flp2p.client_mods import (
    NOT_FINAL,
    RECEIPTS_DIR,
    LedgerReplica,
    check_receipts,
    final_model_mod,
)
from flp2p.dht import Genesis
from flp2p.dht.codec import SignedRecord, sign_record
from flp2p.dht.kinds import Accusation, Complaint
from flp2p.dht.record_validation import RecordValidator
from flp2p.identity import ContributionAuthenticator, Identity
from flp2p.ledger import Ledger, LedgerError
from flp2p.ledger.reports import finality_report
from flp2p.ledger_broadcast import (
    LEDGER_BLOCKS_KEY,
    LEDGER_COSIGNATURES_KEY,
    sync_replica,
)
from flp2p.local_training import arrays_to_record, record_to_arrays
from flp2p.peer.auditor import committee_auditor
from flp2p.peer.checkpoints import Checkpoint, CheckpointStore
from flp2p.peer.complaints import omission_auditor
from flp2p.peer.federation_app import (
    AGGREGATORS_NODE_KEY,
    FEDERATION_NODE_KEY,
    LEDGER_NODE_KEY,
    SETTINGS_KEY,
    FederationRoundLedger,
    deliver_final_model,
    join_ids,
    make_peer_client_app,
)
from flp2p.peer.round_audit import (
    LIES,
    AuditedRounds,
    ProposingLedger,
    RoundNotFinal,
    audit_payload,
    split_audit_payload,
    write_auditors,
)
from flp2p.peer.standby_sync import CheckpointReceiver, ComplaintHandler
from flp2p.signatures import contribution_message
from strategies import Median
from strategies.records import (
    ARRAYS_KEY,
    IDENTITY_ID,
    IDENTITY_KEY,
    IDENTITY_SIGNATURE,
    InMemoryStore,
    update_sha256,
)

FOUNDER = Identity.generate()
AGGREGATOR = Identity.generate()
AUDITORS = [Identity.generate() for _ in range(3)]
GENESIS = Genesis(
    founder=FOUNDER.node_id,
    parameters={"rounds": 2},
    eligible=tuple(i.node_id for i in (AGGREGATOR, *AUDITORS)),
    created_at=time.time(),
)
FEDERATION = GENESIS.federation_id
MODEL = {
    "w": np.linspace(-1.0, 1.0, 240, dtype=np.float32).reshape(12, 20),
    "b": np.zeros(20, dtype=np.float32),
}
PARTICIPANTS = [Identity.generate() for _ in range(4)]


def make_strategy(store: InMemoryStore) -> Median:
    return Median(recorder=store, authenticator=ContributionAuthenticator(FEDERATION))


def signed_replies(server_round: int = 1) -> list[Message]:
    rng = np.random.default_rng(server_round)
    replies = []
    for index, participant in enumerate(PARTICIPANTS):
        update = {
            name: (value + 0.05 * rng.standard_normal(value.shape)).astype(np.float32)
            for name, value in MODEL.items()
        }
        message = contribution_message(FEDERATION, server_round, update_sha256(update))
        replies.append(
            make_train_reply(
                update,
                30 + index,
                node_id=index + 1,
                identity=participant.node_id,
                public_key=participant.public_key,
                signature=participant.sign(message),
            )
        )
    return replies


@dataclass
class Federation:
    """An aggregator and three auditors, each with its own ledger and checkpoints."""

    folder: Path
    loop: asyncio.AbstractEventLoop
    aggregator: Identity = AGGREGATOR
    auditors: list[Identity] = field(default_factory=lambda: list(AUDITORS))
    accusations: list[SignedRecord] = field(default_factory=list)
    receivers: list[CheckpointReceiver] = field(default_factory=list)

    @property
    def eligible(self) -> list[str]:
        return [i.node_id for i in (self.aggregator, *self.auditors)]

    def ledger(self, name: str, signer: Identity | None = None) -> Ledger:
        return Ledger.open(
            self.folder / f"{name}.db",
            federation=FEDERATION,
            signer=signer,
            allowed_signers=self.eligible,
            create=True,
        )

    def start(self, lying_auditor: int | None = None) -> None:
        with self.ledger("aggregator", self.aggregator) as ledger:
            genesis = ledger.start_chain().to_bytes()
        CheckpointStore(self.folder / "aggregator").save(Checkpoint(0, MODEL))
        addresses = {}
        for index, auditor in enumerate(self.auditors):
            name = f"auditor-{index}"
            sync_replica(self.folder / f"{name}.db", FEDERATION, [genesis])
            store = CheckpointStore(self.folder / name)
            store.save(Checkpoint(0, MODEL))

            async def accuse(
                accusation: Accusation, signer: Identity = auditor
            ) -> None:
                self.accusations.append(
                    sign_record(
                        signer,
                        Accusation.KIND,
                        accusation.subject,
                        accusation.to_payload(),
                        1,
                        time.time() + 60,
                    )
                )

            receiver = CheckpointReceiver(
                store,
                FEDERATION,
                set(self.eligible).__contains__,
                auditor=committee_auditor(
                    auditor,
                    FEDERATION,
                    store,
                    self.folder / f"{name}.db",
                    make_strategy,
                    accuse=accuse,
                    lie="accuse" if index == lying_auditor else None,
                    wait=2.0,
                ),
            )
            self.receivers.append(receiver)
            future = asyncio.run_coroutine_threadsafe(receiver.start(), self.loop)
            addresses[auditor.node_id] = future.result(timeout=10)
        # The runtime fixes round 1's committee candidates when it takes the lease.
        write_auditors(
            self.folder / "auditors.json", addresses, (), (1, sorted(addresses))
        )

    def aggregate(self, lie: str | None = None) -> tuple[bool, str]:
        """Round 1 through AuditedRounds: (final, model hash handed to Flower)."""
        final, model = self.aggregate_model(lie)
        return final, "" if model is None else update_sha256(model)

    def aggregate_model(
        self, lie: str | None = None, raising: bool = False
    ) -> tuple[bool, dict[str, np.ndarray] | None]:
        """Round 1 through AuditedRounds: (final, model handed to Flower)."""
        with self.ledger("aggregator", self.aggregator) as ledger:
            recorder = ProposingLedger(FederationRoundLedger(ledger, 0), ledger)
            inner = Median(
                recorder=recorder,
                authenticator=ContributionAuthenticator(FEDERATION),
            )
            inner.set_reference(MODEL)
            gate = AuditedRounds(
                inner,
                recorder,
                self.aggregator,
                CheckpointStore(self.folder / "aggregator"),
                3,
                self.folder / "auditors.json",
                lie,
            )
            try:
                arrays, _ = gate.aggregate_train(1, signed_replies())
            except RoundNotFinal:
                assert ledger.height == 0  # nothing appended
                if raising:
                    raise
                return False, None
            assert arrays is not None
            return True, {k: arrays[k].numpy() for k in arrays}

    def aggregate_raising(self) -> None:
        """Round 1 through AuditedRounds, letting RoundNotFinal out."""
        self.aggregate_model(raising=True)

    def revoked(self) -> bool:
        with self.ledger("auditor-0") as ledger:
            committee = ledger.next_committee(self.aggregator.node_id, 3)
        assert committee is not None and len(committee.members) == 3
        return revocation(FEDERATION, 1, committee, self.accusations).revoked


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    running = Federation(tmp_path, loop)
    try:
        yield running
    finally:
        for receiver in running.receivers:
            asyncio.run_coroutine_threadsafe(receiver.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_an_honest_round_is_final_with_its_committees_cosignatures(
    federation: Federation,
) -> None:
    federation.start()

    final, model = federation.aggregate()

    assert final
    with federation.ledger("aggregator") as ledger:
        block = ledger.block(1)
        assert block.aggregate_sha256 == model
        (status,) = finality_report(ledger, 3)
        assert status.is_final and status.finality is not None
        assert status.finality.valid == 3
    assert federation.accusations == []


@pytest.mark.parametrize("lie", [lie for lie in LIES if lie != "drop"])
def test_a_lying_aggregator_is_refused_and_revoked(
    federation: Federation, lie: str
) -> None:
    federation.start()

    final, _ = federation.aggregate(lie)

    assert not final
    assert len(federation.accusations) == 3
    assert federation.revoked()


def validator() -> RecordValidator:
    """A DHT validator that knows the federation's genesis."""
    checking = RecordValidator(clock=time.time)
    record = sign_record(
        FOUNDER,
        Genesis.KIND,
        GENESIS.subject,
        GENESIS.to_payload(),
        1,
        time.time() + 600,
    )
    checking.check(record.dht_key, record.encode())
    return checking


def judge(handler: ComplaintHandler, record: bytes) -> str:
    async def main() -> str:
        return await handler(record)

    return asyncio.run(main())


def test_a_dropped_reply_is_final_but_its_complaint_revokes_the_lease(
    federation: Federation,
) -> None:
    # The aggregator withholds the reply from its committee as well: the round is
    # consistent for them, so it is final ...
    federation.start()
    final, _ = federation.aggregate("drop")
    assert final
    with federation.ledger("aggregator") as ledger:
        block = ledger.block(1)
        chain = [b.to_bytes() for b in ledger.blocks()]
        statements = ledger.cosignatures(1)
    assert len(block.contributions) == len(PARTICIPANTS) - 1
    # ... but the participant left out finds its receipt missing from the final
    # block in its replica and complains, with its signed reply as evidence.
    dropped = min(PARTICIPANTS, key=lambda p: p.node_id)
    reply = next(
        r
        for r in signed_replies()
        if r.content.config_records[IDENTITY_KEY][IDENTITY_ID] == dropped.node_id
    )
    identity = reply.content.config_records[IDENTITY_KEY]
    digest = update_sha256(record_to_arrays(reply.content.array_records[ARRAYS_KEY]))
    replica = LedgerReplica(
        federation.folder / "participant" / "ledger.db", FEDERATION, committee_size=3
    )
    sync_replica(replica.path, FEDERATION, chain, None, statements, 3)
    receipts = replica.path.parent / RECEIPTS_DIR
    receipts.mkdir()
    (receipts / "round-000001.json").write_text(
        json.dumps(
            {
                "round": 1,
                "identity": dropped.node_id,
                "update_sha256": digest,
                "signature": bytes(identity[IDENTITY_SIGNATURE]).hex(),  # type: ignore[arg-type]
            }
        )
    )
    assert check_receipts(replica) == [1]
    complaint = Complaint(
        FEDERATION,
        1,
        dropped.node_id,
        digest,
        bytes(identity[IDENTITY_SIGNATURE]),  # type: ignore[arg-type]
    )
    record = sign_record(
        dropped,
        Complaint.KIND,
        complaint.subject,
        complaint.to_payload(),
        1,
        time.time() + 60,
    ).encode()
    # Each committee member checks it against its own copy of the block and
    # accuses: the lease is revoked for round 1.
    for index, auditor in enumerate(federation.auditors):
        path = federation.folder / f"auditor-{index}.db"
        sync_replica(path, FEDERATION, chain, None, statements, 3)

        async def accuse(accusation: Accusation, signer: Identity = auditor) -> None:
            federation.accusations.append(
                sign_record(
                    signer,
                    Accusation.KIND,
                    accusation.subject,
                    accusation.to_payload(),
                    1,
                    time.time() + 60,
                )
            )

        handler = omission_auditor(auditor, FEDERATION, path, validator(), 3, accuse)
        assert judge(handler, record) == "ok"
    assert federation.revoked()
    # A complaint about a reply the block does list is refused.
    listed = next(p for p in PARTICIPANTS if p is not dropped)
    forged = Complaint(FEDERATION, 1, listed.node_id, digest, None)
    wrong = sign_record(
        listed, Complaint.KIND, forged.subject, forged.to_payload(), 1, time.time() + 60
    ).encode()
    handler = omission_auditor(
        federation.auditors[0],
        FEDERATION,
        federation.folder / "auditor-0.db",
        validator(),
        3,
        accuse,
    )
    assert judge(handler, wrong).startswith("refused")


def test_one_lying_auditor_neither_blocks_nor_revokes(federation: Federation) -> None:
    federation.start(lying_auditor=0)

    final, _ = federation.aggregate()

    assert final
    assert len(federation.accusations) == 1
    assert not federation.revoked()
    with federation.ledger("aggregator") as ledger:
        (status,) = finality_report(ledger, 3)
        assert status.is_final and status.finality is not None
        assert status.finality.valid == 2


def kill_auditors(federation: Federation, *indices: int) -> list[str]:
    """Stop the audit receivers of ``indices``: their addresses refuse connections,
    as a dead peer's still listed in the DHT do. Returns their node ids."""
    for index in indices:
        stop = federation.receivers[index].stop()
        asyncio.run_coroutine_threadsafe(stop, federation.loop).result(10)
    return [federation.auditors[i].node_id for i in indices]


def test_dead_members_are_dropped_and_the_committee_redrawn_from_the_rest(
    federation: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two of the three members died after the candidates were fixed (the
    # successor's view after a failover): drawn as they were, the committee
    # could reach 1 of the 2 co-signatures it needs, and the run stalled.
    monkeypatch.setattr("flp2p.peer.round_audit.RETRY_SECONDS", 0.05)
    federation.start()
    dead = kill_auditors(federation, 0, 1)
    survivor = federation.auditors[2].node_id

    final, model = federation.aggregate()

    assert final
    with federation.ledger("aggregator") as ledger:
        block = ledger.block(1)
        assert block.aggregate_sha256 == model and block.signature_valid()
        assert block.candidates == (survivor,)
        assert not set(dead) & set(block.candidates)
        (status,) = finality_report(ledger, 3)
        assert status.is_final and status.committee is not None
        assert status.committee.members == (survivor,)
    replica = federation.folder / "replica.db"
    with federation.ledger("aggregator") as ledger:
        chain = [b.to_bytes() for b in ledger.blocks()]
        statements = ledger.cosignatures(1)
    sync_replica(replica, FEDERATION, chain, None, statements, 3)
    with Ledger.open(replica) as copy:
        assert copy.height == 1  # the replica appended the redrawn block as final
    assert federation.accusations == []


def test_a_dead_cosigner_of_the_previous_block_stops_the_round_clearly(
    federation: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A member that co-signed the block before must stay a candidate (else an
    # aggregator could drop honest auditors); if it is dead too few remain.
    monkeypatch.setattr("flp2p.peer.round_audit.RETRY_SECONDS", 0.05)
    federation.start()
    dead = kill_auditors(federation, 0, 1)
    monkeypatch.setattr(
        Ledger, "required_candidates", lambda self, aggregator: tuple(sorted(dead))
    )

    with pytest.raises(RoundNotFinal, match=r"1/2 co-signatures; committee member"):
        federation.aggregate_raising()


def test_audit_payload_round_trips_and_refuses_a_truncated_block() -> None:
    block, replies = b'{"block": 1}', b"replies"
    assert split_audit_payload(audit_payload(block, replies)) == (block, replies)
    with pytest.raises(ValueError, match="truncated"):
        split_audit_payload(audit_payload(block, replies)[:10])


def test_replicas_and_participants_take_final_blocks_only(
    federation: Federation,
) -> None:
    federation.start()
    final, model = federation.aggregate_model()
    assert final and model is not None
    with federation.ledger("aggregator") as ledger:
        chain = [b.to_bytes() for b in ledger.blocks()]
        statements = [json.dumps(s.to_json()) for s in ledger.cosignatures(1)]
    # Without its co-signatures the round block is refused ...
    bare = federation.folder / "bare.db"
    with pytest.raises(LedgerError, match="not final"):
        sync_replica(bare, FEDERATION, chain, None, [], 3)
    with Ledger.open(bare) as replica:
        assert replica.height == 0
    # ... and a participant then refuses to train on the round's model.
    participant = LedgerReplica(
        federation.folder / "p" / "ledger.db", FEDERATION, committee_size=3
    )
    trained: list[Message] = []

    def train(msg: Message, _context: Context) -> Message:
        trained.append(msg)
        return msg

    mod = final_model_mod(lambda _context: participant)
    node = Context(
        run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={}
    )
    reply = mod(instruction(model, chain, []), node, train)
    assert reply.has_error() and reply.error.code == NOT_FINAL and not trained
    # With them it is final: appended, co-signatures stored, trained on; an
    # instruction with any other model is refused.
    assert mod(instruction(model, chain, statements), node, train) is trained[-1]
    with Ledger.open(participant.path) as replica:
        (status,) = finality_report(replica, 3)
        assert status.is_final and replica.height == 1
    reply = mod(instruction(MODEL, chain, statements), node, train)
    assert reply.has_error() and "not the one final block 1" in str(reply.error.reason)
    assert len(trained) == 1


def instruction(
    model: dict[str, np.ndarray], blocks: list[bytes], statements: list[str]
) -> Message:
    config = ConfigRecord(
        {
            "server-round": 1,
            LEDGER_BLOCKS_KEY: blocks,
            **({LEDGER_COSIGNATURES_KEY: statements} if statements else {}),
        }
    )
    return Message(
        content=RecordDict({ARRAYS_KEY: arrays_to_record(model), "config": config}),
        dst_node_id=1,
        message_type=MessageType.TRAIN,
    )


class ParticipantGrid:
    """One participant whose SuperNode runs the peer ClientApp in process; its
    ledger copy starts at the genesis (it missed every round's instruction).
    ``strip`` drops the co-signatures from what it receives."""

    def __init__(self, federation: Federation, name: str, strip: bool) -> None:
        self.replica = federation.folder / name / "ledger.db"
        with federation.ledger("aggregator") as ledger:
            sync_replica(self.replica, FEDERATION, [ledger.block(0).to_bytes()])
        self.strip = strip
        self.app = make_peer_client_app()
        self.context = Context(
            run_id=1,
            node_id=7,
            node_config={
                "partition-id": 0,
                LEDGER_NODE_KEY: str(self.replica),
                FEDERATION_NODE_KEY: FEDERATION,
                AGGREGATORS_NODE_KEY: join_ids(federation.eligible),
            },
            state=RecordDict(),
            run_config={SETTINGS_KEY: json.dumps({"audit": {"committee_size": 3}})},
        )
        self.replies: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return [7]

    def send_and_receive(
        self, messages: Iterable[Message], timeout: float | None = None
    ) -> list[Message]:
        for message in messages:
            if self.strip:
                config = message.content.config_records["config"]
                message.content["config"] = ConfigRecord(
                    {k: v for k, v in config.items() if k != LEDGER_COSIGNATURES_KEY}
                )
            self.replies.append(self.app(message, self.context))
        return self.replies

    def metrics(self) -> dict[str, Any]:
        (reply,) = self.replies
        assert not reply.has_error(), reply.error
        return dict(reply.content.metric_records["metrics"].items())


def test_the_final_model_delivery_appends_final_blocks_only(
    federation: Federation,
) -> None:
    # The namespace run's finding: a participant that missed the last
    # instruction got the round block from the final-model delivery, which
    # carried no co-signatures, and its replica (k ignored) stored it bare.
    federation.start()
    final, model = federation.aggregate_model()
    assert final and model is not None
    late = ParticipantGrid(federation, "late", strip=False)
    stripped = ParticipantGrid(federation, "stripped", strip=True)
    with federation.ledger("aggregator") as ledger:
        for grid in (late, stripped):
            deliver_final_model(grid, Checkpoint(1, model), ledger, FEDERATION)
    assert late.metrics()["ledger-height"] == 1
    with Ledger.open(late.replica) as replica:
        (status,) = finality_report(replica, 3)
        assert status.is_final, status.summary()
    # Without its co-signatures the block is refused, not stored bare.
    assert stripped.metrics()["ledger-refused"] == 1
    with Ledger.open(stripped.replica) as replica:
        assert replica.height == 0
