"""Tokens earned per contribution: ``base × quality × tier multiplier``.

Only contributions that entered the aggregate earn anything. A rejected reply, a
free-rider (the strategy rejects those) or a reply that claimed no examples earns
zero tokens; the strategy's reputation update has already charged it reputation, so
the ledger does not punish twice.

Quality is the contribution's aggregation weight relative to a uniform share,

.. math:: q_i = \\min\\bigl(1,\\; w_i \\cdot n\\bigr),

where :math:`w_i` is its normalised weight and :math:`n` the number of contributions
with positive weight in the round. A contribution that weighs at least as much as an
equal split earns full quality; one the strategy down-weighted (for a suspicious
score, low reputation or few examples) earns proportionally less. Because the
weights already fold in examples, reputation and verdict, quality needs no second
copy of those rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from strategies.records import Contribution, Tier, Verdict


@dataclass(frozen=True)
class RewardPolicy:
    """Parameters of the reward formula (mirrored in the Hydra config).

    Attributes
    ----------
    base_tokens : float
        Tokens for one full-quality contribution by a Bronze identity.
    bronze_multiplier, silver_multiplier, gold_multiplier, platinum_multiplier : float
        Multiplier for each reputation tier, so standing built over many rounds pays.
    """

    base_tokens: float = 10.0
    bronze_multiplier: float = 1.0
    silver_multiplier: float = 1.25
    gold_multiplier: float = 1.5
    platinum_multiplier: float = 2.0

    def __post_init__(self) -> None:
        for name in (
            "base_tokens",
            "bronze_multiplier",
            "silver_multiplier",
            "gold_multiplier",
            "platinum_multiplier",
        ):
            value = getattr(self, name)
            if not value >= 0.0 or value == float("inf"):
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")

    def multiplier(self, tier: Tier) -> float:
        """Multiplier of ``tier``."""
        return {
            Tier.BRONZE: self.bronze_multiplier,
            Tier.SILVER: self.silver_multiplier,
            Tier.GOLD: self.gold_multiplier,
            Tier.PLATINUM: self.platinum_multiplier,
        }[Tier(tier)]


@dataclass(frozen=True)
class Reward:
    """Tokens one contribution earned, and the factors that produced them."""

    identity: str
    quality: float
    tier: Tier
    multiplier: float
    tokens: float


def earns_reward(contribution: Contribution) -> bool:
    """Whether ``contribution`` can earn tokens at all (entered the aggregate)."""
    return (
        contribution.verdict is not Verdict.REJECTED
        and contribution.weight > 0.0
        and contribution.num_examples > 0
    )


def contribution_quality(weight: float, contributors: int) -> float:
    """Quality ``min(1, weight × contributors)`` in [0, 1] (see the module docstring).

    Parameters
    ----------
    weight : float
        Normalised aggregation weight of the contribution.
    contributors : int
        Number of contributions with positive weight in the round.
    """
    if contributors <= 0 or weight <= 0.0:
        return 0.0
    return min(1.0, weight * contributors)


def round_rewards(
    contributions: Sequence[Contribution],
    tiers: Mapping[str, Tier],
    policy: RewardPolicy,
) -> tuple[Reward, ...]:
    """Rewards of one round, aligned with ``contributions``.

    Parameters
    ----------
    contributions : Sequence[Contribution]
        The round's contributions, in report order.
    tiers : Mapping[str, Tier]
        Tier of each identity after this round's reputation update; identities not
        listed count as Bronze.
    policy : RewardPolicy
        Base and multipliers.
    """
    contributors = sum(1 for c in contributions if earns_reward(c))
    rewards = []
    for contribution in contributions:
        tier = Tier(tiers.get(contribution.identity, Tier.BRONZE))
        multiplier = policy.multiplier(tier)
        if earns_reward(contribution):
            quality = contribution_quality(contribution.weight, contributors)
        else:
            quality = 0.0
        tokens = policy.base_tokens * quality * multiplier
        rewards.append(Reward(contribution.identity, quality, tier, multiplier, tokens))
    return tuple(rewards)
