"""Krum and Multi-Krum strategies [Blanchard et al., 2017].

Paper: https://proceedings.neurips.cc/paper/2017/hash/f4b9ec30ad9f68f89b29639786cb62ef-Abstract.html
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

KRUM_SCORE = "krum_score"
"""Score name: sum of squared distances to the ``n − f − 2`` nearest other deltas."""


@dataclass(frozen=True)
class KrumSelection:
    """Multi-Krum as a :class:`~strategies.robust_rule.RoundRule`: the ``m``
    best-scored rows averaged, the others rejected, every row's score reported."""

    rule: aggregators.MultiKrum
    label: str = "Multi-Krum"

    def decide(
        self, deltas: Deltas, weights: np.ndarray, previous: np.ndarray | None
    ) -> AggregationOutcome:
        rows = deltas.shape[0]
        needed = max(2 * self.rule.f + 3, self.rule.m)
        if rows < needed:
            raise InsufficientReplies(
                f"{self.label} with f={self.rule.f}, m={self.rule.m} needs {needed} "
                f"valid replies, got {rows}"
            )
        # The rule's public API (not its helpers), so selection and tie-breaking
        # are exactly the rule's; the distances are cheap next to a training round.
        scores = self.rule.scores(deltas)
        selected = self.rule.select(deltas)
        # The mean of the selected rows as one weighted sum over all of them: no
        # copy of the selection.
        shares = np.zeros(rows)
        shares[selected] = 1.0 / len(selected)
        return AggregationOutcome.select(
            aggregators.weighted_sum(deltas, shares),
            rows,
            selected,
            f"not selected by {self.label}",
            scores=[{KRUM_SCORE: float(score)} for score in scores],
        )

    def describe(self) -> str:
        return (
            f"{self.label}, number of malicious nodes = {self.rule.f}, "
            f"number of nodes to select = {self.rule.m}"
        )


class MultiKrum(RobustRuleFedAvg):
    """Multi-Krum over the screened deltas [Blanchard et al., 2017].

    Implementation based on https://arxiv.org/abs/1703.02757: each delta is scored
    by the sum of squared distances to its ``n − f − 2`` nearest neighbours, the
    ``m`` lowest-scoring are kept and averaged with equal weights; the others are
    reported rejected ("not selected by Multi-Krum"). Distances come from explicit
    float64 differences (:func:`strategies.aggregators.pairwise_squared_distances`),
    not Flower's float32 Gram identity, which cancels for close updates. Every row's
    score is reported under ``"krum_score"``.

    A round with fewer than ``2f + 3`` (or ``m``) valid replies is not aggregated:
    the previous global model stays and the run goes on.

    Parameters
    ----------
    num_malicious_nodes : int (default: 0)
        ``f``, the number of Byzantine replies tolerated.
    num_nodes_to_select : int (default: 1)
        ``m``, the number of deltas averaged; ``1`` is Krum.
    **options
        Every argument of :class:`~strategies.base.ScreenedFedAvg`.
    """

    def __init__(
        self,
        num_malicious_nodes: int = 0,
        num_nodes_to_select: int = 1,
        **options: Unpack[ScreenedFedAvgOptions],
    ) -> None:
        self.selection = KrumSelection(
            aggregators.MultiKrum(f=num_malicious_nodes, m=num_nodes_to_select)
        )
        super().__init__(rule=self.selection, **options)

    @property
    def num_malicious_nodes(self) -> int:
        """``f``, the number of Byzantine replies tolerated."""
        return self.selection.rule.f

    @property
    def num_nodes_to_select(self) -> int:
        """``m``, the number of deltas kept."""
        return self.selection.rule.m


class Krum(MultiKrum):
    """Krum over the screened deltas [Blanchard et al., 2017].

    Implementation based on https://arxiv.org/abs/1703.02757: the single delta with
    the lowest Krum score becomes the update; all others are reported rejected
    ("not selected by Krum"). See :class:`MultiKrum`.

    Parameters
    ----------
    num_malicious_nodes : int (default: 0)
        ``f``, the number of Byzantine replies tolerated.
    **options
        Every argument of :class:`~strategies.base.ScreenedFedAvg`.
    """

    def __init__(
        self,
        num_malicious_nodes: int = 0,
        **options: Unpack[ScreenedFedAvgOptions],
    ) -> None:
        super().__init__(num_malicious_nodes, num_nodes_to_select=1, **options)
        self.selection = KrumSelection(aggregators.Krum(f=num_malicious_nodes), "Krum")
        self.rule = self.selection
