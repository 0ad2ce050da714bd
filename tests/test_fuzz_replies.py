"""Fuzzing: malformed replies mixed with good ones never abort a round.

Hypothesis draws a round of replies, each either well-formed (small or huge update)
or broken in one of many ways. For every registered strategy the round must not
raise, every malformed reply must be reported rejected, no reply may be mutated,
and the new global model must be exactly what the strategy's rule gives on the
well-formed replies alone.

Register further strategies in :data:`FUZZED` (name → :class:`FuzzCase`).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from helpers_messages import (
    array_record,
    make_error_reply,
    make_reply,
    make_train_reply,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strategies import aggregators
from strategies.base import ScreenedFedAvg
from strategies.bulyan import Bulyan
from strategies.centered_clipping import CenteredClipping
from strategies.geometric_median import GeometricMedian
from strategies.krum import Krum, MultiKrum
from strategies.median import Median
from strategies.records import ARRAYS_KEY, METRICS_KEY, InMemoryStore, Verdict
from strategies.trimmed_mean import TrimmedMean

REFERENCE: dict[str, np.ndarray] = {
    "dense.weight": np.linspace(-0.5, 0.5, 8, dtype=np.float32).reshape(2, 4),
    "dense.bias": np.array([0.1, -0.1], dtype=np.float32),
    "steps": np.array(3, dtype=np.int64),
}

WELL_FORMED = ("good", "huge")
"""Kinds that pass validation (a huge norm is for detectors, not validation)."""
MALFORMED = (
    "nan",
    "inf",
    "wrong_shape",
    "wrong_dtype",
    "missing_array",
    "extra_array",
    "no_array_record",
    "two_array_records",
    "no_metric_record",
    "zero_examples",
    "negative_examples",
    "fractional_examples",
    "nan_examples",
    "undecodable",
    "error",
)


@dataclass(frozen=True)
class FuzzCase:
    """A strategy under fuzzing and the rule it must reproduce.

    ``expected_delta(deltas, num_examples)`` gets the well-formed replies' flat
    float64 deltas ``(n, d)`` and example counts; it returns the aggregate delta,
    or ``None`` when the rule cannot aggregate so few replies. ``tolerance`` is
    relative to the largest expected value (0 demands bit-identical models).
    """

    make_strategy: Callable[[], ScreenedFedAvg]
    expected_delta: Callable[[np.ndarray, np.ndarray], np.ndarray | None]
    tolerance: float = 0.0


def fedavg_delta(deltas: np.ndarray, num_examples: np.ndarray) -> np.ndarray:
    """Example-weighted mean, written as a sum of scaled rows (not a matmul)."""
    total = float(num_examples.sum())
    return sum(
        (float(n) / total) * row for row, n in zip(deltas, num_examples, strict=True)
    )


def pure(
    rule: aggregators.AggregationRule, minimum_rows: int = 1
) -> Callable[[np.ndarray, np.ndarray], np.ndarray | None]:
    """Expected delta of an unweighted rule; ``None`` below its minimum batch size."""

    def expected(deltas: np.ndarray, num_examples: np.ndarray) -> np.ndarray | None:
        return rule(deltas) if len(deltas) >= minimum_rows else None

    return expected


# Final models are float32, so 1e-6 (a few ulps) absorbs float64 summation order.
FUZZED: dict[str, FuzzCase] = {
    "ScreenedFedAvg": FuzzCase(ScreenedFedAvg, fedavg_delta, tolerance=1e-6),
    "Median": FuzzCase(Median, pure(aggregators.CoordinateMedian()), 1e-6),
    "TrimmedMean": FuzzCase(
        lambda: TrimmedMean(beta=0.2), pure(aggregators.TrimmedMean(0.2)), 1e-6
    ),
    "Krum": FuzzCase(
        lambda: Krum(num_malicious_nodes=1), pure(aggregators.Krum(f=1), 5), 1e-6
    ),
    "MultiKrum": FuzzCase(
        lambda: MultiKrum(num_malicious_nodes=1, num_nodes_to_select=2),
        pure(aggregators.MultiKrum(f=1, m=2), 5),
        1e-6,
    ),
    "Bulyan": FuzzCase(
        lambda: Bulyan(num_malicious_nodes=1), pure(aggregators.Bulyan(f=1), 7), 1e-6
    ),
    "GeometricMedian": FuzzCase(
        GeometricMedian, pure(aggregators.GeometricMedian()), 1e-6
    ),
    "CenteredClipping": FuzzCase(
        lambda: CenteredClipping(tau=1.0, iterations=2),
        pure(aggregators.CenteredClipping(tau=1.0, iterations=2)),
        1e-6,
    ),
}


# ------------------------------------------------------------- building replies


def perturbed(seed: int, scale: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    model = {name: value.copy() for name, value in REFERENCE.items()}
    for name in ("dense.weight", "dense.bias"):
        noise = scale * rng.standard_normal(model[name].shape)
        model[name] = (model[name] + noise).astype(np.float32)
    model["steps"] = np.array(3 + seed % 5, dtype=np.int64)
    return model


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def build_reply(kind: str, examples: int, seed: int, node_id: int) -> Message:
    """One reply of the given kind from a fresh identity."""
    identity = f"peer-{node_id}"
    model = perturbed(seed, 1e30 if kind == "huge" else 0.1)
    count: float = examples
    metrics = {"loss": float(seed % 7)}
    if kind == "nan":
        model["dense.weight"][seed % 2, seed % 4] = np.nan
    elif kind == "inf":
        model["dense.bias"][seed % 2] = -np.inf
    elif kind == "wrong_shape":
        model["dense.weight"] = model["dense.weight"].reshape(4, 2)
    elif kind == "wrong_dtype":
        model["dense.bias"] = model["dense.bias"].astype(np.float64)
    elif kind == "missing_array":
        del model["dense.bias"]
    elif kind == "extra_array":
        model["hidden"] = np.zeros(3, dtype=np.float32)
    elif kind == "zero_examples":
        count = 0
    elif kind == "negative_examples":
        count = -examples
    elif kind == "fractional_examples":
        count = examples + 0.5
    elif kind == "nan_examples":
        count = float("nan")
    elif kind == "error":
        return make_error_reply(node_id, "fuzzed failure")
    reply = make_train_reply(model, count, node_id, identity, metrics)
    records = dict(reply.content.items())
    if kind == "no_array_record":
        del records[ARRAYS_KEY]
    elif kind == "two_array_records":
        records["copy"] = array_record(model)
    elif kind == "no_metric_record":
        del records[METRICS_KEY]
    elif kind == "undecodable":
        arrays = dict(array_record(model).items())
        arrays["dense.bias"] = Array("float32", (2,), "numpy.ndarray", b"\x93NUMPY?")
        records[ARRAYS_KEY] = ArrayRecord(arrays)
    else:
        return reply
    return make_reply(RecordDict(records), node_id)


round_specs = st.lists(
    st.tuples(
        st.sampled_from(WELL_FORMED + MALFORMED),
        st.integers(min_value=1, max_value=10_000),
        st.integers(min_value=0, max_value=2**31),
    ),
    min_size=1,
    max_size=12,
)


# ---------------------------------------------------------------------- checks


def array_bytes(replies: list[Message]) -> list[dict[str, dict[str, bytes]]]:
    """Everything an in-place change to a reply's arrays would alter."""
    return [
        {
            key: {name: array.data for name, array in record.items()}
            for key, record in reply.content.array_records.items()
        }
        if reply.has_content()
        else {}
        for reply in replies
    ]


def expected_model(delta: np.ndarray) -> dict[str, np.ndarray]:
    """Reference + delta, cast back per array, computed independently of base.py."""
    result: dict[str, np.ndarray] = {}
    offset = 0
    for name, like in REFERENCE.items():
        size = like.size
        values = like.astype(np.float64).ravel() + delta[offset : offset + size]
        if like.dtype.kind == "i":
            values = np.rint(values)
        result[name] = values.astype(like.dtype).reshape(like.shape)
        offset += size
    return result


def check_round(case: FuzzCase, spec: list[tuple[str, int, int]]) -> None:
    replies = [
        build_reply(kind, examples, seed, node_id=index + 1)
        for index, (kind, examples, seed) in enumerate(spec)
    ]
    before = array_bytes(replies)
    store = InMemoryStore()
    strategy = case.make_strategy()
    strategy.recorder = store
    strategy.set_reference(REFERENCE)

    arrays, metrics = strategy.aggregate_train(1, replies)

    assert array_bytes(replies) == before, "a reply was mutated"
    (report,) = store.rounds
    assert len(report.contributions) == len(spec)
    for (kind, _, _), contribution in zip(spec, report.contributions, strict=True):
        if kind in MALFORMED:
            assert contribution.verdict is Verdict.REJECTED
            assert contribution.weight == 0.0 and contribution.reason

    well_formed = [(k, n, s) for k, n, s in spec if k in WELL_FORMED]
    expected = None
    if well_formed:
        origin = np.concatenate(
            [value.astype(np.float64).ravel() for value in REFERENCE.values()]
        )
        deltas = np.stack(
            [
                np.concatenate(
                    [
                        value.astype(np.float64).ravel()
                        for value in perturbed(s, 1e30 if k == "huge" else 0.1).values()
                    ]
                )
                - origin
                for k, _, s in well_formed
            ]
        )
        counts = np.array([n for _, n, _ in well_formed], dtype=np.int64)
        expected = case.expected_delta(deltas, counts)

    if expected is None:
        assert arrays is None and metrics is None
        assert report.aggregate_sha256 is None
        return
    assert arrays is not None and metrics is not None
    result = {name: array.numpy() for name, array in arrays.items()}
    for name, value in expected_model(expected).items():
        assert result[name].dtype == value.dtype and result[name].shape == value.shape
        scale = max(1.0, float(np.max(np.abs(value))))
        np.testing.assert_allclose(
            result[name], value, rtol=case.tolerance, atol=case.tolerance * scale
        )
    assert abs(sum(c.weight for c in report.contributions) - 1.0) < 1e-9


@pytest.mark.parametrize(
    "max_examples", [150, pytest.param(10_000, marks=pytest.mark.slow)]
)
@pytest.mark.parametrize("name", sorted(FUZZED))
def test_malformed_replies_never_abort_and_good_ones_aggregate(
    name: str, max_examples: int
) -> None:
    case = FUZZED[name]

    @settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=max_examples <= 1_000,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(spec=round_specs)
    def fuzz(spec: list[tuple[str, int, int]]) -> None:
        check_round(case, spec)

    fuzz()


def test_generator_covers_every_kind() -> None:
    """Each kind builds, and validation rejects exactly the malformed ones."""
    for kind in WELL_FORMED + MALFORMED:
        store = InMemoryStore()
        strategy = ScreenedFedAvg(recorder=store)
        strategy.set_reference(REFERENCE)
        strategy.aggregate_train(1, [build_reply(kind, 5, 11, node_id=1)])
        (contribution,) = store.rounds[0].contributions
        assert (contribution.verdict is Verdict.REJECTED) == (kind in MALFORMED), kind


def test_metric_record_kind_is_checked_separately() -> None:
    """A reply whose only MetricRecord lacks the count is malformed too."""
    reply = make_reply(
        RecordDict(
            {
                ARRAYS_KEY: array_record(perturbed(1, 0.1)),
                METRICS_KEY: MetricRecord({"loss": 1.0}),
            }
        ),
        node_id=4,
    )
    store = InMemoryStore()
    strategy = ScreenedFedAvg(recorder=store)
    strategy.set_reference(REFERENCE)
    assert strategy.aggregate_train(1, [reply]) == (None, None)
    assert "missing metric" in store.rounds[0].contributions[0].reason
