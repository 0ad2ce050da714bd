"""Who takes over when the aggregator lease lapses: a deterministic election.

Every eligible peer evaluates the same pure function on the same inputs — the
genesis' eligible ids, the ids with a live node record, the reputation tiers it
knows — and so agrees on one successor without exchanging a message (the
"bully"-style rule of Garcia-Molina 1982, with the ranking fixed in advance instead
of negotiated). Ties are impossible: ids are distinct.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from strategies.records import Tier

TIER_RANK: Mapping[Tier, int] = {tier: rank for rank, tier in enumerate(Tier)}
"""Tiers in increasing standing (the order :class:`Tier` declares them)."""


def successor_rank(node_id: str, tier: Tier) -> tuple[int, str]:
    """Sort key of a candidate: higher tier first, then the smaller node id.

    Returns a key that sorts the preferred candidate first (``min``).
    """
    return (-TIER_RANK[tier], node_id)


def elect_successor(
    eligible: Iterable[str],
    live: Iterable[str],
    failed: Iterable[str] = (),
    tiers: Mapping[str, Tier] | None = None,
) -> str | None:
    """The eligible, live, not-failed peer with the best :func:`successor_rank`.

    Parameters
    ----------
    eligible
        Node ids the genesis allows to hold the lease.
    live
        Node ids with a live node record in the DHT.
    failed
        Holders of lapsed leases: their node record may outlive them by a TTL, so
        liveness alone would re-elect a dead aggregator.
    tiers
        Reputation tier per node id (unknown ids count as :attr:`Tier.BRONZE`).

    Returns
    -------
    str or None
        The successor, or ``None`` when no candidate is left.
    """
    known = tiers or {}
    candidates = (set(eligible) & set(live)) - set(failed)
    if not candidates:
        return None
    return min(candidates, key=lambda n: successor_rank(n, known.get(n, Tier.BRONZE)))
