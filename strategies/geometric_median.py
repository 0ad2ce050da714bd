"""Geometric-median strategy (RFA) [Pillutla et al., 2022].

Paper: https://arxiv.org/abs/1912.13445
"""

from __future__ import annotations

from logging import INFO
from typing import Unpack

import numpy as np
from flwr.supercore import log

from strategies import aggregators
from strategies.base import (
    AggregationOutcome,
    ScreenedFedAvg,
    ScreenedFedAvgOptions,
    UpdateBatch,
)

DISTANCE_SCORE = "distance_to_geometric_median"
"""Score name: Euclidean distance of a delta to the aggregate."""


def weiszfeld_shares(distances: np.ndarray, nu: float) -> np.ndarray:
    """Share of each update in the last Weiszfeld step, ``(1/max(ν, d_i))``
    normalised (Pillutla et al., 2022, Algorithm 2, with uniform ``α``).

    At the fixed point the geometric median is exactly this convex combination of
    the updates, so these are the rows' true weights in the aggregate.
    """
    inverse = 1.0 / np.maximum(nu, distances)
    return inverse / inverse.sum()


class GeometricMedian(ScreenedFedAvg):
    """Geometric median of the screened deltas by smoothed Weiszfeld (RFA).

    Implementation based on https://arxiv.org/abs/1912.13445 (Pillutla, Kakade &
    Harchaoui, "Robust Aggregation for Federated Learning"), computed by
    :class:`strategies.aggregators.GeometricMedian` with uniform weights (claimed
    example counts are ignored: a Byzantine client can claim any count). Each row
    is reported with its Weiszfeld share (far-away deltas weigh little) and its
    distance to the aggregate under ``"distance_to_geometric_median"``.

    Parameters
    ----------
    nu : float (default: 1e-6)
        Smoothing: distances below ``ν`` count as ``ν``.
    max_iterations : int (default: 100)
        Upper bound on Weiszfeld steps.
    tolerance : float (default: 1e-6)
        Stop when a step moves the estimate by less than this fraction of the
        median distance of the deltas to it.
    **options
        Every argument of :class:`~strategies.base.ScreenedFedAvg`.
    """

    def __init__(
        self,
        nu: float = 1e-6,
        max_iterations: int = 100,
        tolerance: float = 1e-6,
        **options: Unpack[ScreenedFedAvgOptions],
    ) -> None:
        super().__init__(**options)
        self.rule = aggregators.GeometricMedian(
            nu=nu, max_iterations=max_iterations, tolerance=tolerance
        )

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(
            INFO,
            "\t├──> Geometric median: nu = %g, at most %d iterations, tolerance = %g",
            self.rule.nu,
            self.rule.max_iterations,
            self.rule.tolerance,
        )
        super().summary()

    def aggregate_updates(
        self, server_round: int, batch: UpdateBatch
    ) -> AggregationOutcome:
        """Weiszfeld estimate; rows weighted by their share in the last step."""
        delta, iterations = self.rule.solve(batch.deltas)
        distances = aggregators.distances_to_point(batch.deltas, delta)
        log(INFO, "geometric median: %d Weiszfeld iterations", iterations)
        return AggregationOutcome.accept_all(
            delta,
            weiszfeld_shares(distances, self.rule.nu),
            scores=[{DISTANCE_SCORE: float(distance)} for distance in distances],
        )
