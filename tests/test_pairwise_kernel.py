"""The one-sweep geometry kernel: centred-Gram distances against brute force, the
streamed weighted sum against the fixed-order kernel, and neither depending on the
number of threads."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest

from strategies import aggregators, delta_matrix
from strategies.aggregators import (
    pairwise_squared_distances,
    squared_norms_and_distances,
)
from strategies.delta_matrix import DeltaMatrix, accumulate_rows
from strategies.validation import all_finite


def exact_distances(matrix: np.ndarray) -> np.ndarray:
    """Exactly rounded ``Σ (x_ik − x_jk)²`` of every pair (plain double loop)."""
    rows = np.asarray(matrix, dtype=np.float64)
    n = rows.shape[0]
    truth = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            difference = rows[i] - rows[j]
            truth[i, j] = truth[j, i] = math.fsum(difference * difference)
    return truth


def relative_error(ours: np.ndarray, truth: np.ndarray) -> float:
    off = ~np.eye(truth.shape[0], dtype=bool)
    scale = np.where(truth[off] > 0.0, truth[off], 1.0)
    return float((np.abs(ours - truth)[off] / scale).max(initial=0.0))


@pytest.fixture
def narrow_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many spans, many groups and ragged last ones, even on small matrices."""
    monkeypatch.setattr(delta_matrix, "STREAM_MIN_COLUMNS", 7)
    monkeypatch.setattr(delta_matrix, "STREAM_ELEMENTS", 7)
    monkeypatch.setattr(delta_matrix, "GRAM_GROUP_SPANS", 3)
    monkeypatch.setattr(delta_matrix, "SUM_COLUMNS", 11)
    monkeypatch.setattr(delta_matrix, "GATHER_ELEMENTS", 40)


def batches() -> dict[str, np.ndarray]:
    """Batches where the plain Gram identity would cancel, and ones where not."""
    rng = np.random.default_rng(0)
    d = 3_000
    base = (10.0 + rng.standard_normal(d)).astype(np.float32)
    honest = base + (1e-3 * rng.standard_normal((9, d))).astype(np.float32)
    iid = rng.standard_normal((8, d)).astype(np.float32)
    scales = np.logspace(-6, 6, 7)[:, None] * rng.standard_normal((7, d))
    colluders = 100 * base + (1e-3 * rng.standard_normal((2, d))).astype(np.float32)
    return {
        "close, large norm": honest,
        "colluders far out": np.vstack([honest, colluders, -50 * base]),
        "one huge outlier": np.vstack([honest, 1e6 * base]),
        "duplicates": np.vstack([iid, iid[:3], iid[5:6]]),
        "independent": iid,
        "norms over 12 decades": scales,
        "two rows": iid[:2],
        "one row": iid[:1],
    }


@pytest.mark.parametrize("name", sorted(batches()))
@pytest.mark.usefixtures("narrow_blocks")
def test_distances_match_brute_force(name: str) -> None:
    matrix = batches()[name]
    truth = exact_distances(matrix)
    ours = pairwise_squared_distances(matrix)
    assert relative_error(ours, truth) < 1e-13, name
    np.testing.assert_array_equal(ours, ours.T)
    np.testing.assert_array_equal(np.diag(ours), 0.0)
    # Exact duplicates are at distance exactly 0 (their pair is recomputed).
    np.testing.assert_array_equal(ours[truth == 0.0], 0.0)


def test_the_refinement_is_what_keeps_far_colluders_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    matrix = batches()["colluders far out"]
    truth = exact_distances(matrix)
    recomputed: list[np.ndarray] = []
    original = aggregators.exact_pair_distances

    def spy(rows: DeltaMatrix, pairs: np.ndarray) -> np.ndarray:
        recomputed.append(pairs.copy())
        return original(rows, pairs)

    monkeypatch.setattr(aggregators, "exact_pair_distances", spy)
    assert relative_error(pairwise_squared_distances(matrix), truth) < 1e-13
    (pairs,) = recomputed
    assert [9, 10] in pairs.tolist()  # the two close far rows
    assert len(pairs) < 10, "honest pairs should not need recomputing"

    monkeypatch.setattr(aggregators, "CANCELLATION_RATIO", math.inf)
    without = pairwise_squared_distances(matrix)
    assert relative_error(without, truth) > 1e-6, "the case no longer cancels"


@pytest.mark.usefixtures("narrow_blocks")
def test_lazy_rows_match_brute_force_and_row_norms() -> None:
    rng = np.random.default_rng(1)
    pieces = (5, 0, 17, 3)
    models = (3.0 + rng.standard_normal((7, sum(pieces)))).astype(np.float32)
    origin = 3.0 + rng.standard_normal(sum(pieces))
    bounds = np.cumsum([0, *pieces])
    lazy = DeltaMatrix(
        [[model[low:high] for low, high in pairwise(bounds)] for model in models],
        origin,
    )
    dense = models.astype(np.float64) - origin
    subset = np.array([6, 0, 2, 3, 5])
    factors = rng.random(5)
    mixing = rng.random((4, 7))
    cases = {
        "all": (lazy, dense),
        "rows, scaled": (
            lazy.rows(subset).scaled(factors),
            dense[subset] * factors[:, None],
        ),
        "mixed": (lazy.mixed(mixing), mixing @ dense),
    }
    for name, (matrix, expected) in cases.items():
        squared_norms, distances = squared_norms_and_distances(matrix)
        assert relative_error(distances, exact_distances(expected)) < 1e-13, name
        truth = exact_squared_norms(expected)
        np.testing.assert_allclose(squared_norms, truth, rtol=1e-13, err_msg=name)
        np.testing.assert_allclose(
            matrix.row_norms(), np.sqrt(truth), rtol=1e-14, err_msg=name
        )


def exact_squared_norms(matrix: np.ndarray) -> np.ndarray:
    """Exactly rounded ``Σ x_ik²`` of every row."""
    return np.array([math.fsum(row * row) for row in np.asarray(matrix, np.float64)])


@pytest.mark.usefixtures("narrow_blocks")
def test_short_deltas_get_norms_from_their_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A delta far shorter than its distance to the centre (a free-rider's, 0)
    would cancel in the Gram identity: its norm is recomputed, exactly 0 for 0."""
    rng = np.random.default_rng(4)
    origin = 5.0 + rng.standard_normal(300)
    models = (origin + rng.standard_normal((6, 300))).astype(np.float32)
    models[2] = origin.astype(np.float32)  # a free-rider sends the model back
    origin = origin.astype(np.float32).astype(np.float64)
    models[4] = (origin + 1e-7 * rng.standard_normal(300)).astype(np.float32)
    lazy = DeltaMatrix([(row,) for row in models], origin)
    recounted: list[int] = []
    original = DeltaMatrix.row_norms

    def spy(self: DeltaMatrix) -> np.ndarray:
        recounted.append(self.shape[0])
        return original(self)

    monkeypatch.setattr(DeltaMatrix, "row_norms", spy)
    squared_norms, _ = lazy.norms_and_centred_gram(0)
    assert recounted == [2], "only the two short rows are recomputed"
    assert squared_norms[2] == 0.0
    truth = exact_squared_norms(models.astype(np.float64) - origin)
    np.testing.assert_allclose(squared_norms, truth, rtol=1e-13)


def test_sweep_and_sum_do_not_depend_on_the_thread_count(
    narrow_blocks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(2)
    models = rng.standard_normal((9, 500)).astype(np.float32)
    lazy = DeltaMatrix([(row,) for row in models], rng.standard_normal(500))
    coefficients = rng.random(9)
    results = []
    for workers in (1, 2, 5):
        monkeypatch.setattr(delta_matrix, "_WORKERS", workers)
        norms, gram = lazy.norms_and_centred_gram(4)
        results.append((norms, gram, lazy.weighted_sum(coefficients)))
    for norms, gram, total in results[1:]:
        np.testing.assert_array_equal(norms, results[0][0])
        np.testing.assert_array_equal(gram, results[0][1])
        np.testing.assert_array_equal(total, results[0][2])


@pytest.mark.usefixtures("narrow_blocks")
def test_weighted_sum_is_the_fixed_order_kernel_bit_for_bit() -> None:
    rng = np.random.default_rng(3)
    models = rng.standard_normal((6, 50)).astype(np.float32)
    lazy = DeltaMatrix(
        [(row[:20], row[20:]) for row in models], rng.standard_normal(50)
    )
    coefficients = rng.random(4)
    coefficients[1] = 0.0  # skipped rows stay skipped
    derived = lazy.rows([5, 1, 0, 3]).scaled(rng.random(4))
    block = derived.to_array()
    expected = accumulate_rows(np.empty(50), coefficients, block)
    np.testing.assert_array_equal(derived.weighted_sum(coefficients), expected)


def test_float32_sums_that_overflow_are_checked_value_by_value() -> None:
    values = np.full(1 << 12, 3e38, dtype=np.float32)  # finite, the sum overflows
    assert all_finite(values)
    values[-1] = np.inf
    assert not all_finite(values)
    values[-1] = np.nan
    assert not all_finite(values)
