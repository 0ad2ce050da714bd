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
from strategies.preaggregation import krum_max_f
from strategies.robust_rule import CountFromFraction, RobustRuleFedAvg

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
    reported rejected ("not selected by Multi-Krum"). Distances are
    float64-accurate (:func:`strategies.aggregators.pairwise_squared_distances`:
    a Gram matrix of centred rows, every pair that could cancel recomputed from
    explicit differences), not Flower's float32 Gram identity, which cancels for
    close updates. Every row's
    score is reported under ``"krum_score"``.

    A round with fewer than ``2f + 3`` (or ``m``) valid replies is not aggregated:
    the previous global model stays and the run goes on.

    Parameters
    ----------
    num_malicious_nodes : int | None (default: None)
        ``f``, the number of Byzantine replies tolerated; ``None`` takes it from
        ``byzantine_fraction`` each round: ``f = ⌊β n⌋`` of the ``n`` valid
        replies, capped at Krum's bound ``n > 2f + 2``.
    num_nodes_to_select : int | None (default: None)
        ``m``, the number of deltas averaged (``1`` is Krum); ``None`` for
        ``n − f``, Multi-Krum's usual choice.
    byzantine_fraction : float (default: 0.3)
        ``β``, used when ``num_malicious_nodes`` is ``None``.
    **options
        Every argument of :class:`~strategies.base.ScreenedFedAvg`.
    """

    def __init__(
        self,
        num_malicious_nodes: int | None = None,
        num_nodes_to_select: int | None = None,
        byzantine_fraction: float = 0.3,
        **options: Unpack[ScreenedFedAvgOptions],
    ) -> None:
        self._fixed_f = num_malicious_nodes
        self._fixed_m = num_nodes_to_select
        # The rule checks what is fixed now, not in the first round.
        aggregators.MultiKrum(
            f=0 if num_malicious_nodes is None else num_malicious_nodes,
            m=1 if num_nodes_to_select is None else num_nodes_to_select,
        )
        if num_malicious_nodes is not None and num_nodes_to_select is not None:
            self.selection: KrumSelection | CountFromFraction = KrumSelection(
                aggregators.MultiKrum(f=num_malicious_nodes, m=num_nodes_to_select)
            )
        else:
            self.selection = self._per_round(byzantine_fraction, "Multi-Krum")
        super().__init__(rule=self.selection, byzantine_fraction=None, **options)

    def _per_round(self, fraction: float, label: str) -> CountFromFraction:
        fixed_f, fixed_m = self._fixed_f, self._fixed_m

        def build(f: int, n: int) -> KrumSelection:
            f = f if fixed_f is None else fixed_f
            m = max(1, n - f) if fixed_m is None else fixed_m
            rule = aggregators.Krum(f=f) if m == 1 else aggregators.MultiKrum(f, m)
            return KrumSelection(rule, label)

        return CountFromFraction(
            build, fraction, krum_max_f, label, "Krum's n > 2f + 2"
        )

    @property
    def num_malicious_nodes(self) -> int | None:
        """``f`` when fixed, ``None`` when taken from the fraction each round."""
        return self._fixed_f

    @property
    def num_nodes_to_select(self) -> int | None:
        """``m`` when fixed, ``None`` for ``n − f`` each round."""
        return self._fixed_m


class Krum(MultiKrum):
    """Krum over the screened deltas [Blanchard et al., 2017].

    Implementation based on https://arxiv.org/abs/1703.02757: the single delta with
    the lowest Krum score becomes the update; all others are reported rejected
    ("not selected by Krum"). See :class:`MultiKrum`.

    Parameters
    ----------
    num_malicious_nodes : int | None (default: None)
        ``f``; ``None`` takes ``⌊β n⌋`` each round, capped at ``n > 2f + 2``.
    byzantine_fraction : float (default: 0.3)
        ``β``, used when ``num_malicious_nodes`` is ``None``.
    **options
        Every argument of :class:`~strategies.base.ScreenedFedAvg`.
    """

    def __init__(
        self,
        num_malicious_nodes: int | None = None,
        byzantine_fraction: float = 0.3,
        **options: Unpack[ScreenedFedAvgOptions],
    ) -> None:
        super().__init__(
            num_malicious_nodes,
            num_nodes_to_select=1,
            byzantine_fraction=byzantine_fraction,
            **options,
        )
        if num_malicious_nodes is not None:
            self.selection = KrumSelection(
                aggregators.Krum(f=num_malicious_nodes), "Krum"
            )
        else:
            self.selection = self._per_round(byzantine_fraction, "Krum")
        self.rule = self.selection
