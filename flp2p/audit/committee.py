"""Who audits a round: a committee drawn by a public seed, weighted by reputation tier.

Every peer evaluates the same pure function on public inputs — the federation's
aggregator-eligible node ids, the round's aggregator, the previous block's hash and
the reputation tiers recorded in the ledger — and so agrees on the committee without
exchanging a message. The aggregator cannot choose its auditors: the seed is fixed
by the block before the round, and it is excluded from its own committee.

The draw is integer arithmetic on SHA-256 outputs, so it is the same on every
machine (no floating point, no platform random generator). Draw ``j`` picks
candidate ``c`` among the set ``R`` of those not yet drawn with probability

.. math:: P(c) = w_{t(c)} \\big/ \\textstyle\\sum_{d \\in R} w_{t(d)}

(``t`` the reputation tier, ``w`` :data:`COMMITTEE_TIER_WEIGHTS`),

by mapping ``H_j = SHA-256(domain, seed, j)`` (a 256-bit integer) to
``H_j \\bmod W`` on the cumulative weights of the remaining candidates sorted by
node id (sequential weighted sampling without replacement; the modulo bias is below
``W / 2^256``). Higher tiers audit more often, as S001's "audits by higher-tier
nodes" asks, yet a Bronze peer can still be drawn, so a clique of high-tier peers
cannot keep everyone else out of every committee.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from strategies.records import Tier

DEFAULT_COMMITTEE_SIZE = 3
"""k, the auditors per round (issue 15 item 2)."""
COMMITTEE_TIER_WEIGHTS: Mapping[Tier, int] = {
    Tier.BRONZE: 1,
    Tier.SILVER: 2,
    Tier.GOLD: 3,
    Tier.PLATINUM: 4,
}
"""Integer draw weight of each tier (integers keep the draw exact everywhere)."""

# Hashed into the draw, never signed, hence not in flp2p.signatures.SIGNING_DOMAINS.
_DRAW_DOMAIN = b"flp2p/audit-committee/v1\n"


def finality_threshold(members: int) -> int:
    """⌈2m/3⌉: co-signatures (or accusations) needed from a committee of ``m``.

    With fewer than a third of the committee dishonest, the honest members alone
    reach it, and the dishonest ones alone do not.
    """
    if members < 0:
        raise ValueError(f"a committee cannot have {members} members")
    return (2 * members + 2) // 3


@dataclass(frozen=True)
class Committee:
    """The auditors of one round.

    Attributes
    ----------
    members : tuple[str, ...]
        Node ids in draw order (first drawn first).
    requested : int
        k, the size asked for.
    seed : str
        The public seed (the previous block's hash).
    aggregator : str
        Node id of the round's aggregator, never a member.
    """

    members: tuple[str, ...]
    requested: int
    seed: str
    aggregator: str

    @property
    def threshold(self) -> int:
        """:func:`finality_threshold` of the members actually drawn."""
        return finality_threshold(len(self.members))

    @property
    def is_short(self) -> bool:
        """Whether fewer peers were eligible than ``requested``."""
        return len(self.members) < self.requested

    @property
    def shortfall(self) -> str:
        """Why the committee is smaller than asked ("" when it is not)."""
        if not self.is_short:
            return ""
        return (
            f"only {len(self.members)} eligible peer(s) besides the aggregator, "
            f"{self.requested} auditors requested: all of them audit"
        )

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.members


def draw_committee(
    eligible: Iterable[str],
    aggregator: str,
    seed: str,
    tiers: Mapping[str, Tier] | None = None,
    k: int = DEFAULT_COMMITTEE_SIZE,
    weights: Mapping[Tier, int] = COMMITTEE_TIER_WEIGHTS,
) -> Committee:
    """Draw ``k`` auditors from ``eligible`` minus ``aggregator``, without replacement.

    Parameters
    ----------
    eligible
        Aggregator-eligible node ids (the genesis' list); order and repeats do not
        matter.
    aggregator
        The round's lease holder, excluded.
    seed
        Public seed: the hash of the block before the round.
    tiers
        Reputation tier per node id from the ledger; unknown ids count as Bronze.
    k
        Committee size; when fewer candidates exist, all of them are the committee
        (:attr:`Committee.shortfall` says so).
    weights
        Positive integer weight per tier.

    Raises
    ------
    ValueError
        For a negative ``k`` or a tier weight that is not a positive integer.
    """
    if k < 0:
        raise ValueError(f"committee size must be >= 0, got {k}")
    if set(weights) != set(Tier) or any(
        isinstance(w, bool) or not isinstance(w, int) or w <= 0
        for w in weights.values()
    ):
        raise ValueError("weights must give every Tier a positive integer")
    known = tiers or {}
    remaining = sorted(set(eligible) - {aggregator})
    members: list[str] = []
    for draw in range(min(k, len(remaining))):
        drawn = _weighted_pick(remaining, known, weights, _draw_value(seed, draw))
        members.append(remaining.pop(drawn))
    return Committee(tuple(members), k, seed, aggregator)


def _draw_value(seed: str, draw: int) -> int:
    digest = hashlib.sha256(_DRAW_DOMAIN + f"{seed}\n{draw}".encode()).digest()
    return int.from_bytes(digest, "big")


def _weighted_pick(
    candidates: list[str],
    tiers: Mapping[str, Tier],
    weights: Mapping[Tier, int],
    value: int,
) -> int:
    """Index of the candidate whose cumulative-weight interval holds ``value mod W``."""
    candidate_weights = [weights[tiers.get(c, Tier.BRONZE)] for c in candidates]
    point = value % sum(candidate_weights)
    for index, weight in enumerate(candidate_weights):
        if point < weight:
            return index
        point -= weight
    raise AssertionError("point lies below the total weight")  # pragma: no cover
