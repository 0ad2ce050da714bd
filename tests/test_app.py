"""The ClientApp and ServerApp building blocks, without the simulation engine."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    RecordDict,
)

from flp2p.app import central_evaluator, make_client_app
from flp2p.client_mods import simulated_signing_key
from flp2p.config import RunSettings, compose
from flp2p.local_training import (
    arrays_to_record,
    client_evaluate,
    client_train,
    federation_name,
    initial_model,
    numpy_array,
    record_to_arrays,
)
from flp2p.models import get_weights, seed_torch
from flp2p.signatures import contribution_message
from strategies.records import (
    ARRAYS_KEY,
    IDENTITY_ID,
    IDENTITY_KEY,
    IDENTITY_PUBLIC_KEY,
    IDENTITY_SIGNATURE,
    METRICS_KEY,
    NUM_EXAMPLES_KEY,
    update_sha256,
)


@pytest.fixture(scope="module")
def settings() -> RunSettings:
    return RunSettings.from_config(
        compose(["dataset=digits", "clients=4", "rounds=1", "train.lr=0.1"])
    )


def instruction(settings: RunSettings, message_type: str, server_round: int) -> Message:
    arrays = arrays_to_record(get_weights(initial_model(settings)))
    config = ConfigRecord(
        {"server-round": server_round, "federation": federation_name(settings)}
    )
    content = RecordDict({"arrays": arrays, "config": config})
    return Message(content=content, dst_node_id=7, message_type=message_type)


def node_context(partition_id: int) -> Context:
    return Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": partition_id, "num-partitions": 4},
        state=RecordDict(),
        run_config={},
    )


def test_training_step_lowers_the_local_loss(settings: RunSettings) -> None:
    reply = client_train(
        instruction(settings, MessageType.TRAIN, 1), node_context(2), settings
    )
    metrics = reply.content[METRICS_KEY]
    assert metrics["train-loss"] < metrics["train-loss-before"]
    assert metrics[NUM_EXAMPLES_KEY] > 0


def test_plain_training_reply_is_unsigned(settings: RunSettings) -> None:
    reply = client_train(
        instruction(settings, MessageType.TRAIN, 1), node_context(0), settings
    )
    assert IDENTITY_KEY not in reply.content


def test_training_reply_is_signed_by_a_stable_identity(settings: RunSettings) -> None:
    app = make_client_app(settings)
    msg = instruction(settings, MessageType.TRAIN, 3)
    reply = app(msg, node_context(1))
    identity = reply.content[IDENTITY_KEY]
    public = identity[IDENTITY_PUBLIC_KEY]
    assert isinstance(public, bytes)
    assert identity[IDENTITY_ID] == hashlib.sha256(public).hexdigest()
    digest = update_sha256(record_to_arrays(reply.content[ARRAYS_KEY]))
    signed = contribution_message(federation_name(settings), 3, digest)
    Ed25519PublicKey.from_public_bytes(public).verify(
        identity[IDENTITY_SIGNATURE], signed
    )
    # The same partition keeps its identity; another partition has another one.
    again = app(instruction(settings, MessageType.TRAIN, 4), node_context(1))
    other = app(msg, node_context(0))
    assert again.content[IDENTITY_KEY][IDENTITY_ID] == identity[IDENTITY_ID]
    assert other.content[IDENTITY_KEY][IDENTITY_ID] != identity[IDENTITY_ID]


ARRAY_FORMS = {
    "float32 matrix": np.arange(12, dtype=np.float32).reshape(3, 4),
    "Fortran order": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    "strided view": np.arange(24).reshape(2, 3, 4)[:, ::2],
    "scalar": np.array(2.5),
    "empty": np.zeros((0, 5), dtype=np.int64),
    "big-endian": np.arange(5, dtype=">f4"),
    "bool": np.array([True, False, True]),
    "complex": np.ones(3, dtype=np.complex64),
    "64 dimensions": np.zeros((1,) * 64, dtype=np.uint8),
    "unicode (Flower's path)": np.array(["ab", "c"]),
}


@pytest.mark.parametrize("values", ARRAY_FORMS.values(), ids=ARRAY_FORMS.keys())
def test_arrays_encode_and_decode_as_flowers_own_codec(values: np.ndarray) -> None:
    """The cached-header encoder writes the bytes ``np.save`` writes, and the
    decoder returns what ``np.load`` returns: same values, dtype, order, writable."""
    ours, flowers = numpy_array(values), Array(values)
    assert (ours.dtype, ours.shape, ours.stype) == (
        flowers.dtype,
        flowers.shape,
        flowers.stype,
    )
    assert ours.data == flowers.data
    decoded = record_to_arrays(ArrayRecord({"x": flowers}))["x"]
    expected = flowers.numpy()
    assert decoded.dtype == expected.dtype and decoded.shape == expected.shape
    assert np.array_equal(decoded, expected)
    assert decoded.flags.f_contiguous == expected.flags.f_contiguous
    decoded[...] = decoded  # writable, a copy of the reply's bytes
    assert decoded.flags.writeable


def test_seed_torch_starts_the_stream_torch_manual_seed_starts() -> None:
    seed_torch(11)
    ours = torch.rand(5)
    torch.manual_seed(11)
    assert torch.equal(ours, torch.rand(5))


def test_training_moves_the_model(settings: RunSettings) -> None:
    msg = instruction(settings, MessageType.TRAIN, 1)
    before = record_to_arrays(msg.content["arrays"])
    after = record_to_arrays(
        client_train(msg, node_context(0), settings).content["arrays"]
    )
    assert list(after) == list(before)
    assert any(not np.array_equal(before[k], after[k]) for k in before)


def test_evaluate_reports_examples_and_accuracy(settings: RunSettings) -> None:
    reply = client_evaluate(
        instruction(settings, MessageType.EVALUATE, 1), node_context(3), settings
    )
    metrics = reply.content[METRICS_KEY]
    assert metrics[NUM_EXAMPLES_KEY] > 0
    assert 0.0 <= metrics["eval-accuracy"] <= 1.0


def test_central_evaluation_reports_each_round(settings: RunSettings) -> None:
    seen: list[tuple[int, float, float]] = []
    evaluate_fn = central_evaluator(
        settings, lambda r, a, loss: seen.append((r, a, loss))
    )
    record = evaluate_fn(0, arrays_to_record(get_weights(initial_model(settings))))
    assert seen and seen[0][0] == 0
    assert record["accuracy"] == pytest.approx(seen[0][1])
    # An untrained 10-class model is near chance, well below a trained one.
    assert record["accuracy"] < 0.35


def test_simulated_keys_are_deterministic() -> None:
    a = simulated_signing_key(0, 5).sign(b"x")
    b = simulated_signing_key(0, 5).sign(b"x")
    c = simulated_signing_key(1, 5).sign(b"x")
    assert a == b != c
