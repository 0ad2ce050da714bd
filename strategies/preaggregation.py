"""Pre-aggregators: a batch of updates in, a transformed batch out, before any rule.

A pre-aggregator maps ``(deltas, weights)`` to ``(deltas', weights')`` so that any rule
of :mod:`strategies.aggregators` can run on its output: ``rule ∘ pre-aggregator``
(:func:`compose`). Under heterogeneous (non-IID) honest updates, robust rules alone
have no useful worst-case bound; mixing the updates first restores one (Allouah,
Farhadkhani, Guerraoui, Gupta, Pinot & Stephan, "Fixing by Mixing: A Recipe for
Optimal Byzantine ML under Heterogeneity", AISTATS 2023). Same conventions as
:mod:`strategies.aggregators`:

* Input ``deltas``: ``(n, d)`` numpy array or torch tensor, or ``n`` 1-D vectors;
  never modified. ``weights``: ``(n,)`` non-negative, not all zero, or ``None`` for
  uniform.
* Output: a fresh ``(m, d)`` float64 matrix and ``(m,)`` float64 weights summing to
  one (``m = n`` except for :class:`Bucketing`).
* Exact float64 arithmetic; float64-accurate pairwise distances
  (:func:`strategies.aggregators.pairwise_squared_distances`).

Every pre-aggregator here needs ``f``, the number of Byzantine updates it tolerates;
:func:`byzantine_count` derives it from an assumed fraction, capped by what the rule
that follows can take (:data:`RULE_BOUNDS`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from strategies.aggregators import (
    AggregationRule,
    UpdatesLike,
    WeightsLike,
    as_update_matrix,
    normalised_weights,
    pairwise_squared_distances,
    trimmed_count,
    weighted_sum,
)


@runtime_checkable
class PreAggregator(Protocol):
    """``pre(deltas, weights=None) -> (deltas', weights')``."""

    def __call__(
        self, deltas: UpdatesLike, weights: WeightsLike | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Transform an ``(n, d)`` batch into an ``(m, d)`` batch and its weights."""
        ...


def _require_f(f: int) -> None:
    if isinstance(f, bool) or not isinstance(f, int | np.integer) or f < 0:
        raise ValueError(f"f must be a non-negative integer, got {f!r}")


def _read(
    deltas: UpdatesLike, weights: WeightsLike | None
) -> tuple[np.ndarray, np.ndarray]:
    matrix = np.asarray(as_update_matrix(deltas), dtype=np.float64)
    return matrix, normalised_weights(weights, matrix.shape[0])


# --------------------------------------------------------------------------------------
# Byzantine counts
# --------------------------------------------------------------------------------------


def krum_max_f(n: int) -> int:
    """Largest ``f`` with ``n > 2f + 2`` (Krum, Multi-Krum; Blanchard et al. 2017)."""
    return (n - 3) // 2


def bulyan_max_f(n: int) -> int:
    """Largest ``f`` with ``n ≥ 4f + 3`` (Bulyan; El Mhamdi et al. 2018)."""
    return (n - 3) // 4


def minority_max_f(n: int) -> int:
    """Largest ``f`` with ``n > 2f`` (median, trimmed mean, NNM, ARC: a strict
    honest majority)."""
    return (n - 1) // 2


RULE_BOUNDS: Mapping[str, Callable[[int], int]] = {
    "krum": krum_max_f,
    "multi_krum": krum_max_f,
    "bulyan": bulyan_max_f,
    "median": minority_max_f,
    "trimmed_mean": minority_max_f,
    "nnm": minority_max_f,
    "arc": minority_max_f,
}
"""Rule name → largest ``f`` it tolerates among ``n`` updates."""


def byzantine_count(
    fraction: float, n: int, rule_bound: Callable[[int], int] | None = None
) -> int:
    """``f = ⌊fraction · n⌋``, capped by ``rule_bound(n)`` and at least 0.

    Parameters
    ----------
    fraction : float
        Assumed Byzantine fraction, ``0 ≤ fraction < 1``.
    n : int
        Number of valid updates this round.
    rule_bound : Callable[[int], int] | None
        Largest ``f`` the rule accepts for ``n`` updates (e.g. :func:`krum_max_f`);
        ``None`` for no cap beyond ``n − 1``.

    Returns
    -------
    int
        The count to configure the rule with; 0 when even ``f = 0`` exceeds the
        bound (the rule then refuses ``n`` itself, with its own message).
    """
    if not (isinstance(fraction, int | float) and 0.0 <= fraction < 1.0):
        raise ValueError(f"fraction must lie in [0, 1), got {fraction!r}")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    cap = n - 1 if rule_bound is None else min(n - 1, rule_bound(n))
    return max(0, min(trimmed_count(fraction, n), cap))


# --------------------------------------------------------------------------------------
# Pre-aggregators
# --------------------------------------------------------------------------------------


def nearest_neighbours(squared_distances: np.ndarray, k: int) -> np.ndarray:
    """``(n, k)`` indices of each row's ``k`` nearest rows, itself included.

    Ordered by distance, ties broken by index (a stable sort), so the result never
    depends on how the sort treats equal keys. A duplicate of row ``i`` at a lower
    index may displace ``i`` itself; both are the same vector.
    """
    return np.argsort(squared_distances, axis=1, kind="stable")[:, :k]


@dataclass(frozen=True)
class NearestNeighbourMixing:
    """Nearest-Neighbour Mixing, NNM (Allouah, Farhadkhani, Guerraoui, Gupta, Pinot &
    Stephan, "Fixing by Mixing: A Recipe for Optimal Byzantine ML under
    Heterogeneity", AISTATS 2023, Algorithm 1).

    Every update is replaced by the average of its ``n − f`` nearest neighbours
    (itself included):

    .. math:: y_i = \\frac{1}{n - f} \\sum_{j \\in N_i} x_j,\\qquad
              N_i = \\text{the } n - f \\text{ indices } j \\text{ with the smallest }
              \\|x_i - x_j\\|

    Ties are broken by index (:func:`nearest_neighbours`). The mixing itself is the
    paper's, unweighted; ``y_i`` keeps ``x_i``'s weight, so a rule that follows still
    sees who is who. Drop rows that must not count *before* mixing (as
    :func:`compose` does with zero weights): a row that is a neighbour is mixed in
    whatever its weight. With ``f = 0`` every ``y_i`` is the mean. Requires
    ``n > f``.

    Parameters
    ----------
    f : int
        Byzantine updates tolerated.
    """

    f: int = 0

    def __post_init__(self) -> None:
        _require_f(self.f)

    def __call__(
        self, deltas: UpdatesLike, weights: WeightsLike | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        matrix, alphas = _read(deltas, weights)
        n = matrix.shape[0]
        if self.f >= n:
            raise ValueError(f"NNM with f={self.f} needs n > f updates, got {n}")
        neighbours = nearest_neighbours(pairwise_squared_distances(matrix), n - self.f)
        # (n, n − f, d) would be n times the batch; one mixing matrix is n × n.
        mixing = np.zeros((n, n))
        np.put_along_axis(mixing, neighbours, 1.0 / (n - self.f), axis=1)
        mixed = np.stack([weighted_sum(matrix, row) for row in mixing])
        return mixed, alphas


@dataclass(frozen=True)
class Bucketing:
    """Bucketing (Karimireddy, He & Jaggi, "Byzantine-Robust Learning on
    Heterogeneous Datasets via Bucketing", ICLR 2022, Algorithm 1).

    Shuffle the updates with a random permutation ``π`` and average them in buckets
    of ``s``:

    .. math:: y_b = \\frac{1}{|B_b|} \\sum_{i \\in B_b} x_{\\pi(i)},\\qquad
              B_b = \\{(b - 1)s + 1, \\dots, \\min(bs, n)\\},\\quad
              b = 1, \\dots, \\lceil n / s \\rceil

    (the last bucket holds the ``n mod s`` left over, as in ByzFL). The average
    inside a bucket is the paper's, unweighted; the bucket's weight is the sum of
    its members' weights. ``π`` is drawn from ``seed``: the same seed gives the same
    buckets, so a strategy should pass a fresh one each round (:meth:`with_seed`,
    e.g. ``(seed, server_round)``), or attackers could learn where they land.

    Parameters
    ----------
    size : int
        Bucket size ``s ≥ 1``; ``s = 1`` only shuffles.
    seed : int | tuple[int, ...]
        Seed of :func:`numpy.random.default_rng` for ``π``.
    """

    size: int = 2
    seed: int | tuple[int, ...] = 0

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int | np.integer):
            raise ValueError(f"size must be an integer, got {self.size!r}")
        if self.size < 1:
            raise ValueError(f"size must be at least 1, got {self.size}")

    def with_seed(self, seed: int | tuple[int, ...]) -> Bucketing:
        """The same bucketing with another permutation seed."""
        return replace(self, seed=seed)

    def permutation(self, n: int) -> np.ndarray:
        """The permutation ``π`` of ``range(n)`` this seed draws."""
        return np.random.default_rng(self.seed).permutation(n)

    def __call__(
        self, deltas: UpdatesLike, weights: WeightsLike | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        matrix, alphas = _read(deltas, weights)
        n = matrix.shape[0]
        order = self.permutation(n)
        buckets = [order[start : start + self.size] for start in range(0, n, self.size)]
        means = np.stack([matrix[members].mean(axis=0) for members in buckets])
        totals = np.array([alphas[members].sum() for members in buckets])
        return means, totals


def arc_clipped_count(n: int, f: int) -> int:
    """``k = ⌊2 (f / n)(n − f)⌋``, the number of updates ARC clips (exact integers)."""
    return (2 * f * (n - f)) // n


@dataclass(frozen=True)
class AdaptiveRobustClipping:
    """Adaptive Robust Clipping, ARC (Allouah, Guerraoui, Gupta, Jellouli, Rizk &
    Stephan, "Boosting Robustness by Clipping Gradients in Distributed Learning",
    2024, arXiv:2405.14432, Algorithm 1).

    Clip the ``k = ⌊2(f/n)(n − f)⌋`` longest updates to the norm of the
    ``(k + 1)``-th longest:

    .. math:: y_i = x_i \\min\\Big(1, \\frac{C}{\\|x_i\\|}\\Big),\\qquad
              C = \\|x_{\\pi(k + 1)}\\|

    with ``π`` ordering the updates by non-increasing norm. The threshold adapts to
    the batch, so no clipping radius needs tuning; ties in the norms do not change
    the result (equal norms are clipped to themselves). Weights pass through.
    Requires ``n > f``.

    Parameters
    ----------
    f : int
        Byzantine updates tolerated.
    """

    f: int = 0

    def __post_init__(self) -> None:
        _require_f(self.f)

    def threshold(self, norms: np.ndarray) -> float:
        """``C``: the ``(k + 1)``-th largest of ``norms`` (``inf`` when ``k = 0``)."""
        n = norms.shape[0]
        if self.f >= n:
            raise ValueError(f"ARC with f={self.f} needs n > f updates, got {n}")
        clipped = arc_clipped_count(n, self.f)
        if clipped == 0:
            return float("inf")
        return float(np.sort(norms)[::-1][clipped])

    def __call__(
        self, deltas: UpdatesLike, weights: WeightsLike | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        matrix, alphas = _read(deltas, weights)
        norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
        bound = self.threshold(norms)
        factors = np.ones_like(norms)
        long = norms > bound
        factors[long] = bound / norms[long]
        return matrix * factors[:, None], alphas


# --------------------------------------------------------------------------------------
# Composition
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreAggregated:
    """``rule ∘ pre-aggregator``: itself an aggregation rule.

    Rows of weight zero are dropped first (they do not take part, so they must not
    be mixed into anyone's neighbourhood or bucket); the rest are pre-aggregated
    with their weights, and the result goes to the rule with the weights the
    pre-aggregator returns (uniform ones without input weights, except for
    :class:`Bucketing`'s partial last bucket) when the rule supports weights, else
    uniformly (as
    :class:`strategies.trusted.TrustedFedAvg` hands accepted rows to an unweighted
    rule).

    Parameters
    ----------
    preaggregator : PreAggregator
        Runs first.
    rule : AggregationRule
        Runs on the pre-aggregated batch.
    """

    preaggregator: PreAggregator
    rule: AggregationRule
    supports_weights: ClassVar[bool] = True

    def __call__(
        self, updates: UpdatesLike, weights: WeightsLike | None = None
    ) -> np.ndarray:
        matrix = as_update_matrix(updates)
        if weights is not None:
            alphas = normalised_weights(weights, matrix.shape[0])
            used = alphas > 0.0
            if not bool(used.all()):
                matrix, alphas = matrix[used], alphas[used]
            mixed, mixed_weights = self.preaggregator(matrix, alphas)
        else:
            mixed, mixed_weights = self.preaggregator(matrix)
        if self.rule.supports_weights:
            # Even without input weights: a partial last bucket weighs less.
            return self.rule(mixed, mixed_weights)
        return self.rule(mixed)


def compose(preaggregator: PreAggregator, rule: AggregationRule) -> PreAggregated:
    """``rule ∘ preaggregator`` (see :class:`PreAggregated`).

    >>> from strategies.aggregators import CoordinateMedian
    >>> robust = compose(NearestNeighbourMixing(f=2), CoordinateMedian())
    >>> robust([[0.0], [1.0], [2.0], [100.0], [3.0]]).round(2).tolist()
    [2.0]
    """
    return PreAggregated(preaggregator, rule)
