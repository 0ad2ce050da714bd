"""Bulyan strategy [El Mhamdi et al., 2018].

Paper: https://proceedings.mlr.press/v80/mhamdi18a.html
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


class Bulyan(ScreenedFedAvg):
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
        super().__init__(**options)
        self.rule = aggregators.Bulyan(f=num_malicious_nodes)

    @property
    def num_malicious_nodes(self) -> int:
        """``f``, the number of Byzantine replies tolerated."""
        return self.rule.f

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(
            INFO,
            "\t├──> Bulyan: number of malicious nodes = %d",
            self.num_malicious_nodes,
        )
        super().summary()

    def aggregate_updates(
        self, server_round: int, batch: UpdateBatch
    ) -> AggregationOutcome:
        """Bulyan aggregate; rows Krum did not pick are rejected."""
        needed = 4 * self.num_malicious_nodes + 3
        if batch.size < needed:
            raise InsufficientReplies(
                f"Bulyan with f={self.num_malicious_nodes} needs {needed} valid "
                f"replies, got {batch.size}"
            )
        selected = self.rule.select(batch.deltas)
        keep = len(selected) - 2 * self.num_malicious_nodes
        delta = aggregators.closest_to_median_mean(batch.deltas[selected], keep)
        return AggregationOutcome.select(
            delta, batch.size, selected, "not selected by Bulyan"
        )
