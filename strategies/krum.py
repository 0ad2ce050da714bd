"""Krum and Multi-Krum strategies [Blanchard et al., 2017].

Paper: https://proceedings.neurips.cc/paper/2017/hash/f4b9ec30ad9f68f89b29639786cb62ef-Abstract.html
"""

from __future__ import annotations

from logging import INFO
from typing import Unpack

from flwr.supercore import log

from strategies import aggregators
from strategies.base import (
    AggregationOutcome,
    InsufficientReplies,
    ScreenedFedAvg,
    ScreenedFedAvgOptions,
    UpdateBatch,
)

KRUM_SCORE = "krum_score"
"""Score name: sum of squared distances to the ``n − f − 2`` nearest other deltas."""


class MultiKrum(ScreenedFedAvg):
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

    rule_name = "Multi-Krum"

    def __init__(
        self,
        num_malicious_nodes: int = 0,
        num_nodes_to_select: int = 1,
        **options: Unpack[ScreenedFedAvgOptions],
    ) -> None:
        super().__init__(**options)
        self.rule: aggregators.MultiKrum = aggregators.MultiKrum(
            f=num_malicious_nodes, m=num_nodes_to_select
        )

    @property
    def num_malicious_nodes(self) -> int:
        """``f``, the number of Byzantine replies tolerated."""
        return self.rule.f

    @property
    def num_nodes_to_select(self) -> int:
        """``m``, the number of deltas kept."""
        return self.rule.m

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> %s settings:", self.rule_name)
        log(INFO, "\t│\t├── Number of malicious nodes: %d", self.num_malicious_nodes)
        log(INFO, "\t│\t└── Number of nodes to select: %d", self.num_nodes_to_select)
        super().summary()

    def aggregate_updates(
        self, server_round: int, batch: UpdateBatch
    ) -> AggregationOutcome:
        """Mean of the ``m`` best-scored deltas; the others rejected."""
        needed = max(2 * self.num_malicious_nodes + 3, self.num_nodes_to_select)
        if batch.size < needed:
            raise InsufficientReplies(
                f"{self.rule_name} with f={self.num_malicious_nodes}, "
                f"m={self.num_nodes_to_select} needs {needed} valid replies, "
                f"got {batch.size}"
            )
        # The rule's public API (not its helpers), so selection and tie-breaking
        # are exactly the rule's; the distances are cheap next to a training round.
        scores = self.rule.scores(batch.deltas)
        selected = self.rule.select(batch.deltas)
        return AggregationOutcome.select(
            batch.deltas[selected].mean(axis=0),
            batch.size,
            selected,
            f"not selected by {self.rule_name}",
            scores=[{KRUM_SCORE: float(score)} for score in scores],
        )


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

    rule_name = "Krum"

    def __init__(
        self,
        num_malicious_nodes: int = 0,
        **options: Unpack[ScreenedFedAvgOptions],
    ) -> None:
        super().__init__(num_malicious_nodes, num_nodes_to_select=1, **options)
        self.rule = aggregators.Krum(f=num_malicious_nodes)
