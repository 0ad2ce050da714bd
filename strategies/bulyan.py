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
from strategies.preaggregation import bulyan_max_f
from strategies.robust_rule import CountFromFraction, RobustRuleFedAvg


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
    num_malicious_nodes : int | None (default: None)
        ``f``, the number of Byzantine replies tolerated; ``None`` takes
        ``⌊β n⌋`` of the ``n`` valid replies each round, capped at ``n ≥ 4f + 3``.
    byzantine_fraction : float (default: 0.3)
        ``β``, used when ``num_malicious_nodes`` is ``None``.
    **options
        Every argument of :class:`~strategies.base.ScreenedFedAvg`.
    """

    def __init__(
        self,
        num_malicious_nodes: int | None = None,
        byzantine_fraction: float = 0.3,
        **options: Unpack[ScreenedFedAvgOptions],
    ) -> None:
        self._fixed_f = num_malicious_nodes
        if num_malicious_nodes is not None:
            self.selection: BulyanSelection | CountFromFraction = BulyanSelection(
                aggregators.Bulyan(f=num_malicious_nodes)
            )
        else:
            self.selection = CountFromFraction(
                lambda f, n: BulyanSelection(aggregators.Bulyan(f=f)),
                byzantine_fraction,
                bulyan_max_f,
                "Bulyan",
                "Bulyan's n ≥ 4f + 3",
            )
        super().__init__(rule=self.selection, byzantine_fraction=None, **options)

    @property
    def num_malicious_nodes(self) -> int | None:
        """``f`` when fixed, ``None`` when taken from the fraction each round."""
        return self._fixed_f
