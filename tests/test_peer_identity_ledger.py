"""Peer mode without processes: replies signed by the peer's own key, the strategy's
authenticator, and one ledger chain across an aggregator change."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from helpers_ledger import make_report, make_reputations
from helpers_messages import make_train_reply

from flp2p.cli import main as flp2p_cli
from flp2p.client_mods import simulated_signing_key
from flp2p.config import RunSettings, compose
from flp2p.identity import ContributionAuthenticator, Identity
from flp2p.ledger import BlockKind, ChainError, Ledger
from flp2p.ledger_broadcast import LEDGER_BLOCKS_KEY, sync_replica
from flp2p.local_training import arrays_to_record, initial_model, record_to_arrays
from flp2p.models import get_weights
from flp2p.peer.aggregator import blocks_up_to, peer_run_config
from flp2p.peer.checkpoints import CheckpointStore
from flp2p.peer.federation_app import (
    AGGREGATORS_NODE_KEY,
    FEDERATION_NODE_KEY,
    IDENTITY_NODE_KEY,
    LEDGER_NODE_KEY,
    FederationRoundAuthenticator,
    FederationRoundLedger,
    PeerRun,
    join_ids,
    make_peer_client_app,
    participant_from_node_config,
    peer_strategy,
    train_config,
)
from flp2p.peer.standby_sync import CheckpointReceiver, push_blocks
from flp2p.signatures import contribution_message
from strategies.records import (
    ARRAYS_KEY,
    IDENTITY_ID,
    IDENTITY_KEY,
    IDENTITY_PUBLIC_KEY,
    IDENTITY_SIGNATURE,
    ReputationState,
    Tier,
    update_sha256,
)

FEDERATION = "fe" * 32
AGGREGATOR_A = Identity.generate()
AGGREGATOR_B = Identity.generate()
OUTSIDER = Identity.generate()
ELIGIBLE = (AGGREGATOR_A.node_id, AGGREGATOR_B.node_id)


@pytest.fixture(scope="module")
def settings() -> RunSettings:
    return RunSettings.from_config(
        compose(["dataset=digits", "clients=4", "rounds=3", "strategy=trusted"])
    )


def _key_file(tmp_path: Path, name: str = "peer.key") -> tuple[Identity, Path]:
    path = tmp_path / name
    return Identity.load_or_create(path), path


def _node_config(key: Path, ledger: Path | None = None) -> dict[str, int | str]:
    config: dict[str, int | str] = {
        "partition-id": 1,
        "num-partitions": 4,
        IDENTITY_NODE_KEY: str(key),
        FEDERATION_NODE_KEY: FEDERATION,
        AGGREGATORS_NODE_KEY: join_ids(ELIGIBLE),
    }
    if ledger is not None:
        config[LEDGER_NODE_KEY] = str(ledger)
    return config


def _instruction(
    settings: RunSettings, server_round: int, round_offset: int, blocks: list[bytes]
) -> Message:
    config = train_config(settings, "some-other-federation", round_offset)
    config["server-round"] = server_round
    config[LEDGER_BLOCKS_KEY] = blocks
    arrays = arrays_to_record(get_weights(initial_model(settings)))
    content = RecordDict({"arrays": arrays, "config": config})
    return Message(content=content, dst_node_id=7, message_type=MessageType.TRAIN)


def _context(node_config: dict[str, int | str]) -> Context:
    return Context(
        run_id=1,
        node_id=7,
        node_config=dict(node_config),
        state=RecordDict(),
        run_config={},
    )


def _chain(path: Path, signer: Identity, rounds: range, offset: int = 0) -> Ledger:
    """A ledger at ``path`` signed by ``signer`` holding ``rounds`` (Flower's count,
    shifted by ``offset``), whose genesis block allows the two eligible aggregators
    (or, for anyone else, the signer: what a hostile aggregator would write)."""
    allowed = ELIGIBLE if signer.node_id in ELIGIBLE else (signer.node_id,)
    ledger = Ledger.open(
        path,
        federation=FEDERATION,
        signer=signer,
        allowed_signers=allowed,
        create=True,
    )
    shifted = FederationRoundLedger(ledger, offset)
    for server_round in rounds:
        report = make_report(server_round)
        shifted.record_round(report, make_reputations(report))
    return ledger


def _next_block_by(chain: Ledger, signer: Identity) -> bytes:
    """A well-linked next block for ``chain``, signed by ``signer``."""
    last = chain.latest_block()
    assert last is not None
    block = dataclasses.replace(
        last,
        kind=BlockKind.ROUND,
        height=last.height + 1,
        previous_hash=last.block_hash,
        server_round=last.server_round + 1,
        allowed_signers=(),
    )
    return block.signed_by(signer).to_bytes()


# ------------------------------------------------------------------ signing


def test_peer_reply_is_signed_by_the_peers_own_key(
    settings: RunSettings, tmp_path: Path
) -> None:
    peer, key = _key_file(tmp_path)
    # Flower round 2 of a run that resumed after 3 federation rounds.
    reply = make_peer_client_app(settings)(
        _instruction(settings, 2, 3, []), _context(_node_config(key))
    )
    record = reply.content[IDENTITY_KEY]
    assert record[IDENTITY_ID] == peer.node_id
    assert record[IDENTITY_PUBLIC_KEY] == peer.public_key
    simulated = Identity(simulated_signing_key(settings.seed, 1))
    assert record[IDENTITY_PUBLIC_KEY] != simulated.public_key
    digest = update_sha256(record_to_arrays(reply.content.array_records[ARRAYS_KEY]))
    signature = record[IDENTITY_SIGNATURE]
    assert isinstance(signature, bytes)
    check = ContributionAuthenticator(FEDERATION)
    # Signed for the federation the peer joined (not the one the instruction named)
    # and the federation's round 3 + 2.
    assert check(peer.node_id, peer.public_key, signature, 5, digest) is None
    assert check(peer.node_id, peer.public_key, signature, 2, digest) is not None
    resumed = FederationRoundAuthenticator(check, round_offset=3)
    assert resumed(peer.node_id, peer.public_key, signature, 2, digest) is None
    replayed = FederationRoundAuthenticator(check, round_offset=0)
    assert replayed(peer.node_id, peer.public_key, signature, 2, digest) == (
        "bad signature"
    )


def test_peer_client_app_needs_the_key_from_the_node_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="identity-key"):
        participant_from_node_config({"partition-id": 0, "federation": FEDERATION})
    with pytest.raises(FileNotFoundError, match="no identity key"):
        participant_from_node_config(_node_config(tmp_path / "missing.key"))


def test_strategy_rejects_forged_and_unsigned_replies_by_signature(
    settings: RunSettings, tmp_path: Path
) -> None:
    ledger = Ledger.open(
        tmp_path / "ledger.db",
        federation=FEDERATION,
        signer=AGGREGATOR_A,
        allowed_signers=ELIGIBLE,
        create=True,
    )
    peer = PeerRun(1, tmp_path, FEDERATION, aggregators=ELIGIBLE)
    strategy = peer_strategy(settings, peer, ledger)
    rng = np.random.default_rng(0)
    reference = {"w": np.zeros(64, dtype=np.float32)}
    strategy.set_reference(reference)
    honest = [Identity.generate() for _ in range(4)]
    victim, forger = honest[0], Identity.generate()
    replies = []
    for index, who in enumerate(honest):
        arrays = {"w": rng.normal(0, 0.1, 64).astype(np.float32)}
        digest = update_sha256(arrays)
        replies.append(
            make_train_reply(
                arrays,
                50,
                index + 1,
                who.node_id,
                public_key=who.public_key,
                # Federation round 2 = resumed after 1, Flower round 1.
                signature=who.sign(contribution_message(FEDERATION, 2, digest)),
            )
        )
    forged = {"w": np.full(64, 0.05, dtype=np.float32)}
    replies.append(
        make_train_reply(
            forged,
            50,
            10,
            victim.node_id,  # claims to be the victim, signs with its own key
            public_key=victim.public_key,
            signature=forger.sign(
                contribution_message(FEDERATION, 2, update_sha256(forged))
            ),
        )
    )
    unsigned_peer = Identity.generate()
    replies.append(make_train_reply(forged, 50, 11, unsigned_peer.node_id))
    strategy.aggregate_train(1, replies)
    block = ledger.block(1)
    assert block.server_round == 2  # federation rounds, not Flower's
    rows = {(row["node_id"], row["identity"]): row for row in block.contributions}
    forged_row = rows[(10, victim.node_id)]
    assert forged_row["verdict"] == "rejected"
    assert "signature" in str(forged_row["reason"])
    unsigned_row = rows[(11, unsigned_peer.node_id)]
    assert unsigned_row["verdict"] == "rejected"
    assert "unsigned" in str(unsigned_row["reason"])
    # Honest rows (and reputations) are keyed by the peers' node ids.
    honest_ids = {who.node_id for who in honest[1:]}
    assert honest_ids <= {row["identity"] for row in block.contributions}
    assert honest_ids <= {row["identity"] for row in block.reputations}
    for who in honest[1:]:
        assert "authentication" not in str(
            rows[(honest.index(who) + 1, who.node_id)]["reason"]
        )
    ledger.close()


# ------------------------------------------------------------------ the chain


def test_successor_continues_the_chain_under_its_own_signature(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _chain(tmp_path / "a.db", AGGREGATOR_A, range(1, 3))  # rounds 1, 2
    # The standby holds a replica (pushed blocks), checked against the genesis.
    successor_db = tmp_path / "b.db"
    sync_replica(successor_db, FEDERATION, first.blocks_bytes_after(-1), ELIGIBLE)
    # After the failover its run starts at federation round 2: Flower round 1 → 3.
    successor = _chain(successor_db, AGGREGATOR_B, range(1, 3), offset=2)
    signers = [block.signer for block in successor.blocks()]
    assert signers[:3] == [AGGREGATOR_A.public_key.hex()] * 3
    assert signers[3:] == [AGGREGATOR_B.public_key.hex()] * 2
    assert [b.server_round for b in successor.blocks()] == [0, 1, 2, 3, 4]
    assert successor.verify() == 5
    assert flp2p_cli(["ledger", "verify", "--db", str(successor_db)]) == 0
    assert "5" in capsys.readouterr().out
    # A participant that followed the first aggregator accepts the successor's
    # blocks, which extend what it holds.
    replica = tmp_path / "participant.db"
    sync_replica(replica, FEDERATION, first.blocks_bytes_after(-1)[:2], ELIGIBLE)
    height = sync_replica(
        replica, FEDERATION, successor.blocks_bytes_after(-1), ELIGIBLE
    )
    assert height == 4
    with Ledger.open(replica) as copy:
        assert [b.block_hash for b in copy.blocks()] == [
            b.block_hash for b in successor.blocks()
        ]
    first.close()
    successor.close()


def test_blocks_from_a_signer_the_genesis_does_not_allow_are_refused(
    tmp_path: Path,
) -> None:
    chain = _chain(tmp_path / "a.db", AGGREGATOR_A, range(1, 2))
    replica = tmp_path / "participant.db"
    sync_replica(replica, FEDERATION, chain.blocks_bytes_after(-1), ELIGIBLE)
    # An outsider who got hold of the chain cannot extend it ...
    hijacked = tmp_path / "hijacked.db"
    sync_replica(hijacked, FEDERATION, chain.blocks_bytes_after(-1), ELIGIBLE)
    with (
        Ledger.open(hijacked, signer=OUTSIDER) as outsider,
        pytest.raises(ChainError, match="not allowed by the genesis"),
    ):
        outsider.record_round(make_report(2), [])
    # ... nor start its own chain whose genesis block allows itself: participants
    # check signers against the federation's genesis record, not the chain's.
    own = _chain(tmp_path / "own.db", OUTSIDER, range(1, 2))
    fresh = tmp_path / "fresh.db"
    with pytest.raises(ChainError, match="not an aggregator of the federation"):
        sync_replica(fresh, FEDERATION, own.blocks_bytes_after(-1), ELIGIBLE)
    with Ledger.open(fresh) as untouched:
        assert untouched.height is None
    # A well-linked next block the outsider signed: refused by the federation's
    # aggregators and, independently, by the chain's own genesis block.
    hijack = _next_block_by(chain, OUTSIDER)
    with pytest.raises(ChainError, match="not an aggregator"):
        sync_replica(replica, FEDERATION, [hijack], ELIGIBLE)
    with pytest.raises(ChainError, match="not allowed by the genesis"):
        sync_replica(replica, FEDERATION, [hijack])
    assert sync_replica(replica, FEDERATION, [_next_block_by(chain, AGGREGATOR_B)])
    with Ledger.open(replica) as kept:
        assert kept.height == 2 and kept.verify() == 3
    chain.close()
    own.close()


def test_participant_appends_blocks_from_instructions(
    settings: RunSettings, tmp_path: Path
) -> None:
    chain = _chain(tmp_path / "a.db", AGGREGATOR_A, range(1, 3))
    _, key = _key_file(tmp_path)
    replica = tmp_path / "peer-ledger.db"
    config = _node_config(key, replica)
    app = make_peer_client_app(settings)
    reply = app(
        _instruction(settings, 3, 0, chain.blocks_bytes_after(-1)), _context(config)
    )
    assert reply.content["metrics"]["ledger-height"] == 2
    refused = app(
        _instruction(settings, 3, 0, [_next_block_by(chain, OUTSIDER)]),
        _context(config),
    )
    assert refused.content["metrics"]["ledger-refused"] == 1
    with Ledger.open(replica) as held:
        assert held.height == 2
    chain.close()


def test_standby_receives_the_chain_up_to_the_advertised_round(tmp_path: Path) -> None:
    chain = _chain(tmp_path / "a.db", AGGREGATOR_A, range(1, 4))
    hijack = _next_block_by(chain, OUTSIDER)
    chain.close()
    # Round 3's block is written before round 3 is advertised: only rounds ≤ 2 go.
    blocks = blocks_up_to(tmp_path / "a.db", FEDERATION, 2)
    assert len(blocks) == 3
    assert blocks_up_to(tmp_path / "missing.db", FEDERATION, 2) == []
    standby = tmp_path / "standby.db"

    async def scenario() -> tuple[str | None, str | None, str | None]:
        receiver = CheckpointReceiver(
            CheckpointStore(tmp_path / "ckpt"),
            FEDERATION,
            set(ELIGIBLE).__contains__,
            ledger=standby,
            block_signers=ELIGIBLE,
        )
        address = await receiver.start()
        try:
            taken = await push_blocks(address, FEDERATION, blocks)
            foreign = await push_blocks(address, "another", blocks)
            forged = await push_blocks(address, FEDERATION, [hijack])
            return taken, foreign, forged
        finally:
            await receiver.stop()

    taken, foreign, forged = asyncio.run(scenario())
    assert taken is None
    assert foreign is not None and "another federation" in foreign
    assert forged is not None and "not an aggregator" in forged
    with Ledger.open(standby) as held:
        assert held.height == 2 and held.verify() == 3


def test_reputation_keeps_its_federation_rounds_across_runs(tmp_path: Path) -> None:
    ledger = Ledger.open(
        tmp_path / "l.db", federation=FEDERATION, signer=AGGREGATOR_A, create=True
    )
    first_run = FederationRoundLedger(ledger, round_offset=0)
    banned = ReputationState(
        "x" * 64, 0.1, Tier.BRONZE, first_round=1, last_round=2, banned_until=5
    )
    never = ReputationState("y" * 64, 0.6, Tier.SILVER, first_round=2, last_round=2)
    first_run.put_reputations([banned, never])
    # A successor's run resumed after round 2 counts from 1 again.
    second_run = FederationRoundLedger(ledger, round_offset=2)
    seen = second_run.get_reputation(banned.identity)
    assert seen is not None
    assert (seen.first_round, seen.last_round, seen.banned_until) == (-1, 0, 3)
    # Written back unchanged, the stored (federation) rounds are unchanged.
    second_run.put_reputations(second_run.all_reputations())
    assert ledger.get_reputation(banned.identity) == banned
    assert ledger.get_reputation(never.identity) == never
    ledger.close()


def test_run_config_names_key_and_ledger_paths_not_the_key(tmp_path: Path) -> None:
    _, key = _key_file(tmp_path)
    config = peer_run_config(
        {"rounds": 2},
        FEDERATION,
        1,
        tmp_path / "ckpt",
        tmp_path / "out",
        key,
        tmp_path / "ledger.db",
        ELIGIBLE,
    )
    peer = PeerRun.from_run_config(config)
    assert peer.identity_key == key.resolve() and peer.aggregators == ELIGIBLE
    assert peer.ledger == (tmp_path / "ledger.db").resolve()
    secret = key.read_text()
    assert all(secret not in str(value) for value in config.values())
    ConfigRecord(config)  # type: ignore[arg-type]  # scalars Flower accepts
