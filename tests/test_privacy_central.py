"""User-level central DP: clipping, share caps, sensitivity, noise, accounting."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.base import AggregationOutcome, ScreenedFedAvg, UpdateBatch
from strategies.central_dp import (
    AdaptiveClipNorm,
    CentralDP,
    CentralPrivacyAccountant,
    cap_shares,
    clip_rows,
    combined_noise_multiplier,
    update_noise_multiplier_for,
    weighted_mean_sensitivity,
)
from strategies.records import InMemoryStore, Verdict
from strategies.trusted import TrustedFedAvg
from strategies.wrapping import StrategyWrapper


def batch_of(deltas: np.ndarray, examples: list[int] | None = None) -> UpdateBatch:
    n = len(deltas)
    deltas = np.array(deltas, dtype=np.float64)
    deltas.setflags(write=False)
    return UpdateBatch(
        identities=tuple(f"c{i}" for i in range(n)),
        node_ids=tuple(range(n)),
        num_examples=np.array(examples or [10] * n, dtype=np.int64),
        deltas=deltas,
        digests=("",) * n,
        metrics=({},) * n,
        reference={"w": np.zeros(deltas.shape[1])},
    )


def test_every_clipped_update_is_within_the_clip_norm() -> None:
    rng = np.random.default_rng(0)
    deltas = rng.normal(size=(50, 30)) * rng.uniform(0.01, 100, size=(50, 1))
    clipped, norms = clip_rows(deltas, 2.5)
    assert np.all(np.linalg.norm(clipped, axis=1) <= 2.5 + 1e-12)
    small = norms <= 2.5
    np.testing.assert_array_equal(clipped[small], deltas[small])  # untouched
    np.testing.assert_allclose(norms, np.linalg.norm(deltas, axis=1))


def test_cap_shares_by_hand() -> None:
    # raw 6:2:1:1, cap 0.4 -> first capped at 0.4, the rest share 0.6 as 2:1:1
    np.testing.assert_allclose(
        cap_shares(np.array([6.0, 2, 1, 1]), 0.4), [0.4, 0.3, 0.15, 0.15]
    )
    # two positive entries cannot reach 1 under a 0.3 cap: both at the cap
    np.testing.assert_allclose(cap_shares(np.array([5.0, 0, 1]), 0.3), [0.3, 0, 0.3])


def test_cap_shares_properties() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        raw = rng.pareto(1.0, size=rng.integers(5, 40)) + 1e-3
        cap = rng.uniform(1.0 / len(raw), 0.5)
        shares = cap_shares(raw, cap)
        assert shares.max() <= cap + 1e-12
        assert shares.sum() == pytest.approx(1.0)
        uncapped = shares < cap - 1e-12
        if uncapped.sum() >= 2:  # uncapped entries keep their proportions
            ratio = shares[uncapped] / raw[uncapped]
            np.testing.assert_allclose(ratio, ratio[0])


def test_removing_one_client_moves_the_aggregate_by_at_most_the_sensitivity() -> None:
    rng = np.random.default_rng(2)
    worst = 0.0
    for _ in range(300):
        n, clip = int(rng.integers(12, 30)), float(rng.uniform(0.5, 3))
        cap = 2.0 / n
        rows, _ = clip_rows(rng.normal(size=(n, 8)) * 5, clip)
        raw = rng.uniform(0.2, 3.0, size=n)
        full = cap_shares(raw, cap) @ rows
        j = int(rng.integers(n))
        keep = np.arange(n) != j
        without = cap_shares(raw[keep], cap) @ rows[keep]
        ratio = np.linalg.norm(full - without) / weighted_mean_sensitivity(cap, clip)
        worst = max(worst, ratio)
    assert worst <= 1.0 + 1e-9


def test_noise_standard_deviation_matches_its_calibration() -> None:
    strategy = CentralDP(
        ScreenedFedAvg(), noise_multiplier=1.5, clip_norm=2.0, max_share=0.25, seed=7
    )
    d = 100_000
    outcome = strategy.aggregate_updates(1, batch_of(np.zeros((8, d))))
    expected = 1.5 * weighted_mean_sensitivity(0.25, 2.0)  # z * 2 * w_max * C = 1.5
    assert strategy.last_sensitivity == pytest.approx(1.0)
    assert outcome.delta.std() == pytest.approx(expected, rel=0.02)
    assert abs(outcome.delta.mean()) < 4 * expected / np.sqrt(d)


def test_without_noise_the_aggregate_is_the_capped_mean_of_clipped_updates() -> None:
    strategy = CentralDP(
        ScreenedFedAvg(), noise_multiplier=0.0, clip_norm=1.0, max_share=0.5
    )
    deltas = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.1]])  # norms 5, 0.5, 0.1
    outcome = strategy.aggregate_updates(1, batch_of(deltas, [80, 10, 10]))
    shares = cap_shares(np.array([80.0, 10, 10]), 0.5)  # [0.5, 0.25, 0.25]
    clipped = np.array([[0.6, 0.8], [0.3, 0.4], [0.0, 0.1]])
    np.testing.assert_allclose(outcome.delta, shares @ clipped)
    assert outcome.scores[0]["update-norm"] == pytest.approx(5.0)


def test_epsilon_grows_with_rounds_and_falls_with_noise() -> None:
    def spent(z: float, rounds: int) -> float:
        accountant = CentralPrivacyAccountant(z, sample_rate=0.5, delta=1e-5)
        for _ in range(rounds):
            accountant.step()
        return accountant.epsilon

    assert spent(1.0, 0) == 0.0
    assert spent(1.0, 1) < spent(1.0, 5) < spent(1.0, 20)
    assert spent(0.8, 10) > spent(1.2, 10) > spent(3.0, 10)


def test_strategy_epsilon_advances_one_step_per_round() -> None:
    strategy = CentralDP(ScreenedFedAvg(), noise_multiplier=1.0, max_share=0.5)
    batch = batch_of(np.ones((4, 3)))
    seen = []
    for r in (1, 2, 3):
        strategy.aggregate_updates(r, batch)
        seen.append(strategy.epsilon)
    assert 0 < seen[0] < seen[1] < seen[2]


def test_adaptive_clip_norm_tracks_the_quantile() -> None:
    norms = np.linspace(1.0, 10.0, 101)  # median 5.5
    clipping = AdaptiveClipNorm(clip_norm=0.5, target_quantile=0.5, learning_rate=0.3)
    rng = np.random.default_rng(0)
    for _ in range(200):
        clipping.update(norms, rng)
    assert clipping.clip_norm == pytest.approx(5.5, rel=0.1)


def test_adaptive_clipping_is_accounted_as_both_noises() -> None:
    # Releasing the noisy count beside the aggregate must cost privacy: the same
    # aggregate noise spends more ε with adaptive clipping than without.
    batch = batch_of(np.ones((4, 3)))
    fixed = CentralDP(ScreenedFedAvg(), noise_multiplier=1.0, max_share=0.5)
    adaptive = CentralDP(
        ScreenedFedAvg(),
        noise_multiplier=1.0,
        max_share=0.5,
        adaptive_clipping=True,
        clip_count_noise=2.0,
    )
    by_hand = CentralPrivacyAccountant(
        (1.0**-2 + 2.0**-2) ** -0.5, sample_rate=1.0, delta=1e-5
    )
    for r in (1, 2, 3):
        fixed.aggregate_updates(r, batch)
        adaptive.aggregate_updates(r, batch)
        by_hand.step()
    assert adaptive.epsilon > fixed.epsilon
    assert adaptive.epsilon == pytest.approx(by_hand.epsilon)
    with pytest.raises(ValueError, match="clip_count_noise > 0"):
        CentralDP(ScreenedFedAvg(), adaptive_clipping=True, clip_count_noise=0.0)


def test_planned_update_noise_with_the_count_spends_the_planned_total() -> None:
    z = update_noise_multiplier_for(2.0, 50.0)
    assert z > 2.0
    assert combined_noise_multiplier(z, 50.0) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="must exceed"):
        update_noise_multiplier_for(2.0, 1.5)


def test_dp_variant_is_built_once_and_validates() -> None:
    private = CentralDP(ScreenedFedAvg())
    assert isinstance(private, CentralDP) and isinstance(
        private.strategy, ScreenedFedAvg
    )
    with pytest.raises(TypeError, match="ScreenedFedAvg"):
        CentralDP(private)  # type: ignore[arg-type]  # privatised once, not twice
    with pytest.raises(ValueError, match="max_share"):
        CentralDP(ScreenedFedAvg(), max_share=0.0)


def test_a_round_the_rule_uses_nobody_in_spends_no_privacy() -> None:
    class RejectsAll(ScreenedFedAvg):
        def aggregate_updates(
            self, server_round: int, batch: UpdateBatch
        ) -> AggregationOutcome:
            rows = batch.size
            return AggregationOutcome(
                np.zeros(batch.deltas.shape[1]),
                np.zeros(rows),
                (Verdict.REJECTED,) * rows,
                ("no",) * rows,
                ({},) * rows,
            )

    strategy = CentralDP(RejectsAll(), noise_multiplier=1.0, max_share=0.5, seed=1)
    outcome = strategy.aggregate_updates(1, batch_of(np.ones((4, 3))))
    assert outcome.verdicts == (Verdict.REJECTED,) * 4
    assert not outcome.delta.any()  # no noise drawn
    assert strategy.epsilon == 0.0 and strategy.last_sensitivity == 0.0


def test_wrappers_nest_and_read_through_to_the_strategy() -> None:
    store = InMemoryStore()
    trusted = TrustedFedAvg(recorder=store, fraction_train=0.5)
    private = CentralDP(trusted, noise_multiplier=1.0, max_share=0.5)
    outer = StrategyWrapper(private)
    assert outer.innermost() is trusted
    assert outer.recorder is store and outer.fraction_train == 0.5
    assert outer.reputations() == []
    assert outer.epsilon == private.epsilon == 0.0 and outer.delta == 1e-5
    assert private.privacy_accountant.sample_rate == 0.5
    with pytest.raises(AttributeError):
        _ = outer.no_such_setting


def test_build_strategy_holds_the_configured_strategy_in_one_dp_wrapper() -> None:
    from flp2p.config import RunSettings, build_strategy, compose

    settings = RunSettings.from_config(
        compose(["strategy=trusted", "privacy=central", "attack=none", "clients=8"])
    )
    built: list[object] = []

    def wrap(strategy: object) -> StrategyWrapper:
        built.append(strategy)
        return StrategyWrapper(strategy)  # type: ignore[arg-type]

    strategy = build_strategy(settings, wrap)
    (private,) = built  # built once, wrapped once
    assert isinstance(private, CentralDP)
    assert type(private.strategy) is TrustedFedAvg  # no run-time class
    assert private.max_share == pytest.approx(min(1.0, 2.0 / 8))
    # flp2p.app.privacy_spent reads epsilon/delta off whatever was built.
    assert hasattr(strategy, "epsilon") and strategy.epsilon == 0.0
    assert strategy.delta == settings.privacy.delta
