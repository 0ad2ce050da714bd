"""Anomaly detectors: hand-computed cases, brute-force references, adversarial rows.

Expected values come from the formulas worked by hand or from independent
implementations (:mod:`strategies.aggregators`' exact-difference distances and
Weiszfeld), never from the detectors' own output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from strategies import aggregators
from strategies.detection import (
    MAD_TO_SIGMA,
    SCORE_CEILING,
    SKETCH_BLOCK,
    Collusion,
    CosineToCentre,
    DetectionContext,
    DetectorPanel,
    FreeRider,
    HistoryConsistency,
    KrumDistance,
    NormOutlier,
    Opposition,
    RoundGeometry,
    UpdateHistory,
    centred_gram,
    clipped_mean_coefficients,
    geometric_median_coefficients,
    krum_neighbour_sums,
    leave_one_out_cosines,
    robust_z,
    row_norms,
    safe_ratio,
    sketch_coordinates,
    squared_distances_from_gram,
)
from strategies.records import Verdict

RNG = np.random.default_rng(20240611)


def non_iid_round(rows: int, width: int = 2000, seed: int = 0) -> np.ndarray:
    """Heterogeneous honest deltas, as measured on digits with Dirichlet α = 0.5.

    A weak shared direction (norm 0.3) plus a persistent client-specific direction
    of norm 0.2 to 0.7: cosines between clients spread from about −0.2 to 0.6 and
    row norms vary threefold, like the real rounds of benchmarks/calibrate_trusted.
    """
    generator = np.random.default_rng(seed)
    shared = generator.standard_normal(width)
    shared *= 0.3 / np.linalg.norm(shared)
    own = generator.standard_normal((rows, width))
    own *= generator.uniform(0.2, 0.7, (rows, 1)) / np.linalg.norm(
        own, axis=1, keepdims=True
    )
    return shared + own


def honest_round(
    rows: int, width: int = 400, noise: float = 1.0, seed: int = 0
) -> np.ndarray:
    """Honest deltas: a shared unit direction plus independent noise of norm ~noise."""
    generator = np.random.default_rng(seed)
    direction = generator.standard_normal(width)
    direction /= np.linalg.norm(direction)
    return direction + noise / np.sqrt(width) * generator.standard_normal((rows, width))


def context_for(
    deltas: np.ndarray, history: UpdateHistory | None = None
) -> DetectionContext:
    return DetectionContext.build(
        deltas, [f"id{row}" for row in range(len(deltas))], history
    )


# ------------------------------------------------------------------------ helpers


def test_robust_z_matches_hand_computation() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    # median 3, |deviations| = [2, 1, 0, 1, 97], MAD = 1
    expected = np.array([-2.0, -1.0, 0.0, 1.0, 97.0]) / MAD_TO_SIGMA
    np.testing.assert_allclose(robust_z(values), expected, rtol=1e-15)


def test_robust_z_zero_mad_uses_floor_or_ceiling() -> None:
    values = np.array([5.0, 5.0, 5.0, 7.0])
    assert robust_z(values)[3] == SCORE_CEILING
    assert robust_z(values)[0] == 0.0
    assert robust_z(values, min_scale=0.5)[3] == pytest.approx(4.0)


def test_safe_ratio_reads_division_by_zero() -> None:
    result = safe_ratio(np.array([0.0, 2.0, 3.0]), np.array([0.0, 0.0, 1.5]))
    np.testing.assert_array_equal(result, [0.0, SCORE_CEILING, 2.0])


def test_gram_distances_match_exact_differences() -> None:
    deltas = RNG.standard_normal((7, 50))
    geometry = RoundGeometry.from_deltas(deltas)
    exact = aggregators.pairwise_squared_distances(deltas)
    np.testing.assert_allclose(
        squared_distances_from_gram(geometry.gram), exact, rtol=1e-10, atol=1e-10
    )
    np.testing.assert_allclose(geometry.norms, np.linalg.norm(deltas, axis=1))


def test_geometric_median_matches_weiszfeld_on_the_rows() -> None:
    deltas = RNG.standard_normal((9, 30))
    deltas[:3] += 50.0  # a far minority must not drag the median
    geometry = RoundGeometry.from_deltas(deltas)
    reference = aggregators.GeometricMedian(tolerance=1e-12, max_iterations=1000)(
        deltas
    )
    estimate = geometry.centre @ deltas
    # Weiszfeld converges slowly near the optimum: compare the objective it
    # minimises (Σ‖v − x_i‖) and, loosely, the point.
    objective = np.linalg.norm(deltas - estimate, axis=1).sum()
    best = np.linalg.norm(deltas - reference, axis=1).sum()
    assert objective <= best * (1 + 1e-6)
    np.testing.assert_allclose(estimate, reference, atol=1e-3)
    assert np.all(geometry.centre >= 0.0)
    assert geometry.centre.sum() == pytest.approx(1.0)


def test_geometric_median_of_collinear_points_is_their_median() -> None:
    points = np.array([[0.0], [1.0], [2.0], [3.0], [100.0]])
    coefficients = geometric_median_coefficients(points @ points.T, 1000, 1e-14)
    assert float(coefficients @ points[:, 0]) == pytest.approx(2.0, abs=1e-5)


@pytest.mark.parametrize("workers", [1, 2, 3, None])
def test_row_norms_match_numpy_on_any_thread_count(workers: int | None) -> None:
    matrix = RNG.standard_normal((7, 1 << 18))  # above the threading threshold
    np.testing.assert_allclose(
        row_norms(matrix, workers), np.linalg.norm(matrix, axis=1), rtol=1e-12
    )


def test_krum_sums_match_aggregators_reference() -> None:
    deltas = RNG.standard_normal((11, 20))
    distances = aggregators.pairwise_squared_distances(deltas)
    np.testing.assert_allclose(
        krum_neighbour_sums(distances, 3), aggregators.krum_scores(distances, 3)
    )


def test_centred_gram_is_gram_of_residuals() -> None:
    deltas = RNG.standard_normal((6, 15))
    coefficients = RNG.dirichlet(np.ones(6))
    residuals = deltas - coefficients @ deltas
    np.testing.assert_allclose(
        centred_gram(deltas @ deltas.T, coefficients),
        residuals @ residuals.T,
        atol=1e-12,
    )


def test_cosine_to_centre_leaves_the_row_out() -> None:
    deltas = RNG.standard_normal((5, 12))
    geometry = RoundGeometry.from_deltas(deltas)
    beta = geometry.centre
    for row in range(5):
        others = np.delete(np.arange(5), row)
        centre = (beta[others] / beta[others].sum()) @ deltas[others]
        expected = deltas[row] @ centre / np.linalg.norm(deltas[row])
        expected /= np.linalg.norm(centre)
        assert geometry.cosines_to_centre()[row] == pytest.approx(expected)


def test_leave_one_out_cosines_match_brute_force() -> None:
    deltas = RNG.standard_normal((6, 9))
    beta = RNG.uniform(0.0, 2.0, 6)
    beta[2] = 0.0  # a row outside the centre is compared with the whole of it
    cosines = leave_one_out_cosines(deltas @ deltas.T, beta)
    for row in range(6):
        others = np.delete(np.arange(6), row)
        centre = beta[others] @ deltas[others]
        expected = deltas[row] @ centre
        expected /= np.linalg.norm(deltas[row]) * np.linalg.norm(centre)
        assert cosines[row] == pytest.approx(expected)


def test_leave_one_out_cosine_of_a_lone_or_zero_row_is_zero() -> None:
    deltas = np.array([[1.0, 0.0], [0.0, 0.0]])
    # row 0's centre is the zero row; row 1 has no direction: both read as 0
    np.testing.assert_array_equal(
        leave_one_out_cosines(deltas @ deltas.T, np.ones(2)), [0.0, 0.0]
    )


def test_clipped_mean_coefficients_hand_case() -> None:
    norms = np.array([1.0, 2.0, 3.0, 30.0, 0.0])
    used = np.array([True, True, True, True, False])
    # median used norm 2.5 → min(1, 2.5/‖x‖) on used rows, 0 on the unused one
    np.testing.assert_allclose(
        clipped_mean_coefficients(norms, used), [1.0, 1.0, 2.5 / 3, 2.5 / 30, 0.0]
    )
    np.testing.assert_array_equal(
        clipped_mean_coefficients(norms, np.zeros(5, bool)), np.zeros(5)
    )


# ---------------------------------------------------------------------- detectors


def test_norm_outlier_hand_case() -> None:
    deltas = np.diag([1.0, 1.0, 1.0, 1.0, 10.0])
    # norms [1,1,1,1,10]: median 1, MAD 0, floor 0.25 × 1 → score (10 − 1) / 0.25
    scores = NormOutlier().score(deltas, context_for(deltas))
    np.testing.assert_allclose(scores, [0.0, 0.0, 0.0, 0.0, 36.0])


def test_norm_outlier_ignores_short_updates() -> None:
    deltas = np.diag([1.0, 1.0, 1.0, 1.0, 0.01])
    assert NormOutlier().score(deltas, context_for(deltas))[4] == 0.0


def test_cosine_flags_sign_flip_noise_and_ipm_but_not_honest() -> None:
    deltas = honest_round(16, noise=1.0)
    honest_mean = deltas[:12].mean(axis=0)
    deltas[12] = -deltas[12]
    deltas[13] = np.random.default_rng(1).standard_normal(400) / np.sqrt(400) * 1.4
    deltas[14] = -0.5 * honest_mean
    scores = CosineToCentre().score(deltas, context_for(deltas))
    assert np.all(scores[12:15] >= CosineToCentre().reject_at)
    assert np.all(scores[:12] < CosineToCentre().downweight_at)


def test_opposition_rejects_flipped_clients_that_agree_with_the_consensus() -> None:
    misses = false_alarms = flagged = 0
    for seed in range(10):
        deltas = non_iid_round(20, seed=seed)
        honest_mean = deltas[6:].mean(axis=0)
        agreement = deltas[:6] @ honest_mean
        agreement /= np.linalg.norm(deltas[:6], axis=1) * np.linalg.norm(honest_mean)
        deltas[:6] = -deltas[:6]  # 30 % sign-flippers (Attack SignFlip)
        scores = Opposition().score(deltas, context_for(deltas))
        # The flip of an update that agreed with the honest mean does the harm; one
        # of an update nearly orthogonal to it is allowed through.
        harmful = agreement >= 0.6
        flagged += int(np.sum(harmful))
        misses += int(np.sum(scores[:6][harmful] < Opposition().reject_at))
        false_alarms += int(np.sum(scores[6:] >= Opposition().downweight_at))
    assert flagged >= 10  # the case is not vacuous
    assert misses == 0
    assert false_alarms <= 3  # of 140 honest rows


def test_opposition_catches_what_the_cosine_z_score_misses() -> None:
    """Non-IID honest cosines are so spread that a flip hides inside their MAD."""
    deltas = non_iid_round(20, seed=3)
    deltas[:6] = -deltas[:6]
    opposed = Opposition().score(deltas, context_for(deltas))[:6]
    z_scored = CosineToCentre().score(deltas, context_for(deltas))[:6]
    assert int(np.sum(opposed >= Opposition().reject_at)) > int(
        np.sum(z_scored >= CosineToCentre().reject_at)
    )


def test_opposition_is_not_steered_by_scaled_rows() -> None:
    deltas = non_iid_round(20, seed=4)
    deltas[:6] = -100.0 * deltas[6:].mean(axis=0) + 0.01 * deltas[:6]
    scores = Opposition().score(deltas, context_for(deltas))
    assert np.all(scores[:6] >= Opposition().reject_at)
    assert np.all(scores[6:] < Opposition().downweight_at)


def test_norm_outlier_is_not_fooled_by_identical_copies() -> None:
    """Six copies at one norm collapse the MAD; honest spread must not be flagged."""
    norms = np.concatenate([np.full(6, 0.45), np.linspace(0.25, 0.77, 14)])
    deltas = np.diag(norms)
    scores = NormOutlier().score(deltas, context_for(deltas))
    assert np.all(scores < NormOutlier().downweight_at)
    # …while a tenfold update still is: (4.5 − 0.45) / (0.25 · 0.45) = 36
    deltas[0, 0] = 4.5
    assert NormOutlier().score(deltas, context_for(deltas))[0] >= 6.0


def test_krum_distance_hand_case() -> None:
    points = np.array([[0.0], [1.0], [2.0], [3.0], [30.0]])
    # f = ⌊0.3·5⌋ = 1 → 2 nearest: sums [1+4, 1+1, 1+1, 1+4, 729+784] = [5,2,2,5,1513]
    scores = KrumDistance().score(points, context_for(points))
    np.testing.assert_allclose(scores, np.array([5, 2, 2, 5, 1513]) / 5.0)


def test_collusion_flags_every_copy_and_only_copies() -> None:
    deltas = honest_round(12)
    crafted = -0.3 * deltas[:8].mean(axis=0)
    deltas[8:11] = crafted
    deltas[11] = 10.0 * deltas[0]  # scaled copy of an honest row is not collusion
    scores = Collusion().score(deltas, context_for(deltas))
    np.testing.assert_allclose(scores[8:11], 1.0)
    assert np.all(scores[:8] < Collusion().downweight_at)
    assert scores[11] < Collusion().downweight_at


def test_collusion_zero_update_is_not_a_copy_of_an_opposed_one() -> None:
    deltas = honest_round(10)
    deltas[8] = 0.0
    deltas[9] = -0.5 * deltas[:8].mean(axis=0)
    scores = Collusion().score(deltas, context_for(deltas))
    assert scores[8] < Collusion().downweight_at
    assert scores[9] < Collusion().downweight_at


def test_free_rider_zero_update_hand_case() -> None:
    deltas = np.diag([1.0, 1.0, 1.0, 0.1])
    # median norm of [1, 1, 1, 0.1] is 1 → emptiness 1 − 0.1 = 0.9
    scores = FreeRider().score(deltas, context_for(deltas))
    np.testing.assert_allclose(scores, [0.0, 0.0, 0.0, 0.9])


def test_free_rider_catches_stale_replay_only_with_history() -> None:
    first = honest_round(6, seed=1)
    second = honest_round(6, seed=2)
    second[5] = first[5]  # replay of its own previous update
    identities = [f"id{row}" for row in range(6)]
    assert FreeRider().score(second, context_for(second))[5] < 0.5
    history = UpdateHistory().remember(
        identities, UpdateHistory().sketch(first), first.shape[1], 1
    )
    scores = FreeRider().score(second, context_for(second, history))
    assert scores[5] == pytest.approx(1.0)
    assert np.all(scores[:5] < FreeRider().downweight_at)


def test_history_consistency_flags_a_client_turning_away() -> None:
    first = honest_round(8, seed=3)
    second = first + 0.3 * honest_round(8, seed=4)  # directions persist
    second[7] = -first[7]  # a sleeper turns against its own past
    identities = [f"id{row}" for row in range(8)]
    history = UpdateHistory().remember(
        identities, UpdateHistory().sketch(first), first.shape[1], 1
    )
    scores = HistoryConsistency().score(second, context_for(second, history))
    assert scores[7] >= HistoryConsistency().downweight_at
    assert np.all(scores[:7] < HistoryConsistency().downweight_at)
    assert HistoryConsistency().reject_at == float("inf")


def test_history_consistency_needs_a_population() -> None:
    first = honest_round(4, seed=5)
    history = UpdateHistory().remember(["id0", "id1"], first[:2], first.shape[1], 1)
    second = honest_round(4, seed=6)
    scores = HistoryConsistency().score(second, context_for(second, history))
    np.testing.assert_array_equal(scores, 0.0)


def test_single_row_scores_nothing() -> None:
    deltas = RNG.standard_normal((1, 10))
    context = context_for(deltas)
    for detector in DetectorPanel().detectors:
        np.testing.assert_array_equal(detector.score(deltas, context), 0.0)


# ------------------------------------------------------------------------ history


def test_history_keeps_every_coordinate_of_small_models() -> None:
    np.testing.assert_array_equal(sketch_coordinates(100, 16_384, 0), np.arange(100))


def test_history_keeps_distinct_sorted_blocks_of_large_models() -> None:
    chosen = sketch_coordinates(10 * 16_384, 16_384, 0)
    assert chosen.shape == (16_384,)
    assert np.all(np.diff(chosen) > 0)
    starts = chosen[::SKETCH_BLOCK]
    np.testing.assert_array_equal(starts % SKETCH_BLOCK, 0)
    np.testing.assert_array_equal(
        chosen.reshape(-1, SKETCH_BLOCK) - starts[:, None],
        np.tile(np.arange(SKETCH_BLOCK), (len(starts), 1)),
    )


def test_history_forgets_old_entries_and_other_models() -> None:
    history = UpdateHistory().remember(["a"], np.ones((1, 5)), 5, server_round=1)
    history = history.remember(["b"], np.ones((1, 5)), 5, server_round=5)
    assert set(history.previous) == {"a", "b"}
    history = history.remember(["b"], np.ones((1, 5)), 5, server_round=12)
    assert set(history.previous) == {"b"}  # a last seen 11 rounds ago
    _, _, known = history.compare(["b"], np.ones((1, 6)), width=6)
    assert not known.any()  # the model changed shape


def test_context_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="identities"):
        DetectionContext.build(np.ones((2, 3)), ["only-one"])
    bad = np.ones((2, 3))
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        DetectionContext.build(bad, ["a", "b"])
    context = context_for(np.ones((2, 3)))
    with pytest.raises(ValueError, match="rows"):
        NormOutlier().score(np.ones((3, 3)), context)


# -------------------------------------------------------------------------- panel


@dataclass(frozen=True)
class FixedScores:
    """A detector that returns given scores (to test the verdict mapping alone)."""

    values: tuple[float, ...]
    name: ClassVar[str] = "fixed"
    downweight_at: float = 1.0
    reject_at: float = 2.0

    def score(self, deltas: np.ndarray, context: DetectionContext) -> np.ndarray:
        return np.array(self.values)


def test_panel_maps_thresholds_to_verdicts_with_reasons() -> None:
    deltas = RNG.standard_normal((4, 3))
    panel = DetectorPanel((FixedScores((0.5, 1.0, 1.9, 2.0)),), downweight_factor=0.3)
    screening = panel.screen(deltas, context_for(deltas))
    assert screening.verdicts == (
        Verdict.ACCEPTED,
        Verdict.DOWNWEIGHTED,
        Verdict.DOWNWEIGHTED,
        Verdict.REJECTED,
    )
    np.testing.assert_array_equal(screening.factors, [1.0, 0.3, 0.3, 0.0])
    assert screening.reasons[0] == ""
    assert "fixed 1.9 ≥ 1" in screening.reasons[2]
    assert screening.reasons[3] == "rejected by fixed 2 ≥ 2"
    assert screening.scores[2] == {"fixed": 1.9}


def test_panel_rejects_bad_configuration_and_bad_scores() -> None:
    with pytest.raises(ValueError, match="unique"):
        DetectorPanel((FixedScores((0.0,)), FixedScores((0.0,))))
    with pytest.raises(ValueError, match="downweight_factor"):
        DetectorPanel(downweight_factor=1.0)
    with pytest.raises(ValueError, match="exceeds"):
        DetectorPanel((NormOutlier(downweight_at=7.0, reject_at=6.0),))
    deltas = RNG.standard_normal((2, 3))
    with pytest.raises(ValueError, match="shape"):
        DetectorPanel((FixedScores((0.0,)),)).screen(deltas, context_for(deltas))


@pytest.mark.parametrize("heterogeneous", [False, True])
def test_default_panel_accepts_almost_every_honest_row(heterogeneous: bool) -> None:
    judged = rejected_or_lowered = 0
    for seed in range(20):
        deltas = (
            non_iid_round(20, seed=seed)
            if heterogeneous
            else honest_round(20, width=2000, noise=2.0, seed=seed)
        )
        screening = DetectorPanel().screen(deltas, context_for(deltas))
        judged += len(screening.verdicts)
        rejected_or_lowered += sum(
            v is not Verdict.ACCEPTED for v in screening.verdicts
        )
    assert rejected_or_lowered / judged <= 0.02
