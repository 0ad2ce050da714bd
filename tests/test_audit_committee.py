"""Audit committees: deterministic, aggregator-free, tier-weighted, short when few."""

from __future__ import annotations

import ast
import hashlib
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import flp2p.audit
from flp2p.audit import (
    COMMITTEE_TIER_WEIGHTS,
    Committee,
    draw_committee,
    finality_threshold,
)
from strategies.records import Tier


def _ids(count: int) -> list[str]:
    return [hashlib.sha256(f"peer-{i}".encode()).hexdigest() for i in range(count)]


PEERS = _ids(10)
AGGREGATOR = PEERS[0]


def _seed(n: int) -> str:
    return hashlib.sha256(f"block-{n}".encode()).hexdigest()


def test_same_inputs_same_committee_whatever_the_input_order() -> None:
    tiers = {PEERS[3]: Tier.GOLD, PEERS[5]: Tier.SILVER}
    first = draw_committee(PEERS, AGGREGATOR, _seed(1), tiers, k=3)
    shuffled = list(reversed(PEERS)) + PEERS[:2]  # order and repeats ignored
    again = draw_committee(shuffled, AGGREGATOR, _seed(1), dict(tiers), k=3)
    assert first == again
    assert len(first.members) == 3 == len(set(first.members))
    assert draw_committee(PEERS, AGGREGATOR, _seed(2), tiers, k=3) != first


def test_same_committee_in_a_fresh_process() -> None:
    """No process state (hash randomisation, RNG) enters the draw."""
    code = (
        "import hashlib;from flp2p.audit import draw_committee;"
        "ids=[hashlib.sha256(f'peer-{i}'.encode()).hexdigest() for i in range(10)];"
        "seed=hashlib.sha256(b'block-1').hexdigest();"
        "print(','.join(draw_committee(ids, ids[0], seed, k=4).members))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    ).stdout.strip()
    assert out.split(",") == list(
        draw_committee(PEERS, AGGREGATOR, _seed(1), k=4).members
    )


def test_aggregator_is_never_drawn() -> None:
    for n in range(200):
        committee = draw_committee(PEERS, AGGREGATOR, _seed(n), k=5)
        assert AGGREGATOR not in committee.members
        assert committee.aggregator == AGGREGATOR
    # Even when it is the highest tier by far.
    tiers = {AGGREGATOR: Tier.PLATINUM}
    assert AGGREGATOR not in draw_committee(PEERS, AGGREGATOR, _seed(0), tiers, k=9)


def test_higher_tiers_are_drawn_more_often() -> None:
    """Over many seeds, draw frequency rises with the tier weight."""
    candidates = _ids(9)
    aggregator = "f" * 64
    order = [Tier.BRONZE, Tier.SILVER, Tier.GOLD, Tier.PLATINUM]
    tiers = {node: order[i % 4] for i, node in enumerate(candidates[:8])}
    # candidates[8] has no known tier: it counts as Bronze.
    counts: Counter[Tier] = Counter()
    seeds = 4000
    for n in range(seeds):
        for member in draw_committee(
            candidates, aggregator, _seed(n), tiers, k=1
        ).members:
            counts[tiers.get(member, Tier.BRONZE)] += 1
    # With k = 1, P(tier) = peers of the tier * weight / total weight.
    peers_of = Counter(tiers.get(c, Tier.BRONZE) for c in candidates)
    total = sum(peers_of[t] * COMMITTEE_TIER_WEIGHTS[t] for t in Tier)
    for tier in Tier:
        expected = seeds * peers_of[tier] * COMMITTEE_TIER_WEIGHTS[tier] / total
        sigma = (expected * (1 - expected / seeds)) ** 0.5
        assert abs(counts[tier] - expected) < 5 * sigma, (tier, counts, expected)
    per_peer = {t: counts[t] / peers_of[t] for t in Tier}
    assert per_peer[Tier.BRONZE] < per_peer[Tier.SILVER] < per_peer[Tier.GOLD]
    assert per_peer[Tier.GOLD] < per_peer[Tier.PLATINUM]


def test_every_candidate_can_be_drawn_and_none_twice() -> None:
    seen: set[str] = set()
    for n in range(300):
        members = draw_committee(PEERS, AGGREGATOR, _seed(n), k=3).members
        assert len(set(members)) == len(members)
        seen.update(members)
    assert seen == set(PEERS[1:])


def test_fewer_candidates_than_k_gives_all_of_them_and_says_so() -> None:
    committee = draw_committee(PEERS[:3], AGGREGATOR, _seed(1), k=5)
    assert sorted(committee.members) == sorted(PEERS[1:3])
    assert committee.is_short
    assert "only 2 eligible peer(s)" in committee.shortfall
    assert "5 auditors requested" in committee.shortfall
    full = draw_committee(PEERS, AGGREGATOR, _seed(1), k=5)
    assert not full.is_short and full.shortfall == ""


def test_no_candidates_and_k_zero_give_empty_committees() -> None:
    alone = draw_committee([AGGREGATOR], AGGREGATOR, _seed(1), k=3)
    assert alone.members == () and alone.threshold == 0 and alone.is_short
    off = draw_committee(PEERS, AGGREGATOR, _seed(1), k=0)
    assert off.members == () and not off.is_short


@pytest.mark.parametrize(
    ("members", "threshold"), [(0, 0), (1, 1), (2, 2), (3, 2), (4, 3), (5, 4), (6, 4)]
)
def test_threshold_is_ceil_two_thirds(members: int, threshold: int) -> None:
    assert finality_threshold(members) == threshold
    assert Committee(tuple(_ids(members)), members, "s", "a").threshold == threshold


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="size"):
        draw_committee(PEERS, AGGREGATOR, _seed(1), k=-1)
    with pytest.raises(ValueError, match="weights"):
        draw_committee(
            PEERS,
            AGGREGATOR,
            _seed(1),
            weights={**COMMITTEE_TIER_WEIGHTS, Tier.GOLD: 0},
        )
    with pytest.raises(ValueError):
        finality_threshold(-1)


def test_pure_audit_modules_import_neither_the_network_nor_the_runtime() -> None:
    """The ledger imports these, and the ledger must not pull in the DHT or peers."""
    package = Path(str(flp2p.audit.__file__)).parent
    for name in ("__init__", "committee", "statements", "finality"):
        tree = ast.parse((package / f"{name}.py").read_text())
        imported = {
            node.module if isinstance(node, ast.ImportFrom) else alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        }
        flp2p_modules = {m for m in imported if m and m.startswith("flp2p")}
        assert flp2p_modules <= {"flp2p.signatures"}, (name, flp2p_modules)
        assert "revocation" not in imported  # it imports the DHT
