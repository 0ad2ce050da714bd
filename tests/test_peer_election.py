"""The successor election: hand-checked rankings, exclusions, order independence."""

from __future__ import annotations

import itertools
import random

from flp2p.peer.election import elect_successor, successor_rank
from strategies.records import Tier

A, B, C, D = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)


def test_smallest_id_wins_among_equals() -> None:
    assert elect_successor([C, A, B], live=[A, B, C]) == A


def test_higher_tier_beats_smaller_id() -> None:
    tiers = {A: Tier.SILVER, B: Tier.GOLD, C: Tier.GOLD}
    assert elect_successor([A, B, C], [A, B, C], tiers=tiers) == B


def test_unknown_tier_counts_as_bronze() -> None:
    assert elect_successor([A, B], [A, B], tiers={B: Tier.SILVER}) == B
    assert elect_successor([A, B], [A, B], tiers={B: Tier.BRONZE}) == A


def test_failed_holder_and_dead_peers_are_skipped() -> None:
    # A's node record may outlive it: the lapsed holder is excluded explicitly.
    assert elect_successor([A, B, C], live=[A, B, C], failed=[A]) == B
    assert elect_successor([A, B, C], live=[C], failed=[]) == C


def test_live_but_not_eligible_never_wins() -> None:
    assert elect_successor([B], live=[A, B]) == B
    assert elect_successor([B], live=[A]) is None


def test_no_candidate_left() -> None:
    assert elect_successor([A], live=[A], failed=[A]) is None
    assert elect_successor([], live=[A]) is None


def test_every_peer_agrees_whatever_order_it_saw() -> None:
    tiers = {A: Tier.GOLD, C: Tier.PLATINUM, D: Tier.PLATINUM}
    outcomes = {
        elect_successor(order, list(reversed(order)), failed=[D], tiers=tiers)
        for order in itertools.permutations([A, B, C, D])
    }
    assert outcomes == {C}


def test_matches_brute_force_over_random_federations() -> None:
    rng = random.Random(7)
    tiers_all = list(Tier)
    for _ in range(200):
        ids = [f"{rng.getrandbits(256):064x}" for _ in range(rng.randint(1, 6))]
        live = [i for i in ids if rng.random() < 0.7]
        failed = [i for i in ids if rng.random() < 0.2]
        tiers = {i: rng.choice(tiers_all) for i in ids if rng.random() < 0.8}
        expected = None
        for candidate in ids:  # pairwise: better tier, or same tier and smaller id
            if candidate not in live or candidate in failed:
                continue
            if expected is None:
                expected = candidate
                continue
            ours = tiers_all.index(tiers.get(candidate, Tier.BRONZE))
            best = tiers_all.index(tiers.get(expected, Tier.BRONZE))
            if ours > best or (ours == best and candidate < expected):
                expected = candidate
        assert elect_successor(ids, live, failed, tiers) == expected


def test_rank_orders_tier_before_id() -> None:
    assert successor_rank(B, Tier.PLATINUM) < successor_rank(A, Tier.GOLD)
    assert successor_rank(A, Tier.GOLD) < successor_rank(B, Tier.GOLD)
