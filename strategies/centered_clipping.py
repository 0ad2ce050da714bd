"""Centered-clipping strategy [Karimireddy et al., 2021].

Paper: https://arxiv.org/abs/2012.10333
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
    uniform_weights,
)


class CenteredClipping(ScreenedFedAvg):
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
        super().__init__(**options)
        self.rule = aggregators.CenteredClipping(tau=tau, iterations=iterations)
        self.use_history = use_history
        self.center: np.ndarray | None = None
        """Last aggregate delta: the next round's starting point."""

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(
            INFO,
            "\t├──> Centered clipping: tau = %g, %d iteration(s), history %s",
            self.rule.tau,
            self.rule.iterations,
            "on" if self.use_history else "off",
        )
        super().summary()

    def aggregate_updates(
        self, server_round: int, batch: UpdateBatch
    ) -> AggregationOutcome:
        """Clipped aggregate around the history; every row accepted."""
        center = self.center
        if not self.use_history or (
            center is not None and center.shape != (batch.deltas.shape[1],)
        ):
            center = None
        delta = self.rule.with_center(center)(batch.deltas)
        if self.use_history:
            self.center = delta
        return AggregationOutcome.accept_all(delta, uniform_weights(batch.size))
