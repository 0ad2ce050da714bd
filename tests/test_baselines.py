"""The honest-only baseline leaves out exactly the attack's partitions."""

from __future__ import annotations

import numpy as np
import pytest

from flp2p.attacks import malicious_partitions
from flp2p.baselines import EXCLUDED_REASON, HonestOnlyFedAvg
from flp2p.client_mods import simulated_identity
from flp2p.config import RunSettings, build_strategy, compose
from strategies.base import InsufficientReplies, UpdateBatch
from strategies.records import Verdict

CLIENTS, SEED = 10, 3


def batch_from_partitions(partitions: list[int], examples: list[int]) -> UpdateBatch:
    rng = np.random.default_rng(0)
    deltas = rng.normal(size=(len(partitions), 5))
    deltas.setflags(write=False)
    return UpdateBatch(
        identities=tuple(simulated_identity(SEED, p) for p in partitions),
        node_ids=tuple(partitions),
        num_examples=np.array(examples, dtype=np.int64),
        deltas=deltas,
        digests=("",) * len(partitions),
        metrics=({},) * len(partitions),
        reference={"w": np.zeros(5)},
    )


def test_attackers_get_no_weight_and_the_rest_is_fedavg() -> None:
    strategy = HonestOnlyFedAvg(excluded_fraction=0.3, clients=CLIENTS, seed=SEED)
    attackers = malicious_partitions(CLIENTS, 0.3, SEED)
    assert len(attackers) == 3
    partitions = list(range(CLIENTS))
    examples = [10 * (p + 1) for p in partitions]
    batch = batch_from_partitions(partitions, examples)
    outcome = strategy.aggregate_updates(1, batch)
    honest = [p not in attackers for p in partitions]
    expected = np.where(honest, examples, 0) / sum(
        e for e, h in zip(examples, honest, strict=True) if h
    )
    np.testing.assert_allclose(outcome.weights, expected)
    np.testing.assert_allclose(outcome.delta, expected @ batch.deltas)
    for p, verdict, reason in zip(
        partitions, outcome.verdicts, outcome.reasons, strict=True
    ):
        rejected = p in attackers
        assert (verdict is Verdict.REJECTED) == rejected
        assert (reason == EXCLUDED_REASON) == rejected


def test_a_round_of_attackers_only_is_skipped() -> None:
    strategy = HonestOnlyFedAvg(excluded_fraction=0.3, clients=CLIENTS, seed=SEED)
    attackers = sorted(malicious_partitions(CLIENTS, 0.3, SEED))
    with pytest.raises(InsufficientReplies):
        strategy.aggregate_updates(1, batch_from_partitions(attackers, [5] * 3))


def test_config_builds_it_for_the_run() -> None:
    settings = RunSettings.from_config(
        compose(["strategy=honest_only", f"clients={CLIENTS}", f"seed={SEED}"])
    )
    strategy = build_strategy(settings)
    assert isinstance(strategy, HonestOnlyFedAvg)
    expected = {
        simulated_identity(SEED, p) for p in malicious_partitions(CLIENTS, 0.3, SEED)
    }
    assert strategy.excluded == expected


def test_ceiling_runs_keep_the_sweeps_seeds_and_attack_fraction() -> None:
    from benchmarks.robustness_matrix import ceiling_overrides

    overrides = ceiling_overrides(
        ["seed=0,1", "strategy=fedavg,trusted", "attack=alie", "attack.fraction=0.2"]
    )
    assert "seed=0,1" in overrides
    assert "strategy=honest_only" in overrides and "attack=none" in overrides
    assert not any(o.startswith(("strategy=fedavg", "attack=alie")) for o in overrides)
    assert "strategy.excluded_fraction=0.2" in overrides
