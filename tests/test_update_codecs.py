"""Compressed updates: codec error bounds, error feedback, decoding at validation,
signatures over the decoded update, and short federations with each codec."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import (
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.app.message import make_message

from flp2p.client_mods import (
    FileResidual,
    ReplySigner,
    ResidualStore,
    StateResidual,
    compression_mod,
    signing_mod,
    simulated_signing_key,
)
from flp2p.config import ConfigError, RunSettings, build_strategy, compose
from flp2p.identity import ContributionAuthenticator
from flp2p.ledger import Ledger
from flp2p.local_training import arrays_to_record, record_to_arrays
from flp2p.simulate import simulate
from strategies.base import flatten_arrays
from strategies.records import ARRAYS_KEY, IDENTITY_KEY, METRICS_KEY
from strategies.update_codecs import (
    INT8_SCALES,
    INT8_VALUES,
    TOPK_INDICES,
    TOPK_VALUES,
    Int8Quantization,
    NoCompression,
    TopKSparsification,
    decoded_update,
    model_from_delta,
)
from strategies.validation import RejectedReply, ValidReply, validate_reply

SIZES = [300, 7, 1, 50]


def model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        f"t{i}": rng.normal(size=size).astype(np.float32)
        for i, size in enumerate(SIZES)
    }


# ------------------------------------------------------------------ the codecs


def test_int8_error_is_at_most_half_a_scale_per_entry() -> None:
    rng = np.random.default_rng(0)
    codec = Int8Quantization()
    for spread in (1e-6, 1.0, 3e4):
        delta = rng.standard_cauchy(sum(SIZES)) * spread
        delta[300:307] = 0.0  # a tensor that did not move stays exactly still
        payload = codec.encode(delta, SIZES)
        assert payload[INT8_VALUES].dtype == np.int8
        assert payload[INT8_SCALES].shape == (len(SIZES),)
        decoded = codec.decode(payload, SIZES)
        bounds = np.concatenate(
            [
                np.full(size, float(s) / 2)
                for size, s in zip(SIZES, payload[INT8_SCALES], strict=True)
            ]
        )
        assert np.all(np.abs(decoded - delta) <= bounds * (1 + 1e-12))
        assert np.all(decoded[300:307] == 0.0)
        # each tensor's largest entry is the full int8 range: the scale is tight
        assert np.abs(payload[INT8_VALUES][:300]).max() == 127


def test_topk_keeps_the_largest_entries_exactly() -> None:
    rng = np.random.default_rng(1)
    delta = rng.normal(size=sum(SIZES)).astype(np.float32).astype(np.float64)
    codec = TopKSparsification(fraction=0.05)
    payload = codec.encode(delta, SIZES)
    k = codec.kept(delta.size)
    assert k == int(np.ceil(0.05 * delta.size))
    indices = payload[TOPK_INDICES]
    assert indices.dtype == np.int32 and np.all(np.diff(indices) > 0)
    assert set(indices) == set(np.argsort(-np.abs(delta))[:k])
    decoded = codec.decode(payload, SIZES)
    np.testing.assert_array_equal(decoded[indices], delta[indices])  # exact
    left_out = np.setdiff1d(np.arange(delta.size), indices)
    assert np.all(decoded[left_out] == 0.0)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({TOPK_INDICES: np.array([5, 3], np.int32)}, "strictly ascending"),
        ({TOPK_INDICES: np.array([3, 358], np.int32)}, "out of range"),
        ({TOPK_VALUES: np.array([1.0, np.nan], np.float32)}, "NaN"),
        ({TOPK_INDICES: np.array([3, 4], np.int64)}, "dtype"),
    ],
)
def test_a_malformed_topk_payload_is_refused(
    change: dict[str, np.ndarray], reason: str
) -> None:
    payload = {
        TOPK_INDICES: np.array([3, 4], np.int32),
        TOPK_VALUES: np.array([1.0, 2.0], np.float32),
        **change,
    }
    with pytest.raises(ValueError, match=reason):
        TopKSparsification(fraction=0.5).decode(payload, SIZES)


def test_the_configured_codec_is_typed_and_checked() -> None:
    settings = RunSettings.from_config(
        compose(["compression=topk", "compression.fraction=0.1"])
    )
    assert settings.compression == TopKSparsification(fraction=0.1)
    assert RunSettings.from_config(compose([])).compression == NoCompression()
    with pytest.raises(ConfigError, match="fraction must lie in"):
        RunSettings.from_config(compose(["compression=topk", "compression.fraction=0"]))
    flower = RunSettings.from_config(compose(["compression=int8", "strategy=fedavg"]))
    with pytest.raises(ConfigError, match="needs an flp2p strategy"):
        build_strategy(flower)


# ------------------------------------------------------- the mod, error feedback


def instruction(global_model: dict[str, np.ndarray], server_round: int) -> Message:
    config = ConfigRecord({"server-round": server_round, "federation": "told"})
    return Message(
        content=RecordDict(
            {ARRAYS_KEY: arrays_to_record(global_model), "config": config}
        ),
        dst_node_id=1,
        message_type=MessageType.TRAIN,
    )


def trainer(delta: np.ndarray) -> Callable[[Message, Context], Message]:
    """Local training whose model moved by ``delta`` from the global one."""

    def train(msg: Message, _context: Context) -> Message:
        reference = record_to_arrays(msg.content.array_records[ARRAYS_KEY])
        trained = model_from_delta(reference, delta)
        content = RecordDict(
            {
                ARRAYS_KEY: arrays_to_record(trained),
                METRICS_KEY: MetricRecord({"num-examples": 10}),
            }
        )
        return Message(content=content, reply_to=msg)

    return train


def node_context() -> Context:
    return Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 0},
        state=RecordDict(),
        run_config={},
    )


def received(msg: Message) -> Message:
    """The reply as the aggregator gets it (its own message, same records)."""
    return make_message(msg.metadata, RecordDict(dict(msg.content.items())))


@pytest.mark.parametrize("where", ["state", "file"])
def test_error_feedback_sums_to_the_true_delta_over_rounds(
    where: str, tmp_path: Path
) -> None:
    rng = np.random.default_rng(2)
    codec = TopKSparsification(fraction=0.02)
    settings = RunSettings.from_config(compose(["compression=topk"]))
    settings = type(settings)(**{**vars(settings), "compression": codec})
    store: ResidualStore = (
        StateResidual() if where == "state" else FileResidual(tmp_path / "r.npy")
    )
    mod = compression_mod(lambda _c: settings, lambda _c: store)
    context = node_context()
    global_model = model(rng)
    true_total = np.zeros(sum(SIZES))
    sent_total = np.zeros(sum(SIZES))
    for server_round in range(1, 6):
        delta = rng.normal(size=sum(SIZES)) * 0.01
        # what the participant's float32 model really moved by
        origin = flatten_arrays(global_model)
        true_total += flatten_arrays(model_from_delta(global_model, delta)) - origin
        msg = instruction(global_model, server_round)
        reply = mod(msg, context, trainer(delta))
        payload = record_to_arrays(reply.content.array_records[ARRAYS_KEY])
        assert set(payload) == {TOPK_INDICES, TOPK_VALUES}
        assert payload[TOPK_INDICES].size == codec.kept(sum(SIZES))
        assert reply.content.metric_records[METRICS_KEY]["update-bytes"] == 8 * 8
        new_model = decoded_update(payload, global_model)
        sent_total += flatten_arrays(new_model) - flatten_arrays(global_model)
        global_model = new_model  # the aggregator applies it: the origin moves
    residual = store.load(context)
    assert residual is not None
    # only 8 of 358 entries a round went out, yet nothing was lost
    assert np.abs(true_total - sent_total).max() > 1e-3
    np.testing.assert_allclose(sent_total + residual, true_total, rtol=0, atol=1e-12)


def test_signature_covers_the_update_the_aggregator_decodes() -> None:
    rng = np.random.default_rng(3)
    settings = RunSettings.from_config(compose(["compression=int8"]))
    signer = ReplySigner(simulated_signing_key(0, 0), "x", trust_instruction=True)
    signing = signing_mod(lambda _c: signer)
    compressing = compression_mod(lambda _c: settings, lambda _c: StateResidual())
    global_model = model(rng)
    delta = rng.normal(size=sum(SIZES))
    msg = instruction(global_model, 2)

    def inner(m: Message, c: Context) -> Message:
        return compressing(m, c, trainer(delta))

    reply = received(signing(msg, node_context(), inner))
    assert set(reply.content.array_records[ARRAYS_KEY]) == {INT8_VALUES, INT8_SCALES}
    judged = validate_reply(reply, global_model, 2, ContributionAuthenticator("told"))
    assert isinstance(judged, ValidReply), judged
    decoded = flatten_arrays(judged.arrays) - flatten_arrays(global_model)
    scale_bound = np.abs(delta).max() / 127 / 2 + 1e-6  # plus float32 rounding
    assert np.abs(decoded - delta).max() <= scale_bound

    # The same signature over a payload changed in one entry is refused.
    payload = record_to_arrays(reply.content.array_records[ARRAYS_KEY])
    payload[INT8_VALUES] = payload[INT8_VALUES].copy()
    payload[INT8_VALUES][0] = -payload[INT8_VALUES][0] or 1
    reply.content[ARRAYS_KEY] = arrays_to_record(payload)
    judged = validate_reply(reply, global_model, 2, ContributionAuthenticator("told"))
    assert isinstance(judged, RejectedReply)
    assert "authentication failed" in judged.reason


def test_validation_refuses_undecodable_payloads_with_a_reason() -> None:
    rng = np.random.default_rng(4)
    global_model = model(rng)
    payload = Int8Quantization().encode(rng.normal(size=sum(SIZES)), SIZES)
    payload[INT8_VALUES][5] = -128
    reply = Message(
        content=RecordDict(
            {
                ARRAYS_KEY: arrays_to_record(payload),
                METRICS_KEY: MetricRecord({"num-examples": 3}),
                IDENTITY_KEY: ConfigRecord({"id": "p"}),
            }
        ),
        reply_to=instruction(global_model, 1),
    )
    judged = validate_reply(received(reply), global_model, 1)
    assert isinstance(judged, RejectedReply)
    assert judged.reason.startswith("compressed update cannot be decoded")
    judged = validate_reply(received(reply), None, 1)
    assert isinstance(judged, RejectedReply)
    assert "needs the global model" in judged.reason


# ----------------------------------------------------------- short federations


@pytest.mark.parametrize("compression", ["none", "int8", "topk"])
def test_a_short_federation_runs_with_each_codec(
    compression: str, tmp_path: Path
) -> None:
    settings = RunSettings.from_config(
        compose(
            [
                "dataset=digits",
                "rounds=2",
                "clients=2",
                "strategy=trusted",
                f"compression={compression}",
                "compression.fraction=0.1" if compression == "topk" else "seed=0",
                "simulation.backend=in_process",
                "train.max_steps=5",
                "output.progress=false",
                "output.plot=false",
            ]
        )
    )
    summary = simulate(settings, tmp_path)
    assert summary["status"] == "completed"
    assert json.loads((tmp_path / "summary.json").read_text())["compression"] == (
        compression
    )
    # Every decoded reply passed validation (a positive example count is
    # recorded only then), in both rounds, and the chain verifies.
    with Ledger.open(tmp_path / "ledger.db") as ledger:
        assert ledger.verify() == 3
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        rows = db.execute("SELECT num_examples, reason FROM contributions").fetchall()
    assert len(rows) == 4
    assert all(examples > 0 for examples, _ in rows), rows
