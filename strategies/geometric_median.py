"""Geometric-median strategy (RFA) [Pillutla et al., 2022].

Paper: https://arxiv.org/abs/1912.13445
"""

from __future__ import annotations

from dataclasses import dataclass
from logging import INFO
from typing import Unpack

import numpy as np
from flwr.supercore import log

from strategies import aggregators
from strategies.base import AggregationOutcome, ScreenedFedAvgOptions
from strategies.delta_matrix import Deltas
from strategies.robust_rule import RobustRuleFedAvg

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


@dataclass(frozen=True)
class WeiszfeldShares:
    """The geometric median as a :class:`~strategies.robust_rule.RoundRule`: each
    row weighted by its Weiszfeld share, scored by its distance to the aggregate."""

    rule: aggregators.GeometricMedian

    def decide(
        self, deltas: Deltas, weights: np.ndarray, previous: np.ndarray | None
    ) -> AggregationOutcome:
        delta, iterations = self.rule.solve(deltas)
        distances = aggregators.distances_to_point(deltas, delta)
        log(INFO, "geometric median: %d Weiszfeld iterations", iterations)
        return AggregationOutcome.accept_all(
            delta,
            weiszfeld_shares(distances, self.rule.nu),
            scores=[{DISTANCE_SCORE: float(distance)} for distance in distances],
        )

    def describe(self) -> str:
        rule = self.rule
        return (
            f"geometric median, nu = {rule.nu:g}, at most {rule.max_iterations} "
            f"iterations, tolerance = {rule.tolerance:g}"
        )


class GeometricMedian(RobustRuleFedAvg):
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
        rule = aggregators.GeometricMedian(
            nu=nu, max_iterations=max_iterations, tolerance=tolerance
        )
        super().__init__(rule=WeiszfeldShares(rule), **options)
