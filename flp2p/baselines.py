"""An evaluation baseline, not a defence: FedAvg over the honest clients only.

The strategy is told which simulated partitions the attack controls and leaves them
out, so it shows the best any filter could do with the data the honest clients hold.
Under non-IID data, dropping the attackers also drops their (clean) share of the
data, so this ceiling lies below clean FedAvg; the robustness matrix reports it
beside the goal "within 2 pp of clean FedAvg".

    .venv/bin/python -m flp2p.simulate strategy=honest_only attack=none
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flp2p.attacks import malicious_partitions
from flp2p.client_mods import simulated_identity
from strategies.base import (
    AggregationOutcome,
    InsufficientReplies,
    ScreenedFedAvg,
    UpdateBatch,
)
from strategies.records import Verdict

EXCLUDED_REASON = "controlled by the attack (oracle baseline)"


class HonestOnlyFedAvg(ScreenedFedAvg):
    """FedAvg that excludes the partitions an attack of ``excluded_fraction`` controls.

    Parameters
    ----------
    excluded_fraction : float
        The attack fraction whose partitions are left out
        (:func:`flp2p.attacks.malicious_partitions`): the same clients whether or
        not the run actually attacks.
    clients : int
        Number of simulated clients.
    seed : int
        The run's seed (it picks the partitions and their identities).
    **options
        Passed to :class:`strategies.base.ScreenedFedAvg`.
    """

    def __init__(
        self, excluded_fraction: float, clients: int, seed: int, **options: Any
    ) -> None:
        super().__init__(**options)
        self.excluded = frozenset(
            simulated_identity(seed, partition)
            for partition in malicious_partitions(clients, excluded_fraction, seed)
        )

    def aggregate_updates(
        self, server_round: int, batch: UpdateBatch
    ) -> AggregationOutcome:
        """Example-weighted mean of the rows whose sender is not excluded."""
        honest = np.array([i not in self.excluded for i in batch.identities])
        if not honest.any():
            raise InsufficientReplies("every reply came from an excluded client")
        weights = np.where(honest, batch.num_examples, 0).astype(np.float64)
        weights /= weights.sum()
        return AggregationOutcome(
            delta=weights @ batch.deltas,
            weights=weights,
            verdicts=tuple(
                Verdict.ACCEPTED if kept else Verdict.REJECTED for kept in honest
            ),
            reasons=tuple("" if kept else EXCLUDED_REASON for kept in honest),
            scores=({},) * batch.size,
        )
