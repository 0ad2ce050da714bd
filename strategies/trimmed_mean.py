"""Coordinate-wise trimmed-mean strategy [Yin et al., 2018].

Paper: https://arxiv.org/abs/1803.01498
"""

from __future__ import annotations

from typing import Unpack

from strategies import aggregators
from strategies.base import ScreenedFedAvgOptions
from strategies.robust_rule import RobustRuleFedAvg


class TrimmedMean(RobustRuleFedAvg):
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
        self.trim = aggregators.TrimmedMean(beta)
        super().__init__(rule=self.trim, **options)

    @property
    def beta(self) -> float:
        """Fraction trimmed from each side."""
        return self.trim.beta
