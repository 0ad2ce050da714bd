"""Coordinate-wise trimmed-mean strategy [Yin et al., 2018].

Paper: https://arxiv.org/abs/1803.01498
"""

from __future__ import annotations

from logging import INFO
from typing import Unpack

from flwr.supercore import log

from strategies import aggregators
from strategies.base import (
    AggregationOutcome,
    ScreenedFedAvg,
    ScreenedFedAvgOptions,
    UpdateBatch,
    uniform_weights,
)


class TrimmedMean(ScreenedFedAvg):
    """Coordinate-wise β-trimmed mean of the screened deltas [Yin et al., 2018].

    Implementation based on https://arxiv.org/abs/1803.01498, computed by
    :class:`strategies.aggregators.TrimmedMean`: for every coordinate the
    ``⌊β n⌋`` smallest and largest values are dropped and the rest averaged. Claimed
    example counts are ignored; every valid reply is reported with weight ``1/n``
    (which rows are trimmed differs per coordinate).

    Parameters
    ----------
    beta : float (default: 0.2)
        Fraction trimmed from each side, ``0 ≤ β < 0.5`` (Flower's ``FedTrimmedAvg``
        default).
    **options
        Every argument of :class:`~strategies.base.ScreenedFedAvg`.
    """

    def __init__(
        self, beta: float = 0.2, **options: Unpack[ScreenedFedAvgOptions]
    ) -> None:
        super().__init__(**options)
        self.rule = aggregators.TrimmedMean(beta)

    @property
    def beta(self) -> float:
        """Fraction trimmed from each side."""
        return self.rule.beta

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> Trimmed mean: beta = %.3f, unweighted", self.beta)
        super().summary()

    def aggregate_updates(
        self, server_round: int, batch: UpdateBatch
    ) -> AggregationOutcome:
        """Coordinate-wise trimmed mean of the deltas; every row accepted."""
        return AggregationOutcome.accept_all(
            self.rule(batch.deltas), uniform_weights(batch.size)
        )
