"""Pre-aggregators against brute-force transcriptions of their papers; properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.aggregators import CoordinateMedian, GeometricMedian, Mean, MultiKrum
from strategies.preaggregation import (
    RULE_BOUNDS,
    AdaptiveRobustClipping,
    Bucketing,
    NearestNeighbourMixing,
    PreAggregated,
    arc_clipped_count,
    bulyan_max_f,
    byzantine_count,
    compose,
    krum_max_f,
)

# Integer-valued batches: squared distances and norms are then exact in any summation
# order, so ties are exact ties in the implementation and in the transcriptions.
batches = st.integers(2, 9).flatmap(
    lambda n: st.lists(
        st.lists(st.integers(-20, 20), min_size=3, max_size=3), min_size=n, max_size=n
    )
)


def brute_nnm(rows: list[list[int]], f: int) -> np.ndarray:
    """Allouah et al. 2023, Alg. 1: each row → mean of its n − f nearest rows."""
    n = len(rows)
    mixed = []
    for i in range(n):
        by_distance = sorted(
            range(n),
            key=lambda j: (
                sum((a - b) ** 2 for a, b in zip(rows[i], rows[j], strict=True)),
                j,
            ),
        )
        chosen = by_distance[: n - f]
        mixed.append([sum(rows[j][k] for j in chosen) / (n - f) for k in range(3)])
    return np.array(mixed)


def brute_arc(rows: list[list[int]], f: int) -> np.ndarray:
    """Allouah et al. 2024, Alg. 1: clip the ⌊2(f/n)(n−f)⌋ longest to the next norm."""
    n = len(rows)
    k = math.floor(2 * (f / n) * (n - f) + 1e-9)
    norms = [math.sqrt(sum(v * v for v in row)) for row in rows]
    order = sorted(range(n), key=lambda i: -norms[i])
    out = [list(map(float, row)) for row in rows]
    if k == 0:
        return np.array(out)
    bound = norms[order[k]]
    for i in order[:k]:
        if norms[i] > bound:
            out[i] = [v * bound / norms[i] for v in rows[i]]
    return np.array(out)


def brute_bucketing(
    rows: list[list[int]], weights: list[float], size: int, permutation: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Karimireddy et al. 2022, Alg. 1: shuffle, average consecutive buckets of s."""
    total = sum(weights)
    shuffled = [permutation[i] for i in range(len(rows))]
    means, masses = [], []
    for start in range(0, len(rows), size):
        members = shuffled[start : start + size]
        means.append(
            [sum(rows[j][k] for j in members) / len(members) for k in range(3)]
        )
        masses.append(sum(weights[j] for j in members) / total)
    return np.array(means), np.array(masses)


@settings(max_examples=80, deadline=None)
@given(rows=batches, data=st.data())
def test_nnm_matches_the_paper(rows: list[list[int]], data: st.DataObject) -> None:
    f = data.draw(st.integers(0, len(rows) - 1))
    mixed, weights = NearestNeighbourMixing(f)(np.array(rows, dtype=np.float64))
    np.testing.assert_allclose(mixed, brute_nnm(rows, f), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(weights, np.full(len(rows), 1 / len(rows)))


@settings(max_examples=80, deadline=None)
@given(rows=batches, data=st.data())
def test_arc_matches_the_paper(rows: list[list[int]], data: st.DataObject) -> None:
    f = data.draw(st.integers(0, len(rows) - 1))
    clipped, _ = AdaptiveRobustClipping(f)(np.array(rows, dtype=np.float64))
    np.testing.assert_allclose(clipped, brute_arc(rows, f), rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(rows=batches, data=st.data())
def test_bucketing_matches_the_paper(
    rows: list[list[int]], data: st.DataObject
) -> None:
    size = data.draw(st.integers(1, len(rows) + 1))
    seed = data.draw(st.integers(0, 2**31))
    weights = data.draw(
        st.lists(st.integers(1, 9), min_size=len(rows), max_size=len(rows))
    )
    rule = Bucketing(size=size, seed=seed)
    permutation = rule.permutation(len(rows)).tolist()
    assert sorted(permutation) == list(range(len(rows)))
    means, masses = rule(np.array(rows, dtype=np.float64), np.array(weights))
    expected_means, expected_masses = brute_bucketing(
        rows, [float(w) for w in weights], size, permutation
    )
    assert means.shape == (math.ceil(len(rows) / size), 3)
    np.testing.assert_allclose(means, expected_means, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(masses, expected_masses, rtol=1e-12)


def test_nnm_of_identical_vectors_is_the_identity() -> None:
    same = np.tile(np.array([0.1, -3.0, 7.25]), (6, 1))
    mixed, _ = NearestNeighbourMixing(f=2)(same)
    np.testing.assert_array_equal(mixed, same)


def test_nnm_with_no_byzantine_gives_everyone_the_mean() -> None:
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((7, 4))
    mixed, _ = NearestNeighbourMixing(f=0)(rows)
    np.testing.assert_allclose(mixed, np.tile(rows.mean(axis=0), (7, 1)))


def test_nnm_keeps_a_far_outlier_out_of_honest_neighbourhoods() -> None:
    honest = np.arange(8, dtype=np.float64).reshape(4, 2)
    rows = np.vstack([honest, [[1e6, -1e6]]])
    mixed, _ = NearestNeighbourMixing(f=1)(rows)
    np.testing.assert_allclose(mixed[:4], np.tile(honest.mean(axis=0), (4, 1)))


def test_arc_clips_exactly_the_k_largest() -> None:
    rng = np.random.default_rng(2)
    n, f = 20, 6
    rows = rng.standard_normal((n, 5)) * rng.uniform(0.5, 9.0, (n, 1))
    norms = np.linalg.norm(rows, axis=1)
    k = arc_clipped_count(n, f)
    assert k == math.floor(2 * (f / n) * (n - f)) == 8
    clipped, _ = AdaptiveRobustClipping(f)(rows)
    new_norms = np.linalg.norm(clipped, axis=1)
    changed = ~np.isclose(new_norms, norms, rtol=1e-12)
    order = np.argsort(-norms)
    assert set(np.flatnonzero(changed)) == set(order[:k].tolist())
    np.testing.assert_allclose(new_norms[order[:k]], norms[order[k]], rtol=1e-12)
    # Directions are kept.
    cosines = np.einsum("ij,ij->i", clipped, rows) / (new_norms * norms)
    np.testing.assert_allclose(cosines, 1.0, rtol=1e-12)


def test_arc_with_no_byzantine_changes_nothing() -> None:
    rows = np.array([[3.0, 4.0], [30.0, 40.0], [0.0, 0.0]])
    clipped, _ = AdaptiveRobustClipping(0)(rows)
    np.testing.assert_array_equal(clipped, rows)


def test_bucketing_depends_only_on_its_seed() -> None:
    rows = np.arange(30, dtype=np.float64).reshape(10, 3)
    first = Bucketing(size=3, seed=(5, 1))(rows)[0]
    np.testing.assert_array_equal(first, Bucketing(size=3, seed=(5, 1))(rows)[0])
    other = Bucketing(size=3, seed=(5, 2))
    assert other == Bucketing(size=3, seed=(5, 1)).with_seed((5, 2))
    assert not np.array_equal(first, other(rows)[0])
    # Whatever the buckets, their weighted means average back to the mean.
    means, masses = other(rows)
    np.testing.assert_allclose(masses @ means, rows.mean(axis=0))


def test_inputs_are_not_modified_and_torch_is_accepted() -> None:
    rows = np.random.default_rng(3).standard_normal((6, 4)).astype(np.float32)
    kept = rows.copy()
    for pre in (NearestNeighbourMixing(2), AdaptiveRobustClipping(2), Bucketing(2)):
        from_numpy = pre(rows)
        from_torch = pre(torch.from_numpy(rows))
        assert from_numpy[0].dtype == np.float64
        np.testing.assert_array_equal(from_numpy[0], from_torch[0])
        np.testing.assert_array_equal(rows, kept)


@pytest.mark.parametrize(
    "build", [NearestNeighbourMixing, AdaptiveRobustClipping], ids=["nnm", "arc"]
)
def test_f_must_leave_someone(build: type) -> None:
    with pytest.raises(ValueError, match="needs n > f"):
        build(3)(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="non-negative integer"):
        build(-1)
    with pytest.raises(ValueError, match="non-negative integer"):
        build(True)


def test_bucketing_refuses_bad_sizes() -> None:
    for size in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="size must be"):
            Bucketing(size=size)  # type: ignore[arg-type]


def test_compose_runs_the_rule_on_the_preaggregated_batch() -> None:
    rng = np.random.default_rng(4)
    rows = rng.standard_normal((9, 5))
    nnm = NearestNeighbourMixing(2)
    composed = compose(nnm, CoordinateMedian())
    assert isinstance(composed, PreAggregated)
    np.testing.assert_array_equal(composed(rows), CoordinateMedian()(nnm(rows)[0]))
    weighted = compose(AdaptiveRobustClipping(2), Mean())
    weights = rng.uniform(1, 3, 9)
    clipped, alphas = AdaptiveRobustClipping(2)(rows, weights)
    np.testing.assert_allclose(weighted(rows, weights), alphas @ clipped)


def test_compose_hands_bucket_weights_to_weighted_rules() -> None:
    rows = np.arange(10, dtype=np.float64).reshape(5, 2) ** 2
    # Buckets of 2, 2 and 1: only their masses make the mean of means the mean.
    composed = compose(Bucketing(size=2, seed=3), Mean())
    np.testing.assert_allclose(composed(rows), rows.mean(axis=0))
    means = Bucketing(size=2, seed=3)(rows)[0]
    assert not np.allclose(means.mean(axis=0), rows.mean(axis=0))


def test_compose_drops_zero_weight_rows_before_mixing() -> None:
    rows = np.array([[0.0], [1.0], [2.0], [3.0], [1e9]])
    composed = compose(NearestNeighbourMixing(1), CoordinateMedian())
    weights = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    np.testing.assert_array_equal(composed(rows, weights), composed(rows[:4]))
    # Unweighted rules see the survivors uniformly; weighted ones get the weights.
    krum = compose(NearestNeighbourMixing(0), MultiKrum(f=0, m=4))
    assert krum(rows, weights).shape == (1,)


def test_nnm_then_median_resists_what_breaks_the_mean() -> None:
    rng = np.random.default_rng(5)
    honest = rng.standard_normal((14, 20)) + 1.0
    attack = np.tile(-30.0 * honest.mean(axis=0), (6, 1))
    rows = np.vstack([honest, attack])
    target = honest.mean(axis=0)
    robust = compose(NearestNeighbourMixing(6), GeometricMedian())(rows)
    plain = Mean()(rows)
    assert np.linalg.norm(robust - target) < 0.1 * np.linalg.norm(plain - target)


def test_byzantine_count_is_the_capped_floor() -> None:
    assert byzantine_count(0.3, 20) == 6
    assert byzantine_count(0.29, 100) == 29  # not 28: 0.29 · 100 < 29 in binary
    assert byzantine_count(0.0, 5) == 0
    # Krum needs n > 2f + 2: n = 10 allows f ≤ 3.
    assert byzantine_count(0.45, 10, krum_max_f) == 3
    assert byzantine_count(0.3, 10, krum_max_f) == 3
    assert byzantine_count(0.2, 10, krum_max_f) == 2
    # Bulyan needs n ≥ 4f + 3: n = 20 allows f ≤ 4.
    assert byzantine_count(0.3, 20, bulyan_max_f) == 4
    assert byzantine_count(0.3, 20, RULE_BOUNDS["bulyan"]) == 4
    # Too few updates for even f = 0: 0, and the rule itself refuses n.
    assert byzantine_count(0.3, 2, krum_max_f) == 0
    assert byzantine_count(0.9, 4) == 3  # never more than n − 1


@settings(max_examples=200, deadline=None)
@given(
    fraction=st.floats(0.0, 0.999),
    n=st.integers(1, 200),
    bound=st.sampled_from(sorted(RULE_BOUNDS)),
)
def test_byzantine_count_respects_every_bound(
    fraction: float, n: int, bound: str
) -> None:
    f = byzantine_count(fraction, n, RULE_BOUNDS[bound])
    assert 0 <= f <= math.floor(fraction * n + 1e-9)
    bounded = RULE_BOUNDS[bound](n)
    if bounded >= 0:
        assert f <= bounded
        assert f == min(math.floor(round(fraction * n, 9)), bounded, n - 1)
    if bound in ("krum", "multi_krum") and n >= 3:
        assert n > 2 * f + 2
    if bound == "bulyan" and n >= 3:
        assert n >= 4 * f + 3


@pytest.mark.parametrize("fraction", [-0.1, 1.0, float("nan"), "0.3"])
def test_byzantine_count_refuses_bad_fractions(fraction: object) -> None:
    with pytest.raises(ValueError, match="fraction must lie in"):
        byzantine_count(fraction, 10)  # type: ignore[arg-type]
