"""Reward formula: tokens = base × quality × tier multiplier, nothing for rejects."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flp2p.ledger import RewardPolicy, contribution_quality, round_rewards
from strategies.records import Contribution, Tier, Verdict


def contribution(
    identity: str,
    weight: float,
    verdict: Verdict = Verdict.ACCEPTED,
    examples: int = 10,
) -> Contribution:
    return Contribution(identity, 1, examples, "", {}, verdict, "", weight)


def test_quality_is_weight_relative_to_uniform_share_clamped() -> None:
    # Uniform share of 4 contributors is 0.25.
    assert contribution_quality(0.25, 4) == pytest.approx(1.0)
    assert contribution_quality(0.125, 4) == pytest.approx(0.5)
    assert contribution_quality(0.5, 4) == 1.0  # above uniform: clamped
    assert contribution_quality(0.0, 4) == 0.0
    assert contribution_quality(0.3, 0) == 0.0


def test_hand_computed_round() -> None:
    contributions = [
        contribution("a", 0.4),
        contribution("b", 0.3, Verdict.DOWNWEIGHTED),
        contribution("c", 0.2),
        contribution("d", 0.0, Verdict.REJECTED),
        contribution("e", 0.1),
    ]
    tiers = {"a": Tier.GOLD, "c": Tier.SILVER, "d": Tier.PLATINUM, "e": Tier.PLATINUM}
    rewards = round_rewards(contributions, tiers, RewardPolicy(base_tokens=10.0))
    # 4 contributors with weight > 0: quality = min(1, 4w).
    # a: 1.0 × 1.5 × 10; b: 1.0 × 1.0 (bronze, unlisted) × 10; c: 0.8 × 1.25 × 10;
    # d: rejected → 0 even at platinum; e: 0.4 × 2.0 × 10.
    assert [r.tokens for r in rewards] == pytest.approx([15.0, 10.0, 10.0, 0.0, 8.0])
    assert [r.quality for r in rewards] == pytest.approx([1.0, 1.0, 0.8, 0.0, 0.4])
    assert [r.tier for r in rewards] == [
        Tier.GOLD,
        Tier.BRONZE,
        Tier.SILVER,
        Tier.PLATINUM,
        Tier.PLATINUM,
    ]


def test_free_rider_and_malformed_earn_nothing() -> None:
    rewards = round_rewards(
        [
            # A free-rider the strategy rejected, and a reply claiming no examples
            # that somehow kept weight: neither may be paid.
            contribution("free", 0.5, Verdict.REJECTED),
            contribution("empty", 0.5, examples=0),
            contribution("honest", 0.5),
        ],
        {},
        RewardPolicy(),
    )
    assert [r.tokens for r in rewards][:2] == [0.0, 0.0]
    # Only the honest one counts as a contributor: uniform share 1, weight 0.5.
    assert rewards[2].quality == 0.5
    assert rewards[2].tokens == 0.5 * RewardPolicy().base_tokens


@pytest.mark.parametrize(
    "field", ["base_tokens", "silver_multiplier", "platinum_multiplier"]
)
@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf])
def test_policy_refuses_bad_parameters(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        RewardPolicy(**{field: value})


@given(
    weights=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30),
    rejected=st.lists(st.booleans(), min_size=30, max_size=30),
)
def test_rewards_bounded_and_zero_for_rejected(
    weights: list[float], rejected: list[bool]
) -> None:
    total = sum(weights) or 1.0
    contributions = [
        contribution(
            f"p{i}",
            0.0 if rejected[i] else w / total,
            Verdict.REJECTED if rejected[i] else Verdict.ACCEPTED,
        )
        for i, w in enumerate(weights)
    ]
    policy = RewardPolicy()
    rewards = round_rewards(contributions, {}, policy)
    contributors = sum(1 for c in contributions if c.weight > 0)
    for c, r in zip(contributions, rewards, strict=True):
        assert 0.0 <= r.quality <= 1.0
        assert 0.0 <= r.tokens <= policy.base_tokens * policy.bronze_multiplier
        if c.weight == 0.0:
            assert r.tokens == 0.0
        else:
            assert r.quality == pytest.approx(min(1.0, c.weight * contributors))
    # Qualities are shares of a unit total, so they cannot exceed the head count.
    assert sum(r.quality for r in rewards) <= contributors + 1e-9
