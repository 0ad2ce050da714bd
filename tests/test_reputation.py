"""Reputation arithmetic: EMA, penalties, decay, tiers, bans, probation cap.

Every expected number is worked out by hand from the formulas in
:mod:`strategies.reputation` with the default :class:`ReputationPolicy`
(initial 0.5, α = 0.2, penalty 0.15, decay 0.01, ban below 0.15 for 10 rounds).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from strategies.records import (
    InMemoryStore,
    ReputationState,
    RoundReport,
    Tier,
    Verdict,
)
from strategies.reputation import (
    Judgement,
    ReputationBook,
    ReputationPolicy,
    cap_group_share,
    capped_examples,
    decayed_reputation,
    is_banned,
    on_probation,
    reputation_weights,
    tier_for,
    updated_reputation,
)

POLICY = ReputationPolicy()


def judged(
    state: ReputationState | None, verdict: Verdict, server_round: int = 1
) -> ReputationState:
    return updated_reputation(
        state, "peer", verdict, POLICY.quality_of(verdict), server_round, POLICY
    )


def established(identity: str, score: float = 0.8) -> ReputationState:
    return ReputationState(
        identity,
        score,
        tier_for(score, POLICY),
        rounds_participated=5,
        rounds_accepted=5,
    )


# ------------------------------------------------------------------- EMA, penalty


@pytest.mark.parametrize(
    ("verdict", "expected"),
    [
        (Verdict.ACCEPTED, 0.95 * 0.5 + 0.05 * 1.0),
        (Verdict.DOWNWEIGHTED, 0.8 * 0.5 + 0.2 * 0.5),
        (Verdict.REJECTED, 0.8 * 0.5 + 0.2 * 0.0 - 0.15),
    ],
)
def test_first_update_of_a_newcomer(verdict: Verdict, expected: float) -> None:
    state = judged(None, verdict, server_round=3)
    assert state.score == pytest.approx(expected)
    assert (state.first_round, state.last_round, state.rounds_participated) == (3, 3, 1)
    assert state.rounds_rejected == (1 if verdict is Verdict.REJECTED else 0)
    assert state.rounds_accepted == (0 if verdict is Verdict.REJECTED else 1)


def test_ema_converges_towards_quality() -> None:
    state = None
    for server_round in range(1, 4):
        state = judged(state, Verdict.ACCEPTED, server_round)
    # Gains are slow: 0.5 → 0.525 → 0.54875 → 0.5713125
    assert state is not None
    assert state.score == pytest.approx(0.5713125)
    assert state.tier is Tier.SILVER


def test_score_stays_in_unit_interval() -> None:
    state = ReputationState("peer", 0.05)
    assert judged(state, Verdict.REJECTED).score == 0.0
    state = ReputationState("peer", 1.0)
    assert judged(state, Verdict.ACCEPTED).score == 1.0


def test_state_of_another_identity_is_refused() -> None:
    with pytest.raises(ValueError, match="given for"):
        updated_reputation(
            ReputationState("other", 0.5), "peer", Verdict.ACCEPTED, 1.0, 1, POLICY
        )


# -------------------------------------------------------------------------- tiers


@pytest.mark.parametrize(
    ("score", "tier"),
    [
        (0.0, Tier.BRONZE),
        (0.5499, Tier.BRONZE),
        (0.55, Tier.SILVER),
        (0.7499, Tier.SILVER),
        (0.75, Tier.GOLD),
        (0.8999, Tier.GOLD),
        (0.9, Tier.PLATINUM),
        (1.0, Tier.PLATINUM),
    ],
)
def test_tier_thresholds(score: float, tier: Tier) -> None:
    assert tier_for(score, POLICY) is tier


def test_policy_refuses_unordered_tiers_and_bad_knobs() -> None:
    with pytest.raises(ValueError, match="increase strictly"):
        ReputationPolicy(
            tier_thresholds={
                Tier.BRONZE: 0.0,
                Tier.SILVER: 0.8,
                Tier.GOLD: 0.7,
                Tier.PLATINUM: 0.9,
            }
        )
    with pytest.raises(ValueError, match="ema_rate"):
        ReputationPolicy(ema_rate=1.5)
    with pytest.raises(ValueError, match="probation_share"):
        ReputationPolicy(probation_share=0.0)
    with pytest.raises(ValueError, match="example_cap_ratio"):
        ReputationPolicy(example_cap_ratio=0.5)


# ------------------------------------------------------------------ decay and bans


def test_absence_decays_towards_initial_score_only_from_above() -> None:
    assert decayed_reputation(established("a", 0.8), POLICY).score == pytest.approx(
        0.79
    )
    assert decayed_reputation(established("a", 0.505), POLICY).score == 0.5
    low = established("a", 0.3)
    assert decayed_reputation(low, POLICY) is low  # hiding repairs nothing


def test_tier_follows_decay() -> None:
    state = established("a", 0.755)
    assert state.tier is Tier.GOLD
    assert decayed_reputation(state, POLICY).tier is Tier.SILVER


def test_identity_rejected_every_other_round_is_banned() -> None:
    """The pattern of sign-flippers on real rounds: rejected, accepted, rejected …

    By hand (losses fast, gains slow): 0.5 → r 0.25 → a 0.2875 → r 0.08 < 0.15:
    banned at round 3.
    """
    state = None
    for server_round in range(1, 4):
        verdict = Verdict.REJECTED if server_round % 2 else Verdict.ACCEPTED
        state = judged(state, verdict, server_round)
        assert state.banned_until == (13 if server_round == 3 else 0)
    assert state is not None and state.score == pytest.approx(0.08)


def test_ban_after_repeated_rejections_and_unban_after_ban_rounds() -> None:
    first = judged(None, Verdict.REJECTED, server_round=1)  # 0.4 − 0.15 = 0.25
    assert first.banned_until == 0
    second = judged(first, Verdict.REJECTED, server_round=2)  # 0.2 − 0.15 = 0.05
    assert second.score == pytest.approx(0.05)
    assert second.banned_until == 12
    assert is_banned(second, 11)
    assert not is_banned(second, 12)
    assert not is_banned(None, 5)
    # After the ban an accepted round does not ban again (the score rebuilds) ...
    back = judged(second, Verdict.ACCEPTED, 12)
    assert back.score < POLICY.ban_threshold
    assert back.banned_until == 12
    # ... one more rejection bans again at once.
    assert judged(second, Verdict.REJECTED, 12).banned_until == 22


# ------------------------------------------------------------- weights, probation


def test_probation_counts_accepted_rounds() -> None:
    assert on_probation(None, POLICY)
    rejected_often = ReputationState("s", 0.5, rounds_participated=9, rounds_rejected=9)
    assert on_probation(rejected_often, POLICY)
    assert not on_probation(established("a"), POLICY)


def test_cap_group_share_hand_case() -> None:
    capped = cap_group_share(np.ones(4), np.array([True, True, True, False]), share=0.2)
    # s = 0.2 · 1 / (0.8 · 3) = 1/12
    np.testing.assert_allclose(capped, [1 / 12, 1 / 12, 1 / 12, 1.0])
    assert capped[:3].sum() / capped.sum() == pytest.approx(0.2)


def test_cap_group_share_leaves_small_or_lone_groups_alone() -> None:
    weights = np.array([1.0, 9.0])
    np.testing.assert_array_equal(
        cap_group_share(weights, np.array([True, False]), 0.2), weights
    )
    np.testing.assert_array_equal(
        cap_group_share(weights, np.array([True, True]), 0.2), weights
    )


def test_capped_examples_hand_case() -> None:
    np.testing.assert_array_equal(
        capped_examples(np.array([100, 100, 100, 10_000]), 2.0), [100, 100, 100, 200]
    )
    np.testing.assert_array_equal(capped_examples(np.array([1, 50]), None), [1, 50])


def test_reputation_weights_formula() -> None:
    states = [established("gold", 0.8), established("silver", 0.6), None]
    factors = np.array([1.0, 0.25, 1.0])
    examples = np.array([100, 200, 100])
    # gold 100·1.25·1 = 125; silver 200·1.0·0.25 = 50; newcomer 100·0.5·1 = 50 —
    # the newcomer's share 50/225 > 0.2 → scaled by 0.2·175/(0.8·50) = 0.875 → 43.75
    expected = np.array([125.0, 50.0, 43.75]) / 218.75
    weights = reputation_weights(examples, states, factors, POLICY)
    np.testing.assert_allclose(weights, expected)


def test_rejected_rows_get_zero_weight_and_do_not_move_the_example_cap() -> None:
    states = [established(f"h{i}") for i in range(3)] + [None] * 3
    examples = np.array([100, 100, 100, 1, 1, 1])
    factors = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    weights = reputation_weights(examples, states, factors, POLICY)
    np.testing.assert_allclose(weights, [1 / 3, 1 / 3, 1 / 3, 0, 0, 0])


def test_fifty_fresh_sybils_cannot_outweigh_ten_established_clients() -> None:
    honest = [established(f"h{i}", 0.8) for i in range(10)]
    sybils: list[ReputationState | None] = [None] * 50
    examples = np.array([100] * 10 + [10_000] * 50)
    weights = reputation_weights(
        examples, [*honest, *sybils], np.ones(60), ReputationPolicy()
    )
    assert weights.sum() == pytest.approx(1.0)
    assert weights[10:].sum() == pytest.approx(POLICY.probation_share)
    # within each group the split stays proportional
    np.testing.assert_allclose(weights[:10], weights[0])


def test_weights_all_zero_when_everyone_is_rejected() -> None:
    weights = reputation_weights(np.array([5, 5]), [None, None], np.zeros(2), POLICY)
    np.testing.assert_array_equal(weights, 0.0)


# ------------------------------------------------------------------------- book


def test_book_updates_judged_decays_absent_and_skips_banned() -> None:
    store = InMemoryStore()
    banned = ReputationState("banned", 0.1, banned_until=20)
    store.put_reputations([established("absent", 0.8), established("honest"), banned])
    book = ReputationBook(POLICY, store)
    states = book.next_states(
        5,
        [
            Judgement("honest", Verdict.ACCEPTED),
            Judgement("newcomer", Verdict.REJECTED),
            Judgement("banned", Verdict.REJECTED, banned=True),
        ],
        count_accepted=True,
    )
    by_identity = {state.identity: state for state in states}
    assert by_identity["honest"].score == pytest.approx(0.95 * 0.8 + 0.05)
    assert by_identity["newcomer"].score == pytest.approx(0.8 * 0.5 - 0.15)
    assert by_identity["absent"].score == pytest.approx(0.79)
    assert "banned" not in by_identity


def test_book_does_not_reward_acceptance_in_a_round_not_aggregated() -> None:
    book = ReputationBook(POLICY, InMemoryStore())
    states = book.next_states(
        1,
        [Judgement("a", Verdict.ACCEPTED), Judgement("r", Verdict.REJECTED)],
        count_accepted=False,
    )
    assert [state.identity for state in states] == ["r"]


class SeparateRecorder:
    """A recorder that is not the store (and checks the store was written first)."""

    def __init__(self, store: InMemoryStore) -> None:
        self.store = store
        self.seen: list[tuple[RoundReport, list[ReputationState]]] = []

    def record_round(
        self, report: RoundReport, reputations: Sequence[ReputationState]
    ) -> None:
        for state in reputations:
            assert self.store.get_reputation(state.identity) == state
        self.seen.append((report, list(reputations)))


def test_commit_writes_store_then_recorder() -> None:
    store = InMemoryStore()
    recorder = SeparateRecorder(store)
    book = ReputationBook(POLICY, store)
    states = [established("a")]
    report = RoundReport(1, (), None)
    book.commit(report, states, recorder)
    assert recorder.seen == [(report, states)]
    assert store.rounds == []


def test_commit_through_a_store_that_is_also_the_recorder() -> None:
    store = InMemoryStore()
    book = ReputationBook(POLICY, store)
    report = RoundReport(1, (), None)
    book.commit(report, [established("a")], store)
    assert store.rounds == [report]
    assert store.get_reputation("a") == established("a")


# ------------------------------------------------------- farming (issue 14, item 2)


def test_probation_ends_on_earned_score_not_on_a_count() -> None:
    """Three accepted rounds used to end probation; now the score must reach
    ``graduation_score`` too: 5 clean rounds at ``gain_rate`` 0.05 from 0.5."""
    state = None
    for server_round in range(1, 6):
        state = judged(state, Verdict.ACCEPTED, server_round)
        assert on_probation(state, POLICY) == (server_round < 5), server_round
    served = ReputationState("s", 0.55, rounds_participated=9, rounds_accepted=9)
    assert on_probation(served, POLICY)


def test_losses_are_fast_and_gains_slow() -> None:
    platinum = established("peer", 0.95)
    assert platinum.tier is Tier.PLATINUM
    caught = judged(platinum, Verdict.DOWNWEIGHTED, server_round=6)
    assert caught.score <= POLICY.initial_score
    assert on_probation(caught, POLICY)
    gained = judged(ReputationState("peer", 0.5), Verdict.ACCEPTED).score - 0.5
    lost = 0.95 - caught.score
    assert lost > 10 * gained


def test_a_sleeper_loses_its_weight_within_one_round_of_turning() -> None:
    """Ten rounds honest (Platinum), caught once: next round it weighs what a
    newcomer weighs, not what its farmed tier did."""
    honest = [established(f"h{i}", 0.8) for i in range(9)]
    sleeper: ReputationState | None = None
    for server_round in range(1, 41):
        sleeper = judged(sleeper, Verdict.ACCEPTED, server_round)
    assert sleeper is not None and sleeper.tier is Tier.PLATINUM
    examples, factors = np.full(10, 100.0), np.ones(10)
    before = reputation_weights(examples, [sleeper, *honest], factors, POLICY)[0]
    turned = judged(sleeper, Verdict.DOWNWEIGHTED, server_round=41)
    after = reputation_weights(examples, [turned, *honest], factors, POLICY)[0]
    newcomer = reputation_weights(examples, [None, *honest], factors, POLICY)[0]
    assert before > 1.0 / 10
    assert after == pytest.approx(newcomer)
    assert after < before / 2


def test_a_wave_of_new_identities_never_exceeds_the_probation_cap() -> None:
    """20 founders; 10 Sybils join at round 10 and look honest for 60 rounds: their
    joint share stays at most ``probation_share`` after they graduate too."""
    founders: list[ReputationState | None] = []
    for i in range(20):
        state = None
        for server_round in range(1, 10):
            state = updated_reputation(
                state, f"h{i}", Verdict.ACCEPTED, 1.0, server_round, POLICY
            )
        founders.append(state)
    wave: list[ReputationState | None] = [None] * 10
    examples, factors = np.full(30, 100.0), np.ones(30)
    graduated = False
    for server_round in range(10, 70):
        weights = reputation_weights(examples, [*wave, *founders], factors, POLICY)
        assert weights[:10].sum() <= POLICY.probation_share + 1e-12, server_round
        wave = [
            updated_reputation(
                state, f"s{i}", Verdict.ACCEPTED, 1.0, server_round, POLICY
            )
            for i, state in enumerate(wave)
        ]
        founders = [
            updated_reputation(
                state, state.identity, Verdict.ACCEPTED, 1.0, server_round, POLICY
            )
            for state in founders
            if state is not None
        ]
        graduated = graduated or not on_probation(wave[0], POLICY)
    assert graduated  # the cap held beyond probation, not only during it
