"""The default strategy's robust stage: NNM ∘ CAF on distances, reputation inside it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.aggregators import pairwise_squared_distances
from strategies.records import ReputationState, Tier
from strategies.robust_stage import (
    CovarianceFilter,
    RobustStage,
    covariance_filter,
    mixed_squared_distances,
    mixing_matrix,
    weights_within_bound,
)
from strategies.trusted import TrustedFedAvg


def brute_force_caf(x: np.ndarray, f: int) -> np.ndarray:
    """CAF transcribed from the paper in ``d``-space (full covariance, eigh)."""
    n = x.shape[0]
    c = np.ones(n)
    best, best_value = x.mean(axis=0), np.inf
    while c.sum() > n - 2 * f:
        mu = c @ x / c.sum()
        diffs = x - mu
        cov = (c[:, None] * diffs).T @ diffs / c.sum()
        values, vectors = np.linalg.eigh(cov)
        if values[-1] < best_value:
            best, best_value = mu, values[-1]
        if values[-1] <= 0:
            break
        tau = (diffs @ vectors[:, -1]) ** 2
        c = c * (1 - tau / tau[c > 0].max())
    return best


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(3, 9),
    d=st.integers(1, 6),
    seed=st.integers(0, 2**31),
    fraction=st.floats(0.0, 0.49),
)
def test_caf_on_distances_matches_the_d_space_transcription(
    n: int, d: int, seed: int, fraction: float
) -> None:
    x = np.random.default_rng(seed).standard_normal((n, d)) * 3
    f = min(int(fraction * n), (n - 1) // 2)
    p = covariance_filter(pairwise_squared_distances(x), f)
    assert p.sum() == pytest.approx(1.0)
    assert np.all(p >= 0) and np.all(p <= 1 / (n - 2 * f) + 1e-12)
    np.testing.assert_allclose(p @ x, brute_force_caf(x, f), atol=1e-7)


def test_mixed_distances_are_those_of_the_mixed_rows() -> None:
    x = np.random.default_rng(1).standard_normal((7, 5))
    distances = pairwise_squared_distances(x)
    mixing = mixing_matrix(distances, 2)
    np.testing.assert_allclose(mixing.sum(axis=1), 1.0)
    np.testing.assert_allclose(
        mixed_squared_distances(distances, mixing),
        pairwise_squared_distances(mixing @ x),
        atol=1e-10,
    )


def test_stage_weights_are_a_weighted_mean_that_ignores_far_outliers() -> None:
    rng = np.random.default_rng(2)
    honest = rng.standard_normal((14, 20)) * 0.1 + 1.0
    attackers = np.full((6, 20), -50.0)
    rows = np.vstack([attackers, honest])
    stage = RobustStage(0.3)
    weights = stage.weights(pairwise_squared_distances(rows))
    assert weights[:6].sum() == pytest.approx(0.0, abs=1e-12)
    assert np.linalg.norm(weights @ rows - honest.mean(axis=0)) < 0.1
    assert CovarianceFilter(6, mix=True)(rows) == pytest.approx(weights @ rows)
    assert "f = 6 of n = 20" in stage.describe(20)


def test_filtered_rows_do_not_stall_the_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    # Six identical IPM rows (−½ the honest mean) among 14 heterogeneous honest
    # ones, mixed by NNM: once the filter has zeroed the attackers they stay the
    # farthest along v; taking τ_max over them made each step shrink the honest
    # rows by almost nothing (over 500 iterations here, unbounded in general).
    rng = np.random.default_rng(0)
    shared = rng.standard_normal(50)
    own = rng.standard_normal((14, 50))
    honest = (
        shared / np.linalg.norm(shared)
        + own / np.linalg.norm(own, axis=1, keepdims=True)
        + 0.3 * rng.standard_normal((14, 50)) / np.sqrt(50)
    )
    rows = np.vstack([np.repeat(-0.5 * honest.mean(axis=0)[None], 6, axis=0), honest])
    distances = pairwise_squared_distances(rows)
    mixed = mixed_squared_distances(distances, mixing_matrix(distances, 6))
    calls = []
    eigh = np.linalg.eigh
    monkeypatch.setattr(np.linalg, "eigh", lambda a: calls.append(1) or eigh(a))
    p = covariance_filter(mixed, 6)
    assert len(calls) <= 20  # every iteration zeroes a row still in play
    assert p.sum() == pytest.approx(1.0)
    assert np.all(p <= 1 / (20 - 12) + 1e-12)


@settings(max_examples=60, deadline=None)
@given(
    robust=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8),
    preference=st.lists(st.floats(0.0, 3.0), min_size=8, max_size=8),
    ceiling=st.floats(1.0, 3.0),
)
def test_reputation_never_lifts_a_row_above_its_ceiling(
    robust: list[float], preference: list[float], ceiling: float
) -> None:
    pi = np.asarray(robust)
    if pi.sum() == 0:
        return
    pi = pi / pi.sum()
    rho = np.asarray(preference[: pi.size])
    w = weights_within_bound(pi, rho, ceiling)
    assert np.all(w <= ceiling * pi + 1e-12)
    assert np.all(w[rho == 0] == 0)
    assert w.sum() <= 1 + 1e-9
    live = (pi * rho) > 0
    if (ceiling * pi[live]).sum() >= 1 + 1e-9:
        assert w.sum() == pytest.approx(1.0)
        free = live & (w < ceiling * pi - 1e-12)
        ratios = w[free] / (pi[free] * rho[free])
        assert np.allclose(ratios, ratios[0]) if ratios.size else True


def test_trusted_reputation_stays_inside_the_robust_bound() -> None:
    """A Platinum identity among Silver ones, preferred tenfold: its weight is at
    most the ceiling times what the robust stage gives it, and the weights still
    sum to 1."""
    rng = np.random.default_rng(3)
    deltas = rng.standard_normal((10, 30)) + 1.0
    strategy = TrustedFedAvg(use_detectors=False, sketch_seed=0)
    for i in range(10):
        score = 0.99 if i == 0 else 0.65
        tier = Tier.PLATINUM if i == 0 else Tier.SILVER
        strategy.book.store.put_reputations(
            [ReputationState(f"p{i}", score, tier, rounds_accepted=50)]
        )
    states = strategy.book.states([f"p{i}" for i in range(10)])
    preference = np.full(10, 0.1)
    preference[0] = 1.0
    delta, weights = strategy._robust_aggregate(deltas, preference, states)
    assert strategy.stage is not None
    robust = strategy.stage.weights(pairwise_squared_distances(deltas))
    assert np.all(weights <= strategy.reputation_ceiling * robust + 1e-12)
    assert weights[0] > robust[0]  # reputation did re-weight, inside the bound
    assert weights.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(delta, weights @ deltas)
    assert strategy.reputation_ceiling == pytest.approx(1 / 0.7)


def test_trusted_refuses_a_ceiling_below_one() -> None:
    with pytest.raises(ValueError, match="reputation_ceiling"):
        TrustedFedAvg(reputation_ceiling=0.5)
