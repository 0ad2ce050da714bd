"""Random training rounds of every exported strategy, reduced to SHA-256 digests.

``tests/test_deterministic_rounds.py`` runs :func:`strategy_digests` here and in a
fresh interpreter (``python tests/helpers_rounds.py ROUNDS --shuffle``) with other
BLAS/OpenMP thread counts, and compares: an auditor recomputing a round must get the
aggregator's model bit for bit. Each strategy runs its rounds in sequence from one
seed, so the state it carries between rounds (reputations, update history, the last
aggregate) is part of what is compared. Only numpy and flwr are imported, so that
the child's thread settings are the ones its BLAS starts with.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import Strategy
from flwr.supercore.task_identity import TaskIdentity

if __name__ == "__main__":  # run as a script: import this worktree's packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import strategies
from strategies import aggregators
from strategies.preaggregation import Bucketing
from strategies.records import (
    ARRAYS_KEY,
    IDENTITY_ID,
    IDENTITY_KEY,
    METRICS_KEY,
    NUM_EXAMPLES_KEY,
    update_sha256,
)

PEERS = 14
"""Identities the rounds draw their participants from (reputations accumulate)."""
SHAPES: Mapping[str, tuple[int, ...]] = {
    "dense.weight": (96, 240),
    "dense.bias": (240,),
}
"""The model: 23 280 float32 parameters, enough for BLAS to split work over threads."""

STRATEGY_FACTORIES: Mapping[str, Callable[[], Strategy]] = {
    "ScreenedFedAvg": lambda: strategies.ScreenedFedAvg(),
    "RobustRuleFedAvg": lambda: strategies.RobustRuleFedAvg(
        rule=aggregators.TrimmedMean(0.2), preaggregator=Bucketing(2, seed=7)
    ),
    "Median": lambda: strategies.Median(),
    "TrimmedMean": lambda: strategies.TrimmedMean(beta=0.2),
    "GeometricMedian": lambda: strategies.GeometricMedian(),
    "CenteredClipping": lambda: strategies.CenteredClipping(tau=0.5, iterations=3),
    "Krum": lambda: strategies.Krum(num_malicious_nodes=1),
    "MultiKrum": lambda: strategies.MultiKrum(
        num_malicious_nodes=1, num_nodes_to_select=3
    ),
    "Bulyan": lambda: strategies.Bulyan(num_malicious_nodes=0),
    "TrustedFedAvg": lambda: strategies.TrustedFedAvg(sketch_seed=11),
    "DetectorsOnlyFedAvg": lambda: strategies.DetectorsOnlyFedAvg(sketch_seed=11),
    "TrustedMedianFedAvg": lambda: strategies.TrustedMedianFedAvg(sketch_seed=11),
    "CentralDP": lambda: strategies.CentralDP(
        strategies.TrustedFedAvg(sketch_seed=11), clip_norm=5.0, seed=3
    ),
    "StrategyWrapper": lambda: strategies.StrategyWrapper(strategies.Median()),
}
"""One configuration of every strategy class :mod:`strategies` exports; randomness
(sketch coordinates, buckets, DP noise) from fixed seeds, as in peer mode."""


def exported_strategies() -> set[str]:
    """Names in ``strategies.__all__`` that are Flower strategy classes."""
    return {
        name
        for name in strategies.__all__
        if isinstance(getattr(strategies, name), type)
        and issubclass(getattr(strategies, name), Strategy)
    }


def _reply(
    arrays: Mapping[str, np.ndarray], num_examples: int, identity: str, node_id: int
) -> Message:
    content = RecordDict(
        {
            ARRAYS_KEY: ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            METRICS_KEY: MetricRecord({NUM_EXAMPLES_KEY: num_examples, "loss": 0.5}),
            IDENTITY_KEY: ConfigRecord({IDENTITY_ID: identity}),
        }
    )
    instruction = Message(
        RecordDict(), dst_node_id=node_id, message_type=MessageType.TRAIN
    )
    return Message(content, reply_to=instruction)


def random_round(
    rng: np.random.Generator, model: Mapping[str, np.ndarray]
) -> list[Message]:
    """3 to 12 replies around ``model``: honest noise, a few large or zero updates,
    one duplicated identity now and then, in random order."""
    size = int(rng.integers(3, 13))
    members = rng.choice(PEERS, size=size, replace=False)
    replies = []
    for member in members:
        scale = 0.05 * float(rng.choice([1.0, 1.0, 1.0, 30.0, 0.0]))
        arrays = {
            name: (value + scale * rng.standard_normal(value.shape)).astype(np.float32)
            for name, value in model.items()
        }
        examples = int(rng.integers(10, 500))
        replies.append(_reply(arrays, examples, f"peer-{member:02d}", int(member) + 1))
    if rng.random() < 0.2:  # a second, different reply under one identity
        twin = {k: (v + 0.01).astype(np.float32) for k, v in model.items()}
        replies.append(_reply(twin, 50, f"peer-{members[0]:02d}", int(members[0]) + 1))
    return replies


def strategy_digests(name: str, rounds: int, shuffle: bool) -> list[str]:
    """SHA-256 of the global model after each of ``rounds`` random rounds of
    strategy ``name`` (``"-"`` for a round that kept the previous model).

    The rounds depend only on the strategy's name; ``shuffle`` permutes each round's
    replies with an unrelated generator (the arrival order must not matter).
    """
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
    rng = np.random.default_rng(seed)
    order = np.random.default_rng([seed, 1])
    strategy = STRATEGY_FACTORIES[name]()
    model = {
        key: rng.standard_normal(shape).astype(np.float32)
        for key, shape in SHAPES.items()
    }
    digests = []
    for server_round in range(1, rounds + 1):
        replies = random_round(rng, model)
        if shuffle:
            replies = [replies[i] for i in order.permutation(len(replies))]
        strategy.set_reference(model)  # type: ignore[attr-defined]
        aggregated, _ = strategy.aggregate_train(server_round, replies)
        if aggregated is None:
            digests.append("-")
            continue
        model = {key: aggregated[key].numpy() for key in aggregated}
        digests.append(update_sha256(model))
    return digests


def all_digests(rounds: int, shuffle: bool) -> dict[str, list[str]]:
    """:func:`strategy_digests` of every strategy in :data:`STRATEGY_FACTORIES`."""
    return {
        name: strategy_digests(name, rounds, shuffle) for name in STRATEGY_FACTORIES
    }


if __name__ == "__main__":
    import logging

    logging.disable(logging.CRITICAL)
    print(json.dumps(all_digests(int(sys.argv[1]), "--shuffle" in sys.argv[2:])))
