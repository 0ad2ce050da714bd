"""One adapter from a robust aggregation rule to a Flower strategy.

A rule of :mod:`strategies.aggregators` maps an ``(n, d)`` matrix to an aggregate;
a strategy must also say, for every row, its verdict, reason, scores and weight
(:class:`~strategies.base.AggregationOutcome`). :class:`RobustRuleFedAvg` does the
plumbing once: it takes the screened deltas of :class:`~strategies.base.
ScreenedFedAvg`, ignores the (unverifiable) claimed example counts, optionally runs a
pre-aggregator, and asks the rule for the outcome.

A rule that only aggregates (any :class:`~strategies.aggregators.AggregationRule`)
is adapted by :class:`AcceptEveryRow`: every row accepted with its share. A rule that
has more to say (which rows Krum selected, each row's distance to the geometric
median, too few replies) implements :class:`RoundRule` in its own module
(:mod:`strategies.krum`, :mod:`strategies.bulyan`, …). Adding a rule is therefore one
module (the rule, and its :class:`RoundRule` if it explains rows), one line naming it
(a ``conf/strategy/*.yaml`` with ``_target_: strategies.RobustRuleFedAvg`` and a
nested ``rule: {_target_: ...}``, or a thin named subclass such as
:class:`strategies.median.Median`) and its tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass, replace
from logging import INFO
from typing import Protocol, Unpack, cast, runtime_checkable

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
from strategies.delta_matrix import Deltas
from strategies.preaggregation import byzantine_count, minority_max_f

PreAggregator = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``(deltas (n, d), weights (n,)) -> (deltas (k, d), weights (k,))``, run before the
rule (e.g. nearest-neighbour mixing or bucketing, Allouah et al. 2023)."""


@runtime_checkable
class RoundRule(Protocol):
    """A robust rule that decides about every row of a round."""

    def decide(
        self, deltas: Deltas, weights: np.ndarray, previous: np.ndarray | None
    ) -> AggregationOutcome:
        """The aggregate of ``deltas`` and every row's verdict, reason, score, weight.

        Parameters
        ----------
        deltas : Deltas
            ``(n, d)`` float64 rows, read-only (a strategy's lazy
            :class:`~strategies.delta_matrix.DeltaMatrix`).
        weights : np.ndarray
            ``(n,)`` shares of the rows (uniform unless a pre-aggregator set them).
        previous : np.ndarray | None
            The aggregate delta of the previous round (for rules that learn from
            history, e.g. centered clipping), ``None`` in the first round.

        Raises
        ------
        strategies.base.InsufficientReplies
            Too few rows for the rule: the round is skipped.
        """
        ...

    def describe(self) -> str:
        """One line for the strategy's summary."""
        ...


@dataclass(frozen=True)
class AcceptEveryRow:
    """Any aggregation rule as a :class:`RoundRule`: every row accepted.

    The aggregate is ``rule(deltas)`` (with the weights when they are not uniform
    and the rule takes weights); each row is reported with its share.
    """

    rule: aggregators.AggregationRule

    def decide(
        self, deltas: Deltas, weights: np.ndarray, previous: np.ndarray | None
    ) -> AggregationOutcome:
        uniform = bool(np.all(weights == weights[0]))
        if uniform or not self.rule.supports_weights:
            delta = self.rule(deltas)
        else:
            delta = self.rule(deltas, weights)
        return AggregationOutcome.accept_all(delta, weights)

    def describe(self) -> str:
        return f"{type(self.rule).__name__}, every row accepted"


@dataclass(frozen=True)
class CountFromFraction:
    """A :class:`RoundRule` whose ``f`` is ``⌊β n⌋`` of the round's ``n`` rows.

    ``f`` is capped by the rule's own bound (``bound(n)``, e.g.
    :func:`strategies.preaggregation.krum_max_f`) through
    :func:`strategies.preaggregation.byzantine_count`; ``build(f, n)`` makes the
    round's rule. The assumed fraction is the defence's, never the attack's.
    """

    build: Callable[[int, int], RoundRule]
    byzantine_fraction: float
    bound: Callable[[int], int]
    label: str
    bound_text: str

    def __post_init__(self) -> None:
        # byzantine_count checks the fraction; fail at construction, not round 1.
        byzantine_count(self.byzantine_fraction, 1, self.bound)

    def count(self, n: int) -> int:
        """``f`` for ``n`` rows."""
        return byzantine_count(self.byzantine_fraction, n, self.bound)

    def decide(
        self, deltas: Deltas, weights: np.ndarray, previous: np.ndarray | None
    ) -> AggregationOutcome:
        n = deltas.shape[0]
        f = self.count(n)
        log(INFO, "%s: f = %d of n = %d valid replies", self.label, f, n)
        return self.build(f, n).decide(deltas, weights, previous)

    def describe(self) -> str:
        return (
            f"{self.label}, f = ⌊{self.byzantine_fraction} · n⌋ of the n valid "
            f"replies, capped by {self.bound_text}"
        )


def with_fraction(
    preaggregator: PreAggregator, byzantine_fraction: float, n: int
) -> PreAggregator:
    """``preaggregator`` with ``f = ⌊β n⌋`` (capped for a strict honest majority)
    when it is a frozen dataclass with an ``f`` field (NNM, ARC); else itself."""
    if not (is_dataclass(preaggregator) and "f" in _field_names(preaggregator)):
        return preaggregator
    f = byzantine_count(byzantine_fraction, n, minority_max_f)
    return cast(PreAggregator, replace(preaggregator, f=f))


def _field_names(instance: object) -> set[str]:
    return {item.name for item in fields(instance)}  # type: ignore[arg-type]


class RobustRuleFedAvg(ScreenedFedAvg):
    """A robust rule over the screened deltas, as a Flower strategy.

    Claimed example counts are ignored (a Byzantine client can claim any count):
    every valid reply enters the rule with share ``1/n``.

    Parameters
    ----------
    rule : RoundRule | aggregators.AggregationRule
        The rule; a plain aggregation rule is adapted by :class:`AcceptEveryRow`.
    preaggregator : PreAggregator | None (default: None)
        Run on ``(deltas, shares)`` before the rule (``rule ∘ pre-aggregator``).
        When it keeps the number of rows, the rule's per-row decisions are the
        rows'; when it changes it (e.g. bucketing), the rows are mixed beyond
        telling apart, and each is reported accepted with its share. One with an
        ``f`` field (NNM, ARC) gets ``f = ⌊byzantine_fraction · n⌋`` each round.
    byzantine_fraction : float | None (default: 0.3)
        Assumed Byzantine fraction for the pre-aggregator's ``f``; ``None`` keeps
        the ``f`` it was built with.
    **options
        Every argument of :class:`~strategies.base.ScreenedFedAvg`.
    """

    def __init__(
        self,
        rule: RoundRule | aggregators.AggregationRule,
        preaggregator: PreAggregator | None = None,
        byzantine_fraction: float | None = 0.3,
        **options: Unpack[ScreenedFedAvgOptions],
    ) -> None:
        super().__init__(**options)
        if byzantine_fraction is not None:
            byzantine_count(byzantine_fraction, 1)  # refuses a bad fraction now
        self.byzantine_fraction = byzantine_fraction
        self.rule: RoundRule = (
            rule if isinstance(rule, RoundRule) else AcceptEveryRow(rule)
        )
        self.preaggregator = preaggregator
        self.previous: np.ndarray | None = None
        """The last aggregate delta, handed to the rule in the next round."""

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> Robust rule: %s", self.rule.describe())
        if self.preaggregator is not None:
            log(INFO, "\t│\t└── Pre-aggregator: %r", self.preaggregator)
            if self.byzantine_fraction is not None:
                log(
                    INFO,
                    "\t│\t└── its f: ⌊%s · n⌋ of the n valid replies",
                    self.byzantine_fraction,
                )
        super().summary()

    def aggregate_updates(
        self, server_round: int, batch: UpdateBatch
    ) -> AggregationOutcome:
        """The rule's outcome on the deltas (after the pre-aggregator, if any)."""
        shares = uniform_weights(batch.size)
        previous = self.previous
        if previous is not None and previous.shape != (batch.deltas.shape[1],):
            previous = None  # the model changed shape: the history says nothing
        if self.preaggregator is None:
            outcome = self.rule.decide(batch.deltas, shares, previous)
        else:
            preaggregator = self.preaggregator
            if self.byzantine_fraction is not None:
                preaggregator = with_fraction(
                    preaggregator, self.byzantine_fraction, batch.size
                )
            # A pre-aggregator is any callable on an ndarray: it gets the float64
            # matrix (8·n·d bytes; the rules alone read the deltas in blocks).
            mixed, mixed_shares = preaggregator(batch.deltas.to_array(), shares)
            outcome = self.rule.decide(mixed, mixed_shares, previous)
            if mixed.shape[0] != batch.size:
                outcome = AggregationOutcome.accept_all(outcome.delta, shares)
        self.previous = outcome.delta
        return outcome
