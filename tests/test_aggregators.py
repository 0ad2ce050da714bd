"""Tests of the exact robust aggregation rules in :mod:`strategies.aggregators`.

Each rule is checked three ways: tiny cases computed by hand, a brute-force reference
written independently in plain Python (double loops, sorting lists), and properties
(permutation invariance, translation equivariance, robustness to far outliers).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from flwr.serverapp.strategy.multikrum import compute_distances, select_multikrum
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import aggregators
from strategies.aggregators import (
    AggregationRule,
    Bulyan,
    CenteredClipping,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    Mean,
    MultiKrum,
    SelectionRule,
    TrimmedMean,
    as_update_matrix,
    pairwise_squared_distances,
    trimmed_count,
)

# ------------------------------------------------------------------------------------
# Brute-force references (plain Python, no vectorisation shared with the code)
# ------------------------------------------------------------------------------------


def brute_squared_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Σ (a_k − b_k)² with exactly rounded summation."""
    return math.fsum((float(x) - float(y)) ** 2 for x, y in zip(a, b, strict=True))


def brute_krum_scores(rows: list[np.ndarray], f: int) -> list[float]:
    n = len(rows)
    scores = []
    for i in range(n):
        others = sorted(
            brute_squared_distance(rows[i], rows[j]) for j in range(n) if j != i
        )
        # Krum's n − f − 2 neighbours, clamped to [1, n − 1] for Bulyan's small sets.
        scores.append(math.fsum(others[: min(n - 1, max(1, n - f - 2))]))
    return scores


def brute_krum_order(rows: list[np.ndarray], f: int) -> list[int]:
    """Indices by (Krum score, total squared distance to all others, index)."""
    scores = brute_krum_scores(rows, f)
    totals = [math.fsum(brute_squared_distance(a, b) for b in rows) for a in rows]
    return sorted(range(len(rows)), key=lambda i: (scores[i], totals[i], i))


def brute_bulyan(matrix: np.ndarray, f: int) -> np.ndarray:
    """El Mhamdi et al. 2018, Algorithm 1, step by step."""
    remaining = [matrix[i] for i in range(matrix.shape[0])]
    selected: list[np.ndarray] = []
    theta = matrix.shape[0] - 2 * f
    while len(selected) < theta:
        winner = brute_krum_order(remaining, f)[0]
        selected.append(remaining.pop(winner))
    beta = theta - 2 * f
    result = []
    for k in range(matrix.shape[1]):
        column = [float(row[k]) for row in selected]
        ordered = sorted(column)
        middle = len(ordered) // 2
        median = (
            ordered[middle]
            if len(ordered) % 2
            else (ordered[middle - 1] + ordered[middle]) / 2
        )
        closest = sorted(column, key=lambda value: abs(value - median))[:beta]
        result.append(sum(closest) / beta)
    return np.array(result)


def brute_trimmed_mean(matrix: np.ndarray, trim: int) -> np.ndarray:
    result = []
    for k in range(matrix.shape[1]):
        column = sorted(float(value) for value in matrix[:, k])
        kept = column[trim : len(column) - trim]
        result.append(sum(kept) / len(kept))
    return np.array(result)


def honest_with_outliers(
    seed: int, n: int, f: int, d: int, outlier: float = 1e6
) -> tuple[np.ndarray, np.ndarray]:
    """``n − f`` honest rows near 1, then ``f`` rows at ``outlier``: (all, honest)."""
    rng = np.random.default_rng(seed)
    honest = 1.0 + 0.1 * rng.standard_normal((n - f, d))
    attackers = np.full((f, d), outlier)
    return np.vstack([honest, attackers]), honest


# Rules with the parameters used by the property tests (n = 11 rows, f = 2).
RULES: dict[str, AggregationRule] = {
    "mean": Mean(),
    "median": CoordinateMedian(),
    "trimmed": TrimmedMean(0.2),
    "krum": Krum(2),
    "multikrum": MultiKrum(2, 5),
    "bulyan": Bulyan(2),
    "geomed": GeometricMedian(nu=1e-9, max_iterations=500, tolerance=1e-12),
    "clipping": CenteredClipping(tau=0.5, iterations=3),
}
ROBUST = [name for name in RULES if name != "mean"]


# ------------------------------------------------------------------------------------
# Input handling
# ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(RULES))
def test_numpy_torch_and_sequence_inputs_agree(name: str) -> None:
    rng = np.random.default_rng(1)
    matrix = rng.standard_normal((11, 7)).astype(np.float32)
    rule = RULES[name]
    from_numpy = rule(matrix)
    from_torch = rule(torch.from_numpy(matrix.copy()))
    from_list = rule([torch.from_numpy(row.copy()) for row in matrix])
    from_rows = rule(list(matrix))
    # float32 → float64 is exact, so reading as float64 up front changes nothing.
    from_float64 = rule(matrix.astype(np.float64))
    assert from_numpy.dtype == np.float64
    assert from_numpy.shape == (7,)
    np.testing.assert_array_equal(from_numpy, from_torch)
    np.testing.assert_array_equal(from_numpy, from_list)
    np.testing.assert_array_equal(from_numpy, from_rows)
    np.testing.assert_array_equal(from_numpy, from_float64)


@pytest.mark.parametrize("name", list(RULES))
def test_column_blocking_does_not_change_results(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    matrix = np.random.default_rng(14).standard_normal((11, 40))
    whole = RULES[name](matrix)
    # 11 rows, 30 values per block → blocks of 2 columns.
    monkeypatch.setattr(aggregators, "BLOCK_ELEMENTS", 30)
    np.testing.assert_allclose(RULES[name](matrix), whole, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", list(RULES))
def test_inputs_are_never_modified(name: str) -> None:
    rng = np.random.default_rng(2)
    matrix = rng.standard_normal((11, 6))
    weights = rng.uniform(0.5, 2.0, 11)
    original, original_weights = matrix.copy(), weights.copy()
    # Read-only buffers turn any in-place write into an immediate error.
    matrix.flags.writeable = False
    weights.flags.writeable = False
    rule = RULES[name]
    result = rule(matrix, weights) if rule.supports_weights else rule(matrix)
    np.testing.assert_array_equal(matrix, original)
    np.testing.assert_array_equal(weights, original_weights)
    # The result is a fresh array, not a view into the caller's rows.
    assert not np.shares_memory(result, matrix)


def test_torch_input_tensor_is_untouched() -> None:
    tensor = torch.tensor([[1.0, 2.0], [3.0, 5.0], [4.0, 4.0]])
    before = tensor.clone()
    CenteredClipping(tau=0.1, iterations=4)(tensor)
    Bulyan(0)(tensor)
    assert torch.equal(tensor, before)


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        ([], "empty"),
        (np.zeros((0, 3)), "non-empty"),
        (np.zeros(3), "two-dimensional"),
        (np.zeros((2, 2, 2)), "two-dimensional"),
        ([np.zeros(2), np.zeros(3)], "different lengths"),
        ([np.zeros((2, 2))], "1-D vectors"),
        (np.array([[1.0, np.nan]]), "NaN or infinite"),
        (np.array([[1.0, np.inf]]), "NaN or infinite"),
    ],
)
def test_malformed_updates_are_refused(updates: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        as_update_matrix(updates)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1.0, 2.0], r"shape \(3,\)"),
        ([1.0, -1.0, 2.0], "non-negative"),
        ([0.0, 0.0, 0.0], "all zero"),
        ([1.0, np.nan, 1.0], "NaN or infinite"),
    ],
)
def test_bad_weights_are_refused(weights: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Mean()(np.eye(3), weights)


@pytest.mark.parametrize("rule", [CoordinateMedian(), TrimmedMean(0.1), Bulyan(0)])
def test_unweighted_rules_refuse_weights_instead_of_ignoring_them(
    rule: AggregationRule,
) -> None:
    assert not rule.supports_weights
    with pytest.raises(ValueError, match="no weighted form"):
        rule(np.eye(3), [1.0, 1.0, 1.0])


def test_every_rule_satisfies_the_protocols() -> None:
    for rule in RULES.values():
        assert isinstance(rule, AggregationRule)
    for rule in (Krum(1), MultiKrum(1, 2), Bulyan(1)):
        assert isinstance(rule, SelectionRule)


# ------------------------------------------------------------------------------------
# Exact distances
# ------------------------------------------------------------------------------------


def test_pairwise_distances_match_a_double_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A tiny block size forces many column blocks, including a ragged last one.
    monkeypatch.setattr(aggregators, "BLOCK_ELEMENTS", 13)
    rng = np.random.default_rng(3)
    matrix = rng.standard_normal((6, 23))
    distances = pairwise_squared_distances(matrix)
    for i in range(6):
        for j in range(6):
            expected = brute_squared_distance(matrix[i], matrix[j])
            assert distances[i, j] == pytest.approx(expected, rel=1e-14, abs=0)
    np.testing.assert_array_equal(distances, distances.T)
    np.testing.assert_array_equal(np.diag(distances), 0.0)


def test_distances_of_close_large_norm_updates_are_exact_unlike_flower() -> None:
    """Flower 1.41 computes ‖a‖² + ‖b‖² − 2a·b in float32: all digits cancel.

    Late in training, updates share a large common part and differ by little. Here
    the common part has norm² ≈ 5·10⁶ and the true squared distances are ≈ 0.1, so a
    float32 Gram product (ulp ≈ 0.5 at 5·10⁶) cannot represent them at all; measured
    on this case: relative error ≈ 10–100 (i.e. 1 000–10 000 %), negative
    "distances" and a non-zero diagonal. Ours match the exactly rounded truth.
    """
    rng = np.random.default_rng(0)
    d = 50_000
    base = (10.0 + rng.standard_normal(d)).astype(np.float32)
    noise = (1e-3 * rng.standard_normal((5, d))).astype(np.float32)
    updates = base + noise
    truth = np.array([[brute_squared_distance(a, b) for b in updates] for a in updates])
    off_diagonal = ~np.eye(5, dtype=bool)

    ours = pairwise_squared_distances(updates)
    our_error = np.abs(ours - truth)[off_diagonal] / truth[off_diagonal]
    assert our_error.max() < 1e-12

    flower = compute_distances([ArrayRecord({"w": Array(row)}) for row in updates])
    flower_error = np.abs(flower - truth)[off_diagonal] / truth[off_diagonal]
    assert flower_error.max() > 1.0, "Flower's float32 Gram distances became exact?"


# ------------------------------------------------------------------------------------
# Mean, median, trimmed mean
# ------------------------------------------------------------------------------------


def test_weighted_mean_by_hand() -> None:
    updates = np.array([[0.0, 0.0], [2.0, 4.0]])
    # (1·[0, 0] + 3·[2, 4]) / 4 = [1.5, 3]
    np.testing.assert_allclose(Mean()(updates, [1, 3]), [1.5, 3.0])
    np.testing.assert_allclose(Mean()(updates), [1.0, 2.0])


def test_coordinate_median_by_hand() -> None:
    odd = np.array([[1.0, 10.0], [2.0, -5.0], [100.0, 0.0]])
    np.testing.assert_array_equal(CoordinateMedian()(odd), [2.0, 0.0])
    even = np.array([[1.0], [2.0], [4.0], [100.0]])
    np.testing.assert_array_equal(CoordinateMedian()(even), [3.0])


def test_trimmed_mean_by_hand() -> None:
    updates = np.array([[1.0, -50.0], [2.0, 0.0], [3.0, 1.0], [4.0, 2.0], [100.0, 3.0]])
    # β = 0.2, n = 5 → drop one value from each end of every column.
    np.testing.assert_allclose(TrimmedMean(0.2)(updates), [3.0, 1.0])
    np.testing.assert_allclose(TrimmedMean(0.0)(updates), updates.mean(axis=0))


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.lists(st.integers(-1000, 1000), min_size=3, max_size=3),
        min_size=1,
        max_size=12,
    ),
    beta=st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.3, 0.49]),
)
def test_trimmed_mean_matches_sorting_each_column(
    values: list[list[int]], beta: float
) -> None:
    matrix = np.array(values, dtype=np.float64)
    trim = math.floor(round(beta * len(values), 9))
    expected = brute_trimmed_mean(matrix, trim)
    np.testing.assert_allclose(TrimmedMean(beta)(matrix), expected, rtol=1e-12)


def test_trimmed_count_is_the_exact_floor() -> None:
    # 0.29 * 100 == 28.999999999999996 in binary floating point.
    assert trimmed_count(0.29, 100) == 29
    assert trimmed_count(0.1, 50) == 5
    assert trimmed_count(0.1, 9) == 0
    assert trimmed_count(0.49, 3) == 1


def test_trimmed_mean_agrees_with_flower_where_both_are_defined() -> None:
    rng = np.random.default_rng(4)
    matrix = rng.standard_normal((10, 8))
    np.testing.assert_allclose(TrimmedMean(0.2)(matrix), trim_mean(matrix, 0.2))


@pytest.mark.parametrize("beta", [-0.1, 0.5, 0.7, float("nan"), "0.1"])
def test_trimmed_mean_refuses_bad_beta(beta: object) -> None:
    with pytest.raises(ValueError, match="beta must lie in"):
        TrimmedMean(beta)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------
# Krum and Multi-Krum
# ------------------------------------------------------------------------------------


def test_krum_by_hand() -> None:
    # Points 0, 1, 2, 10 on a line; n = 4, f = 0 → 2 neighbours each.
    # Scores: 0 → 1 + 4 = 5; 1 → 1 + 1 = 2; 2 → 1 + 4 = 5; 10 → 64 + 81 = 145.
    updates = np.array([[0.0], [1.0], [2.0], [10.0]])
    np.testing.assert_array_equal(MultiKrum(0, 1).scores(updates), [5, 2, 5, 145])
    np.testing.assert_array_equal(Krum(0).select(updates), [1])
    np.testing.assert_array_equal(Krum(0)(updates), [1.0])
    # m = 2: indices 0 and 2 tie at 5; the tie goes to the smaller total squared
    # distance to everyone: 0 → 1 + 4 + 100 = 105, 2 → 4 + 1 + 64 = 69 → index 2.
    np.testing.assert_array_equal(MultiKrum(0, 2).select(updates), [1, 2])
    np.testing.assert_array_equal(MultiKrum(0, 2)(updates), [1.5])
    # Weights renormalise over the kept rows only: (3·1 + 5·2) / 8.
    np.testing.assert_array_equal(MultiKrum(0, 2)(updates, [1, 3, 5, 7]), [13 / 8])


def test_krum_counts_a_duplicate_as_a_neighbour_not_as_itself() -> None:
    # Rows 0 and 1 are identical. With f = 1, n = 5 → 2 neighbours.
    # Row 0: others at 0 (its twin), 1, 4, 100 → score 0 + 1 = 1 (same for row 1).
    # Row 2 (value 1): 1, 1, 1, 81 → 2; row 3: 1, 4, 4, 64 → 5; row 4: 64 + 81.
    # Excluding "the first sorted entry" instead of the diagonal would give row 0
    # the score 1 + 4 = 5.
    updates = np.array([[0.0], [0.0], [1.0], [2.0], [10.0]])
    scores = MultiKrum(1, 1).scores(updates)
    np.testing.assert_array_equal(scores, [1.0, 1.0, 2.0, 5.0, 145.0])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("n", "f"), [(7, 2), (9, 1), (12, 4)])
def test_krum_matches_brute_force(seed: int, n: int, f: int) -> None:
    matrix, _ = honest_with_outliers(seed, n, f, d=5, outlier=3.0)
    matrix = matrix + np.random.default_rng(seed + 100).standard_normal(matrix.shape)
    rows = list(matrix)
    scores = brute_krum_scores(rows, f)
    np.testing.assert_allclose(MultiKrum(f, 1).scores(matrix), scores, rtol=1e-13)
    order = brute_krum_order(rows, f)
    np.testing.assert_array_equal(Krum(f)(matrix), matrix[order[0]])
    m = n - f
    np.testing.assert_array_equal(MultiKrum(f, m).select(matrix), order[:m])
    np.testing.assert_allclose(
        MultiKrum(f, m)(matrix), np.mean(matrix[order[:m]], axis=0), rtol=1e-13
    )


def test_multikrum_selects_what_flower_selects_on_well_separated_data() -> None:
    rng = np.random.default_rng(5)
    matrix = rng.standard_normal((9, 4))
    matrix[[2, 6]] += 50.0
    contents = [
        RecordDict(
            {
                "arrays": ArrayRecord({"w": Array(row)}),
                "metrics": MetricRecord({"num-examples": 1}),
            }
        )
        for row in matrix
    ]
    chosen = select_multikrum(contents, num_malicious_nodes=2, num_nodes_to_select=4)
    flower_indices = [contents.index(content) for content in chosen]
    np.testing.assert_array_equal(MultiKrum(2, 4).select(matrix), flower_indices)


def test_krum_refuses_too_few_updates_and_bad_parameters() -> None:
    with pytest.raises(ValueError, match=r"n >= 2f \+ 3 = 7 updates, got 6"):
        Krum(2)(np.zeros((6, 2)))
    with pytest.raises(ValueError, match="cannot keep m=5 of only 4"):
        MultiKrum(0, 5)(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="f must be at least 0"):
        Krum(-1)
    with pytest.raises(ValueError, match="m must be an integer"):
        MultiKrum(0, 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exactly one update"):
        Krum(0, 2)
    with pytest.raises(ValueError, match="selected has weight zero"):
        Krum(0)(np.array([[0.0], [1.0], [2.0]]), [1.0, 0.0, 1.0])


# ------------------------------------------------------------------------------------
# Bulyan
# ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("n", "f"), [(7, 1), (11, 2), (12, 2), (3, 0)])
def test_bulyan_matches_the_algorithm_run_step_by_step(
    seed: int, n: int, f: int
) -> None:
    matrix, _ = honest_with_outliers(seed, n, f, d=6, outlier=4.0)
    matrix = matrix + np.random.default_rng(seed + 7).standard_normal(matrix.shape)
    np.testing.assert_allclose(Bulyan(f)(matrix), brute_bulyan(matrix, f), rtol=1e-13)


def test_bulyan_by_hand() -> None:
    # 1-D, n = 7, f = 1 → θ = 5 Krum picks, then β = 3 values kept per coordinate.
    # values: idx 0..6 = −0.5, 1, 2, 4, 7, 50, −40
    # pick 1, |R| = 7, 4 neighbours: −0.5: 85, 1: 48.25, 2: 36.25, 4: 42.25,
    #   7: 126.25, outliers > 1000 → idx 2
    # pick 2, |R| = 6, 3 neighbours: −0.5: 78.75, 1: 47.25, 4: 38.25, 7: 101.25 → idx 3
    # pick 3, |R| = 5, 2 neighbours: −0.5: 58.5, 1: 38.25, 7: 92.25 → idx 1
    # pick 4, |R| = 4, 1 neighbour: −0.5 and 7 are mutual nearest (56.25) → tie;
    #   totals: −0.5: 56.25 + 2550.25 + 1560.25 = 4166.75, 7: 56.25 + 1849 + 2209
    #   = 4114.25 → idx 4
    # pick 5, |R| = 3, 1 neighbour (clamped): −0.5 and −40 tie at 1560.25; totals
    #   −0.5: 4110.5, −40: 9660.25 → idx 0
    # selected −0.5, 1, 2, 4, 7; median 2; closest three 2, 1, 4 → 7/3
    updates = np.array([[-0.5], [1.0], [2.0], [4.0], [7.0], [50.0], [-40.0]])
    np.testing.assert_array_equal(Bulyan(1).select(updates), [2, 3, 1, 4, 0])
    np.testing.assert_allclose(Bulyan(1)(updates), [7 / 3])


def test_bulyan_refuses_fewer_than_4f_plus_3_updates() -> None:
    with pytest.raises(ValueError, match=r"n >= 4f \+ 3 = 11 updates, got 10"):
        Bulyan(2)(np.zeros((10, 3)))


# ------------------------------------------------------------------------------------
# Geometric median
# ------------------------------------------------------------------------------------

PRECISE_GM = GeometricMedian(nu=1e-12, max_iterations=5000, tolerance=1e-15)


def test_geometric_median_in_one_dimension_is_the_median() -> None:
    np.testing.assert_allclose(
        PRECISE_GM(np.array([[0.0], [1.0], [10.0]])), [1.0], atol=1e-6
    )
    # Weighted: 3 of the 4 units of weight sit at 0 → the weighted median is 0.
    np.testing.assert_allclose(
        PRECISE_GM(np.array([[0.0], [1.0]]), [3.0, 1.0]), [0.0], atol=1e-6
    )


def test_geometric_median_of_symmetric_configurations_is_the_centre() -> None:
    square = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    np.testing.assert_allclose(PRECISE_GM(square), [1.0, 1.0], atol=1e-9)
    # Fermat point of an equilateral triangle = its centroid.
    triangle = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    np.testing.assert_allclose(PRECISE_GM(triangle), triangle.mean(axis=0), atol=1e-7)


def test_geometric_median_minimises_the_sum_of_distances() -> None:
    rng = np.random.default_rng(8)
    points = rng.standard_normal((9, 3))
    weights = rng.uniform(0.2, 2.0, 9)
    estimate, iterations = PRECISE_GM.solve(points, weights)
    assert iterations >= 2

    def objective(v: np.ndarray) -> float:
        return float(
            sum(w * np.linalg.norm(v - p) for w, p in zip(weights, points, strict=True))
        )

    best = objective(estimate)
    for direction in np.vstack([np.eye(3), -np.eye(3), rng.standard_normal((20, 3))]):
        assert objective(estimate + 1e-4 * direction) >= best - 1e-12


def test_geometric_median_stops_at_max_iterations() -> None:
    points = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 7.0], [3.0, 3.0]])
    _, iterations = GeometricMedian(max_iterations=2, tolerance=0.0).solve(points)
    assert iterations == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nu": 0.0}, "nu must be positive"),
        ({"max_iterations": 0}, "max_iterations must be at least 1"),
        ({"tolerance": -1.0}, "tolerance must be non-negative"),
    ],
)
def test_geometric_median_refuses_bad_parameters(
    kwargs: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        GeometricMedian(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------
# Centered clipping
# ------------------------------------------------------------------------------------


def test_centered_clipping_by_hand() -> None:
    updates = np.array([[0.0], [0.0], [10.0]])
    rule = CenteredClipping(tau=1.0, iterations=1, center=[0.0])
    # v1 = 0 + (0 + 0 + clip(10)) / 3 = 1/3
    np.testing.assert_allclose(rule(updates), [1 / 3])
    np.testing.assert_allclose(
        CenteredClipping(tau=1.0).with_center([0.0])(updates), [1 / 3]
    )
    # v2 = 1/3 + (−1/3 − 1/3 + clip(29/3)) / 3 = 1/3 + 1/9 = 4/9
    np.testing.assert_allclose(
        CenteredClipping(tau=1.0, iterations=2, center=[0.0])(updates), [4 / 9]
    )
    # Weighted: v1 = 0 + (1·0 + 1·0 + 2·1) / 4 = 1/2
    np.testing.assert_allclose(rule(updates, [1.0, 1.0, 2.0]), [0.5])


def test_centered_clipping_without_clipping_is_the_mean() -> None:
    rng = np.random.default_rng(9)
    updates = rng.standard_normal((6, 4))
    # τ above every distance: one step from any centre lands on the mean.
    rule = CenteredClipping(tau=1e6, iterations=1)
    np.testing.assert_allclose(rule(updates), updates.mean(axis=0), atol=1e-14)
    np.testing.assert_allclose(
        rule.with_center(np.full(4, 3.0))(updates), updates.mean(axis=0), atol=1e-14
    )


def test_centered_clipping_default_centre_is_the_coordinate_median() -> None:
    updates = np.array([[0.0, 0.0], [1.0, 5.0], [9.0, 6.0]])
    # With τ tiny the step is negligible: the result is the starting point.
    result = CenteredClipping(tau=1e-12, iterations=1)(updates)
    np.testing.assert_allclose(result, [1.0, 5.0], atol=1e-11)


def test_centered_clipping_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="tau must be positive"):
        CenteredClipping(tau=0.0)
    with pytest.raises(ValueError, match="iterations must be at least 1"):
        CenteredClipping(iterations=0)
    with pytest.raises(ValueError, match=r"center must have shape \(2,\)"):
        CenteredClipping(center=[0.0, 0.0, 0.0])(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="center contains NaN"):
        CenteredClipping(center=[0.0, np.nan])(np.zeros((3, 2)))


# ------------------------------------------------------------------------------------
# Properties shared by the rules
# ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(RULES))
def test_permutation_invariance(name: str) -> None:
    rng = np.random.default_rng(10)
    matrix = rng.standard_normal((11, 5))
    order = rng.permutation(11)
    rule = RULES[name]
    np.testing.assert_allclose(rule(matrix[order]), rule(matrix), rtol=1e-10)


@pytest.mark.parametrize("name", list(RULES))
def test_translation_equivariance(name: str) -> None:
    rng = np.random.default_rng(11)
    matrix = rng.standard_normal((11, 5))
    shift = rng.uniform(-100, 100, 5)
    rule = RULES[name]
    np.testing.assert_allclose(
        rule(matrix + shift), rule(matrix) + shift, rtol=0, atol=1e-8
    )


@pytest.mark.parametrize(
    "name", [name for name, rule in RULES.items() if rule.supports_weights]
)
def test_weighted_rules_equal_their_unweighted_form_under_uniform_weights(
    name: str,
) -> None:
    rule = RULES[name]
    matrix = np.random.default_rng(12).standard_normal((11, 4))
    np.testing.assert_allclose(rule(matrix, np.full(11, 7.0)), rule(matrix))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("median", CoordinateMedian()),
        ("trimmed", TrimmedMean(0.2)),
        ("krum", Krum(4)),
        ("multikrum", MultiKrum(4, 16)),
        ("bulyan", Bulyan(4)),
    ],
)
def test_far_outliers_leave_the_result_inside_the_honest_range(
    seed: int, name: str, rule: AggregationRule
) -> None:
    matrix, honest = honest_with_outliers(seed, n=20, f=4, d=8)
    result = rule(matrix)
    assert (result >= honest.min(axis=0)).all(), name
    assert (result <= honest.max(axis=0)).all(), name


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    "rule",
    [GeometricMedian(), CenteredClipping(tau=1.0, iterations=3)],
    ids=["geomed", "clipping"],
)
def test_far_outliers_move_distance_based_rules_only_a_little(
    seed: int, rule: AggregationRule
) -> None:
    """GM and CC are not confined to the coordinate range, but stay O(spread) close."""
    matrix, honest = honest_with_outliers(seed, n=20, f=4, d=8)
    spread = float(np.max(np.linalg.norm(honest - honest.mean(axis=0), axis=1)))
    error = float(np.linalg.norm(rule(matrix) - honest.mean(axis=0)))
    assert error < spread


def test_the_plain_mean_is_broken_by_the_same_outliers() -> None:
    """The robustness tests above are not vacuous: their input breaks the mean."""
    matrix, honest = honest_with_outliers(0, n=20, f=4, d=8)
    assert (Mean()(matrix) > 1000 * honest.max(axis=0)).all()


@pytest.mark.parametrize(
    "make_input",
    [np.asarray, lambda m: torch.tensor(m, dtype=torch.float64)],
    ids=["numpy", "torch"],
)
def test_selections_follow_the_rows_when_replies_are_reordered(
    make_input: Callable[..., object],
) -> None:
    rng = np.random.default_rng(13)
    matrix = rng.standard_normal((11, 3))
    order = rng.permutation(11)
    for rule in (Krum(2), MultiKrum(2, 5), Bulyan(2)):
        chosen = rule.select(make_input(matrix))
        chosen_after_reordering = rule.select(make_input(matrix[order]))
        np.testing.assert_array_equal(order[chosen_after_reordering], chosen)


def test_krum_selections_exclude_far_outliers() -> None:
    matrix, _ = honest_with_outliers(0, n=11, f=2, d=3)
    outliers = {9, 10}
    assert not set(Krum(2).select(matrix).tolist()) & outliers
    assert not set(MultiKrum(2, 7).select(matrix).tolist()) & outliers
