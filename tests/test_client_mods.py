"""Each client mod on its own, around a stand-in for local training."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import (
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from helpers_ledger import FEDERATION, KeySigner, make_report

from flp2p.client_mods import (
    LedgerReplica,
    ReplySigner,
    attack_mod,
    dpsgd_mod,
    ledger_sync_mod,
    signing_mod,
    simulated_signing_key,
)
from flp2p.config import RunSettings, compose
from flp2p.ledger import Ledger
from flp2p.ledger_broadcast import LEDGER_BLOCKS_KEY
from flp2p.local_training import arrays_to_record, initial_model
from flp2p.models import get_weights
from flp2p.signatures import contribution_message
from strategies.records import (
    ARRAYS_KEY,
    IDENTITY_KEY,
    IDENTITY_SIGNATURE,
    METRICS_KEY,
    update_sha256,
)


@pytest.fixture(scope="module")
def settings() -> RunSettings:
    return RunSettings.from_config(
        compose(["dataset=digits", "clients=4", "privacy=dpsgd", "attack=sign_flip"])
    )


def instruction(settings: RunSettings, **fields: int | list[bytes]) -> Message:
    config = ConfigRecord({"server-round": 2, "federation": "told", **fields})
    arrays = arrays_to_record(get_weights(initial_model(settings)))
    return Message(
        content=RecordDict({ARRAYS_KEY: arrays, "config": config}),
        dst_node_id=1,
        message_type=MessageType.TRAIN,
    )


def context(partition_id: int = 0) -> Context:
    return Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": partition_id, "num-partitions": 4},
        state=RecordDict(),
        run_config={},
    )


def echo(msg: Message, _context: Context) -> Message:
    """Local training that returns the global model unchanged."""
    content = RecordDict(
        {
            ARRAYS_KEY: msg.content.array_records[ARRAYS_KEY],
            METRICS_KEY: MetricRecord({"num-examples": 10}),
        }
    )
    return Message(content=content, reply_to=msg)


def fail(msg: Message, _context: Context) -> Message:
    return Message(Error(code=1, reason="no"), reply_to=msg)


def test_every_mod_passes_an_error_reply_through(
    settings: RunSettings, tmp_path: Path
) -> None:
    key = simulated_signing_key(0, 0)
    mods = [
        signing_mod(lambda _c: ReplySigner(key, FEDERATION)),
        ledger_sync_mod(lambda _c: LedgerReplica(tmp_path / "r.db", FEDERATION)),
        attack_mod(lambda _c: settings),
        dpsgd_mod(lambda _c: settings),
    ]
    node = context(min(settings.attack.malicious(4, settings.seed)))
    for mod in mods:
        reply = mod(instruction(settings), node, fail)
        assert reply.has_error() and reply.error.reason == "no"
    assert not (tmp_path / "r.db").exists()
    assert not node.state.config_records and not node.state.array_records


@pytest.mark.parametrize(("trust", "signed_for"), [(True, "told"), (False, "joined")])
def test_signing_covers_the_reply_for_the_chosen_federation_and_round(
    settings: RunSettings, trust: bool, signed_for: str
) -> None:
    key = simulated_signing_key(0, 0)
    mod = signing_mod(lambda _c: ReplySigner(key, "joined", trust_instruction=trust))
    reply = mod(instruction(settings, **{"round-offset": 3}), context(), echo)
    arrays = reply.content.array_records[ARRAYS_KEY]
    digest = update_sha256({name: arrays[name].numpy() for name in arrays})
    signature = reply.content[IDENTITY_KEY][IDENTITY_SIGNATURE]
    assert isinstance(signature, bytes)
    key.public_key().verify(signature, contribution_message(signed_for, 5, digest))


def test_ledger_sync_appends_blocks_and_reports_the_height(
    settings: RunSettings, tmp_path: Path
) -> None:
    chain = Ledger.open(
        tmp_path / "a.db", federation=FEDERATION, signer=KeySigner(0), create=True
    )
    for r in (1, 2):
        chain.record_round(make_report(r), [])
    blocks = chain.blocks_bytes_after(-1)
    chain.close()
    replica = LedgerReplica(tmp_path / "replica.db", FEDERATION)
    mod = ledger_sync_mod(lambda _c: replica)
    msg = instruction(settings, **{LEDGER_BLOCKS_KEY: blocks})
    assert mod(msg, context(), echo).content[METRICS_KEY]["ledger-height"] == 2
    # No replica: the instruction's blocks are ignored, the reply is unchanged.
    plain = ledger_sync_mod(lambda _c: None)(msg, context(), echo)
    assert "ledger-height" not in plain.content[METRICS_KEY]


def test_honest_partitions_and_runs_without_dp_pass_straight_through(
    settings: RunSettings,
) -> None:
    honest = RunSettings.from_config(compose(["dataset=digits", "clients=4"]))
    seen: list[Message] = []

    def record(msg: Message, node: Context) -> Message:
        seen.append(msg)
        return echo(msg, node)

    msg = instruction(settings)
    attack_mod(lambda _c: honest)(msg, context(0), record)
    dpsgd_mod(lambda _c: honest)(msg, context(0), record)
    assert seen == [msg, msg]
