"""Centered-clipping strategy [Karimireddy et al., 2021].

Paper: https://arxiv.org/abs/2012.10333
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Unpack

import numpy as np

from strategies import aggregators
from strategies.base import AggregationOutcome, ScreenedFedAvgOptions
from strategies.delta_matrix import Deltas
from strategies.robust_rule import RobustRuleFedAvg


@dataclass(frozen=True)
class ClippingAroundHistory:
    """Centered clipping as a :class:`~strategies.robust_rule.RoundRule`: the
    centre is the previous round's aggregate (when ``use_history``), every row
    accepted with its share."""

    rule: aggregators.CenteredClipping
    use_history: bool = True

    def decide(
        self, deltas: Deltas, weights: np.ndarray, previous: np.ndarray | None
    ) -> AggregationOutcome:
        center = previous if self.use_history else None
        delta = self.rule.with_center(center)(deltas)
        return AggregationOutcome.accept_all(delta, weights)

    def describe(self) -> str:
        return (
            f"centered clipping, tau = {self.rule.tau:g}, "
            f"{self.rule.iterations} iteration(s), "
            f"history {'on' if self.use_history else 'off'}"
        )


class CenteredClipping(RobustRuleFedAvg):
    """Centered clipping of the screened deltas [Karimireddy et al., 2021].

    Implementation based on https://arxiv.org/abs/2012.10333 (Karimireddy, He &
    Jaggi, "Learning from History for Byzantine Robust Optimization", Eq. 2),
    computed by :class:`strategies.aggregators.CenteredClipping`: starting from a
    centre ``v``, each step adds the mean of the deltas' differences to ``v``,
    each clipped to norm ``τ``. As in the paper the centre is the history: the
    previous round's aggregate delta (the coordinate-wise median in the first round,
    or whenever ``use_history`` is off). Every row is reported with weight ``1/n``.

    Parameters
    ----------
    tau : float (default: 10.0)
        Clipping radius ``τ > 0`` in the norm of a flattened model delta.
    iterations : int (default: 1)
        Clipping steps per round (the paper finds one suffices).
    use_history : bool (default: True)
        Start each round from the previous round's aggregate delta.
    **options
        Every argument of :class:`~strategies.base.ScreenedFedAvg`.
    """

    def __init__(
        self,
        tau: float = 10.0,
        iterations: int = 1,
        use_history: bool = True,
        **options: Unpack[ScreenedFedAvgOptions],
    ) -> None:
        self.clipping = ClippingAroundHistory(
            aggregators.CenteredClipping(tau=tau, iterations=iterations), use_history
        )
        super().__init__(rule=self.clipping, **options)

    @property
    def use_history(self) -> bool:
        """Whether each round starts from the previous round's aggregate."""
        return self.clipping.use_history

    @property
    def center(self) -> np.ndarray | None:
        """Last aggregate delta: the next round's starting point (with history)."""
        return self.previous if self.use_history else None
