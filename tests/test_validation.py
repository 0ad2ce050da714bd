"""Reply validation: each malformed kind is rejected with its reason, never raised."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from helpers_messages import (
    array_record,
    make_error_reply,
    make_evaluate_reply,
    make_reply,
    make_train_reply,
)

from strategies.records import (
    ARRAYS_KEY,
    IDENTITY_KEY,
    METRICS_KEY,
    NUM_EXAMPLES_KEY,
    update_sha256,
)
from strategies.validation import (
    RejectedReply,
    ValidEvaluation,
    ValidReply,
    validate_evaluate_reply,
    validate_reply,
)

REFERENCE: dict[str, np.ndarray] = {
    "conv.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
    "conv.bias": np.zeros(2, dtype=np.float32),
    "bn.num_batches_tracked": np.array(7, dtype=np.int64),
}


def client_model(offset: float = 0.5) -> dict[str, np.ndarray]:
    """A well-formed model: the reference shifted by ``offset``."""
    model = {name: value.copy() for name, value in REFERENCE.items()}
    model["conv.weight"] += np.float32(offset)
    model["conv.bias"] -= np.float32(offset)
    return model


def with_array(name: str, value: np.ndarray) -> dict[str, np.ndarray]:
    model = client_model()
    model[name] = value
    return model


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def good_reply(node_id: int = 3, identity: str | None = "peer-a") -> Message:
    return make_train_reply(client_model(), 40, node_id, identity, {"loss": 0.25})


def replace_content(
    **records: ArrayRecord | MetricRecord | ConfigRecord | None,
) -> Message:
    """A reply whose records are those of a good one, replaced/removed per keyword."""
    content: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = dict(
        good_reply().content.items()
    )
    for key, record in records.items():
        if record is None:
            content.pop(key, None)
        else:
            content[key] = record
    return make_reply(RecordDict(content), node_id=3)


def _with_bias_payload(payload: bytes) -> Message:
    """A good reply whose ``conv.bias`` carries ``payload`` as its ``.npy`` bytes."""
    return replace_content(
        **{
            ARRAYS_KEY: ArrayRecord(
                {
                    **array_record(client_model()),
                    "conv.bias": Array("float32", (2,), "numpy.ndarray", payload),
                }
            )
        }
    )


def contentless_reply() -> Message:
    """A reply with neither content nor error.

    The public constructor refuses to build one, but a reply inflated from the wire
    is not built by it; blank the content slot to stand in for such a message.
    """
    reply = good_reply()
    reply.__dict__["_content"] = None
    return reply


# ----------------------------------------------------------------- good replies


def test_good_reply_is_read_into_numpy() -> None:
    result = validate_reply(good_reply(), REFERENCE, server_round=2, authenticator=None)

    assert isinstance(result, ValidReply)
    assert (result.identity, result.node_id, result.num_examples) == ("peer-a", 3, 40)
    assert list(result.arrays) == list(REFERENCE)
    for name, expected in client_model().items():
        np.testing.assert_array_equal(result.arrays[name], expected)
        assert result.arrays[name].dtype == expected.dtype
    assert result.update_digest == update_sha256(client_model())
    assert result.metrics == {"loss": 0.25}


def test_missing_identity_falls_back_to_node_id() -> None:
    result = validate_reply(good_reply(node_id=77, identity=None), REFERENCE, 1, None)
    assert isinstance(result, ValidReply)
    assert result.identity == "node-77"


def test_integral_float_example_count_is_accepted() -> None:
    reply = make_train_reply(client_model(), 12.0, 3, "peer-a")
    result = validate_reply(reply, REFERENCE, 1, None)
    assert isinstance(result, ValidReply)
    assert result.num_examples == 12


def test_non_finite_and_list_metrics_are_dropped_not_fatal() -> None:
    metrics = {"loss": float("nan"), "acc": 0.5, "history": [0.1, 0.2]}
    reply = make_train_reply(client_model(), 5, 3, "peer-a", metrics)  # type: ignore[arg-type]
    result = validate_reply(reply, REFERENCE, 1, None)
    assert isinstance(result, ValidReply)
    assert result.metrics == {"acc": 0.5}


def test_without_reference_any_finite_numeric_model_passes() -> None:
    reply = make_train_reply({"x": np.ones((4, 4))}, 5, 3, "peer-a")
    result = validate_reply(reply, None, 1, None)
    assert isinstance(result, ValidReply)
    assert list(result.arrays) == ["x"]


# -------------------------------------------------------------- malformed kinds

MALFORMED: dict[str, tuple[Callable[[], Message], str]] = {
    "error reply": (lambda: make_error_reply(3, "out of memory"), "error reply: out"),
    "no content": (lambda: contentless_reply(), "no content"),
    "empty content": (
        lambda: make_reply(RecordDict(), 3),
        "exactly one ArrayRecord, found 0",
    ),
    "no ArrayRecord": (
        lambda: replace_content(**{ARRAYS_KEY: None}),
        "exactly one ArrayRecord, found 0",
    ),
    "two ArrayRecords": (
        lambda: replace_content(spare=array_record(client_model())),
        "exactly one ArrayRecord, found 2",
    ),
    "no MetricRecord": (
        lambda: replace_content(**{METRICS_KEY: None}),
        "exactly one MetricRecord, found 0",
    ),
    "two MetricRecords": (
        lambda: replace_content(extra=MetricRecord({NUM_EXAMPLES_KEY: 1})),
        "exactly one MetricRecord, found 2",
    ),
    "no example count": (
        lambda: replace_content(**{METRICS_KEY: MetricRecord({"loss": 1.0})}),
        "missing metric 'num-examples'",
    ),
    "zero examples": (
        lambda: make_train_reply(client_model(), 0, 3),
        "must be positive",
    ),
    "negative examples": (
        lambda: make_train_reply(client_model(), -5, 3),
        "must be positive",
    ),
    "fractional examples": (
        lambda: make_train_reply(client_model(), 2.5, 3),
        "not an integer",
    ),
    "NaN examples": (
        lambda: make_train_reply(client_model(), float("nan"), 3),
        "not finite",
    ),
    "infinite examples": (
        lambda: make_train_reply(client_model(), float("inf"), 3),
        "not finite",
    ),
    "list of examples": (
        lambda: replace_content(**{METRICS_KEY: MetricRecord({NUM_EXAMPLES_KEY: [1]})}),
        "is a list",
    ),
    "missing array": (
        lambda: make_train_reply(
            {k: v for k, v in client_model().items() if k != "conv.bias"}, 5, 3
        ),
        "missing arrays ['conv.bias']",
    ),
    "extra array": (
        lambda: make_train_reply(with_array("backdoor", np.ones(2)), 5, 3),
        "unexpected arrays ['backdoor']",
    ),
    "wrong shape": (
        lambda: make_train_reply(
            with_array("conv.weight", np.zeros((3, 2), np.float32)), 5, 3
        ),
        "'conv.weight' has shape (3, 2), expected (2, 3)",
    ),
    "wrong dtype": (
        lambda: make_train_reply(
            with_array("conv.weight", np.zeros((2, 3), np.float64)), 5, 3
        ),
        "'conv.weight' has dtype float64, expected float32",
    ),
    "NaN value": (
        lambda: make_train_reply(
            with_array("conv.bias", np.array([0.0, np.nan], np.float32)), 5, 3
        ),
        "'conv.bias' contains NaN or Inf",
    ),
    "Inf value": (
        lambda: make_train_reply(
            with_array("conv.weight", np.full((2, 3), -np.inf, np.float32)), 5, 3
        ),
        "'conv.weight' contains NaN or Inf",
    ),
    "undecodable payload": (
        lambda: replace_content(
            **{
                ARRAYS_KEY: ArrayRecord(
                    {
                        **array_record(client_model()),
                        "conv.bias": Array("float32", (2,), "numpy.ndarray", b"junk"),
                    }
                )
            }
        ),
        "'conv.bias' cannot be decoded",
    ),
    # The header's length field is read before the (cached) parse: a field that
    # points past the payload, or a version numpy has no reader for, is the
    # reply's fault and rejects it.
    "header cut short": (
        lambda: _with_bias_payload(npy_bytes(np.zeros(2, np.float32))[:20]),
        "'conv.bias' cannot be decoded",
    ),
    "unknown npy version": (
        lambda: _with_bias_payload(
            b"\x93NUMPY\x09\x00" + npy_bytes(np.zeros(2, np.float32))[8:]
        ),
        "'conv.bias' cannot be decoded",
    ),
    "metadata lies about shape": (
        lambda: replace_content(
            **{
                ARRAYS_KEY: ArrayRecord(
                    {
                        **array_record(client_model()),
                        "conv.bias": Array(
                            "float32",
                            (2,),
                            "numpy.ndarray",
                            npy_bytes(np.zeros(1, np.float32)),
                        ),
                    }
                )
            }
        ),
        "'conv.bias' has shape (1,), expected (2,)",
    ),
    "oversized payload": (
        lambda: replace_content(
            **{
                ARRAYS_KEY: ArrayRecord(
                    {
                        **array_record(client_model()),
                        "conv.bias": Array(
                            "float32",
                            (2,),
                            "numpy.ndarray",
                            npy_bytes(np.zeros(100_000, np.float32)),
                        ),
                    }
                )
            }
        ),
        "payload is larger than its shape allows",
    ),
    "identity id not a string": (
        lambda: replace_content(**{IDENTITY_KEY: ConfigRecord({"id": 5})}),
        "field 'id' is not a non-empty string",
    ),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_reply_is_rejected_with_its_reason(kind: str) -> None:
    build, expected_reason = MALFORMED[kind]
    result = validate_reply(build(), REFERENCE, server_round=1, authenticator=None)

    assert isinstance(result, RejectedReply), kind
    assert expected_reason in result.reason
    assert result.node_id == 3


def test_rejection_keeps_the_named_identity() -> None:
    reply = make_train_reply(client_model(), 0, 3, identity="peer-z")
    result = validate_reply(reply, REFERENCE, 1, None)
    assert isinstance(result, RejectedReply)
    assert result.identity == "peer-z"


def test_non_numeric_array_rejected_without_reference() -> None:
    reply = make_train_reply({"words": np.array(["a", "b"])}, 5, 3)
    result = validate_reply(reply, None, 1, None)
    assert isinstance(result, RejectedReply)
    assert "non-numeric dtype" in result.reason


# ------------------------------------------------------------- authentication


class RecordingAuthenticator:
    """Accepts or refuses, and remembers what it was asked."""

    def __init__(self, answer: str | None = None, fail: bool = False) -> None:
        self.answer = answer
        self.fail = fail
        self.calls: list[tuple[str, bytes | None, bytes | None, int, str]] = []

    def __call__(
        self,
        identity: str,
        public_key: bytes | None,
        signature: bytes | None,
        server_round: int,
        update_digest: str,
    ) -> str | None:
        self.calls.append(
            (identity, public_key, signature, server_round, update_digest)
        )
        if self.fail:
            raise ValueError("malformed key")
        return self.answer


def signed_reply() -> Message:
    return make_train_reply(
        client_model(), 5, 3, "peer-a", public_key=b"pk", signature=b"sig"
    )


def test_authenticator_sees_identity_fields_round_and_digest() -> None:
    authenticator = RecordingAuthenticator()
    result = validate_reply(signed_reply(), REFERENCE, 9, authenticator)

    assert isinstance(result, ValidReply)
    expected_call = ("peer-a", b"pk", b"sig", 9, update_sha256(client_model()))
    assert authenticator.calls == [expected_call]


def test_failed_authentication_is_rejected_with_digest() -> None:
    authenticator = RecordingAuthenticator(answer="bad signature")
    result = validate_reply(signed_reply(), REFERENCE, 9, authenticator)

    assert isinstance(result, RejectedReply)
    assert result.reason == "authentication failed: bad signature"
    assert result.update_digest == update_sha256(client_model())


def test_raising_authenticator_becomes_a_rejection() -> None:
    result = validate_reply(
        signed_reply(), REFERENCE, 9, RecordingAuthenticator(fail=True)
    )
    assert isinstance(result, RejectedReply)
    assert result.reason == "authentication failed (ValueError)"


def test_malformed_reply_is_not_authenticated() -> None:
    authenticator = RecordingAuthenticator()
    reply = make_train_reply(client_model(), -1, 3, "peer-a", signature=b"s")
    assert isinstance(validate_reply(reply, REFERENCE, 1, authenticator), RejectedReply)
    assert authenticator.calls == []


# ------------------------------------------------------------------ no mutation


def snapshot(message: Message) -> dict[str, object]:
    """Deep copy of everything observable in a reply's content."""
    content = message.content
    return {
        "keys": list(content.keys()),
        "arrays": {
            key: {name: (a.dtype, a.shape, a.data) for name, a in record.items()}
            for key, record in content.array_records.items()
        },
        "metrics": {k: dict(r) for k, r in content.metric_records.items()},
        "configs": {k: dict(r) for k, r in content.config_records.items()},
    }


@pytest.mark.parametrize(
    "reply_factory",
    [good_reply, MALFORMED["wrong shape"][0], MALFORMED["NaN value"][0]],
)
def test_validation_does_not_mutate_the_reply(
    reply_factory: Callable[[], Message],
) -> None:
    reply = reply_factory()
    before = copy.deepcopy(snapshot(reply))
    validate_reply(reply, REFERENCE, 1, None)
    assert snapshot(reply) == before


def test_returned_arrays_are_read_only_copies() -> None:
    reply = good_reply()
    result = validate_reply(reply, REFERENCE, 1, None)
    assert isinstance(result, ValidReply)
    with pytest.raises(ValueError, match="read-only"):
        result.arrays["conv.weight"][0, 0] = 99.0
    assert reply.content.array_records[ARRAYS_KEY]["conv.weight"].numpy()[0, 0] == 0.5


# ----------------------------------------------------------------- evaluation


def test_evaluation_reply_validation() -> None:
    good = validate_evaluate_reply(make_evaluate_reply(8, 4, {"accuracy": 0.75}))
    assert good == ValidEvaluation("node-4", 4, 8, {"accuracy": 0.75})

    for bad, reason in [
        (make_evaluate_reply(0, 4), "must be positive"),
        (make_error_reply(4, "boom"), "error reply: boom"),
        (make_reply(RecordDict(), 4), "exactly one MetricRecord, found 0"),
    ]:
        result = validate_evaluate_reply(bad)
        assert isinstance(result, RejectedReply)
        assert reason in result.reason


def test_inspected_digest_is_the_digest_and_sees_every_value_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import hashlib

    from strategies import records

    monkeypatch.setattr(records, "HASH_CHUNK_BYTES", 40)  # several chunks an array
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {
        "b.weight": rng.standard_normal((7, 9)).astype(np.float32),
        "a.bias": rng.standard_normal(3),
        "count": np.array(7, dtype=np.int64),
        "empty": np.zeros(0, dtype=np.float32),
    }
    seen: dict[str, list[np.ndarray]] = {}
    inspected = update_sha256(
        arrays, lambda name, chunk: seen.setdefault(name, []).append(chunk.copy())
    )
    assert inspected == update_sha256(arrays)
    reference = hashlib.sha256()  # the definition, written out once more
    for name in sorted(arrays):
        value = np.atleast_1d(arrays[name])  # a 0-d array is hashed as shape (1,)
        reference.update(name.encode() + b"\0" + value.dtype.str.encode() + b"\0")
        reference.update(repr(value.shape).encode() + b"\0" + value.tobytes())
    assert inspected == reference.hexdigest()
    assert len(seen["b.weight"]) == 7  # 63 float32 values, 10 a chunk
    for name, value in arrays.items():
        chunks = seen.get(name, [])
        joined = np.concatenate(chunks) if chunks else np.zeros(0, value.dtype)
        np.testing.assert_array_equal(joined, value.reshape(-1))


def test_a_nan_in_the_last_chunk_rejects_the_reply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from strategies import records

    monkeypatch.setattr(records, "HASH_CHUNK_BYTES", 8)
    weight = client_model()["conv.weight"].copy()
    weight[-1, -1] = np.nan
    result = validate_reply(
        make_train_reply(with_array("conv.weight", weight), 5, 3), REFERENCE, 1
    )
    assert isinstance(result, RejectedReply)
    assert result.reason == "array 'conv.weight' contains NaN or Inf"
