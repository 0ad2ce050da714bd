"""Bulyan strategy [El Mhamdi et al., 2018].

Paper: https://proceedings.mlr.press/v80/mhamdi18a.html
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Unpack

import numpy as np

from strategies import aggregators
from strategies.base import (
    AggregationOutcome,
    InsufficientReplies,
    ScreenedFedAvgOptions,
)
from strategies.delta_matrix import Deltas
from strategies.robust_rule import RobustRuleFedAvg


@dataclass(frozen=True)
class BulyanSelection:
    """Bulyan as a :class:`~strategies.robust_rule.RoundRule`: rows Krum did not
    pick are rejected, the picked ones accepted with their nominal share ``1/θ``."""

    rule: aggregators.Bulyan

    def decide(
        self, deltas: Deltas, weights: np.ndarray, previous: np.ndarray | None
    ) -> AggregationOutcome:
        rows = deltas.shape[0]
        needed = 4 * self.rule.f + 3
        if rows < needed:
            raise InsufficientReplies(
                f"Bulyan with f={self.rule.f} needs {needed} valid replies, got {rows}"
            )
        selected = self.rule.select(deltas)
        keep = len(selected) - 2 * self.rule.f
        # Coordinate-wise, so column blocks give the same values as the whole rows.
        delta = aggregators.columnwise(
            deltas,
            lambda block: aggregators.closest_to_median_mean(block[selected], keep),
        )
        return AggregationOutcome.select(
            delta, rows, selected, "not selected by Bulyan"
        )

    def describe(self) -> str:
        return f"Bulyan, number of malicious nodes = {self.rule.f}"


class Bulyan(RobustRuleFedAvg):
    """Bulyan over Krum on the screened deltas [El Mhamdi et al., 2018].

    Implementation based on https://arxiv.org/abs/1802.07927, Algorithm 1, computed
    by :class:`strategies.aggregators.Bulyan`: Krum, re-run on the remaining deltas,
    picks ``θ = n − 2f`` of them; then each coordinate averages the ``θ − 2f``
    values closest to its median. The picked rows are reported accepted with weight
    ``1/θ`` (their nominal share), the others rejected ("not selected by Bulyan").

    A round with fewer than ``4f + 3`` valid replies is not aggregated: the
    previous global model stays and the run goes on.

    Parameters
    ----------
    num_malicious_nodes : int (default: 0)
        ``f``, the number of Byzantine replies tolerated.
    **options
        Every argument of :class:`~strategies.base.ScreenedFedAvg`.
    """

    def __init__(
        self, num_malicious_nodes: int = 0, **options: Unpack[ScreenedFedAvgOptions]
    ) -> None:
        self.selection = BulyanSelection(aggregators.Bulyan(f=num_malicious_nodes))
        super().__init__(rule=self.selection, **options)

    @property
    def num_malicious_nodes(self) -> int:
        """``f``, the number of Byzantine replies tolerated."""
        return self.selection.rule.f
