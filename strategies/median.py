"""Coordinate-wise median strategy [Yin et al., 2018].

Paper: https://arxiv.org/abs/1803.01498
"""

from __future__ import annotations

from typing import Unpack

from strategies import aggregators
from strategies.base import ScreenedFedAvgOptions
from strategies.robust_rule import RobustRuleFedAvg


class Median(RobustRuleFedAvg):
    """Coordinate-wise median of the screened deltas [Yin et al., 2018].

    Implementation based on https://arxiv.org/abs/1803.01498, computed by
    :class:`strategies.aggregators.CoordinateMedian` on float64 deltas. Unlike
    Flower's ``FedMedian`` it neither raises on a malformed reply nor empties the
    replies' ArrayRecords. Claimed example counts are ignored (a Byzantine client
    can claim any count); every valid reply is reported with weight ``1/n``.

    Parameters
    ----------
    **options
        Every argument of :class:`~strategies.base.ScreenedFedAvg`.
    """

    def __init__(self, **options: Unpack[ScreenedFedAvgOptions]) -> None:
        super().__init__(rule=aggregators.CoordinateMedian(), **options)
