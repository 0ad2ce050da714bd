"""DeltaMatrix: every lazy operation equals the same operation on the float64 matrix,
and replies are decoded without copying their bytes."""

from __future__ import annotations

import io
from itertools import pairwise

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from strategies.delta_matrix import DeltaMatrix
from strategies.records import ARRAYS_KEY, METRICS_KEY, NUM_EXAMPLES_KEY
from strategies.validation import ValidReply, all_finite, validate_reply

PIECES = (5, 0, 17, 3)


def make(seed: int = 0, rows: int = 6) -> tuple[DeltaMatrix, np.ndarray]:
    """A DeltaMatrix over float32 pieces and its float64 matrix, built by hand."""
    rng = np.random.default_rng(seed)
    models = rng.standard_normal((rows, sum(PIECES))).astype(np.float32)
    origin = rng.standard_normal(sum(PIECES))
    bounds = np.cumsum([0, *PIECES])
    sources = [[model[low:high] for low, high in pairwise(bounds)] for model in models]
    return DeltaMatrix(sources, origin), models.astype(np.float64) - origin


def test_blocks_and_columns_equal_the_matrix() -> None:
    lazy, dense = make()
    assert lazy.shape == dense.shape
    np.testing.assert_array_equal(lazy.to_array(), dense)
    np.testing.assert_array_equal(lazy[:, 3:21], dense[:, 3:21])
    np.testing.assert_array_equal(lazy[:, ::4], dense[:, ::4])
    chosen = [24, 0, 7, 7, 19]
    np.testing.assert_array_equal(lazy[:, chosen], dense[:, chosen])
    np.testing.assert_array_equal(lazy[2], dense[2])
    np.testing.assert_array_equal(np.asarray(lazy), dense)


def test_reductions_equal_the_matrix() -> None:
    lazy, dense = make(1)
    weights = np.random.default_rng(2).random(dense.shape[0])
    np.testing.assert_allclose(lazy.weighted_sum(weights), weights @ dense, rtol=1e-14)
    np.testing.assert_allclose(weights @ lazy, weights @ dense, rtol=1e-14)
    np.testing.assert_allclose(
        lazy.row_norms(), np.linalg.norm(dense, axis=1), rtol=1e-14
    )


def test_derived_matrices_compose_like_matrix_products() -> None:
    lazy, dense = make(3)
    rng = np.random.default_rng(4)
    factors = rng.random(6)
    mixing = rng.random((4, 6))
    subset = np.array([5, 0, 2])
    mask = np.array([True, False, True, True, False, True])
    cases = {
        "rows": (lazy.rows(subset), dense[subset]),
        "mask": (lazy[mask], dense[mask]),
        "scaled": (lazy.scaled(factors), dense * factors[:, None]),
        "mixed": (mixing @ lazy, mixing @ dense),
        "scaled then mixed then rows": (
            lazy.scaled(factors).mixed(mixing)[1:3],
            (mixing @ (dense * factors[:, None]))[1:3],
        ),
        "mixed then scaled": (
            lazy.mixed(mixing).scaled(factors[:4]),
            (mixing @ dense) * factors[:4, None],
        ),
    }
    for name, (derived, expected) in cases.items():
        np.testing.assert_allclose(
            derived.to_array(), expected, rtol=1e-13, err_msg=name
        )
        np.testing.assert_allclose(
            derived.row_norms(), np.linalg.norm(expected, axis=1), rtol=1e-13
        )
        np.testing.assert_allclose(
            derived.weighted_sum(np.ones(len(derived))),
            expected.sum(axis=0),
            rtol=1e-12,
            atol=1e-13,
            err_msg=name,
        )


def test_finiteness() -> None:
    lazy, _ = make()
    assert lazy.all_finite()
    with_nan = np.ones((2, 3))
    with_nan[1, 2] = np.nan
    assert not DeltaMatrix.of(with_nan).all_finite()
    # Finite float64 rows minus a finite origin can overflow: checked, not assumed.
    big = np.full((1, 2), 1.7e308)
    overflowing = DeltaMatrix([(big[0],)], np.array([-1.7e308, 0.0]), True)
    assert not overflowing.all_finite()
    assert DeltaMatrix([(big[0],)], None, True).all_finite()


def test_ufuncs_refuse_instead_of_copying() -> None:
    lazy, _ = make()
    with pytest.raises(TypeError):
        np.add(lazy, 1.0)


def test_all_finite_of_arrays() -> None:
    assert all_finite(np.ones(10, np.float32))
    assert not all_finite(np.array([1.0, np.inf], np.float32))
    assert not all_finite(np.array([np.inf, -np.inf], np.float32))
    assert not all_finite(np.array([1.0, np.nan]))
    # Finite float64 values whose sum overflows are still finite.
    assert all_finite(np.array([1.7e308, 1.7e308]))
    assert not all_finite(np.array([1.7e308, 1.7e308, np.nan]))


def reply_with(array: np.ndarray) -> Message:
    content = RecordDict(
        {
            ARRAYS_KEY: ArrayRecord({"w": Array(array)}),
            METRICS_KEY: MetricRecord({NUM_EXAMPLES_KEY: 3}),
        }
    )
    instruction = Message(RecordDict(), dst_node_id=1, message_type="train")
    return Message(content, reply_to=instruction)


@pytest.mark.parametrize("order", ["C", "F"])
def test_replies_are_decoded_in_place(order: str) -> None:
    values = np.asarray(np.arange(12, dtype=np.float32).reshape(3, 4), order=order)
    reply = reply_with(values)
    judged = validate_reply(reply, {"w": np.zeros((3, 4), np.float32)}, 1)
    assert isinstance(judged, ValidReply)
    decoded = judged.arrays["w"]
    np.testing.assert_array_equal(decoded, values)
    payload = reply.content.array_records[ARRAYS_KEY]["w"].data
    assert decoded.base is not None and not decoded.flags.writeable
    assert np.shares_memory(decoded, np.frombuffer(payload, np.uint8))


def test_truncated_payload_is_rejected() -> None:
    reply = reply_with(np.ones(8, np.float32))
    array = reply.content.array_records[ARRAYS_KEY]["w"]
    array.data = array.data[:-4]
    judged = validate_reply(reply, {"w": np.zeros(8, np.float32)}, 1)
    assert not isinstance(judged, ValidReply)
    assert "cannot be decoded" in judged.reason


def test_decoding_matches_numpy_load() -> None:
    values = np.random.default_rng(5).standard_normal((2, 3, 5))
    buffer = io.BytesIO()
    np.save(buffer, values)
    reply = reply_with(values)
    judged = validate_reply(reply, {"w": np.zeros_like(values)}, 1)
    assert isinstance(judged, ValidReply)
    np.testing.assert_array_equal(
        judged.arrays["w"], np.load(io.BytesIO(buffer.getvalue()))
    )
