"""The robust stage of the default strategy: per-row weights with a worst-case bound.

Detectors catch what they were written for; an attacker who has read them stays just
inside every threshold (Shejwalkar & Houmansadr, "Manipulating the Byzantine:
Optimizing Model Poisoning Attacks and Defenses for Federated Learning", NDSS 2021).
So the rows the detectors accept are not trusted either: they go through a robust
rule with a bound that holds whatever ``f`` of them are, and the aggregate is the
weighted mean with the weights that rule computes. Explicit per-row weights are what
make the stage usable by :class:`strategies.trusted.TrustedFedAvg`: every row is
reported with its real share, and reputation can be applied *inside* the bound
(:func:`weights_within_bound`).

The rule is Nearest-Neighbour Mixing followed by the Covariance-bound Agnostic Filter:

1. NNM (Allouah, Farhadkhani, Guerraoui, Gupta, Pinot & Stephan, "Fixing by Mixing",
   AISTATS 2023): ``y_i = (1 / (n − f)) Σ_{j ∈ N_i} x_j`` over the ``n − f`` nearest
   rows, i.e. ``Y = M X`` with a row-stochastic mixing matrix ``M``;
2. CAF (Allouah, Guerraoui & Stephan, "Towards Trustworthy Federated Learning with
   Untrusted Participants", ICML 2025): start from ``c = 1``; while ``Σ c > n − 2f``,
   take the weighted mean ``μ_c``, the top eigenpair ``(λ, v)`` of the weighted
   covariance ``Σ_c = Σ_i (c_i / Σc)(y_i − μ_c)(y_i − μ_c)ᵀ``, and shrink
   ``c_i ← c_i (1 − τ_i / max_{j: c_j > 0} τ_j)`` with ``τ_i = ((y_i − μ_c)ᵀ v)²``;
   return the ``μ_c`` of the smallest ``λ`` seen. The maximum runs over the rows
   still in play: a row already at ``c_j = 0`` is far along ``v`` exactly when it
   was filtered out, and letting it set the step (as ByzFL's transcription does)
   shrinks every other row by ``τ_i / τ_j ≈ 0`` per iteration, so the loop crawls
   (thousands of eigendecompositions in one round of identical IPM rows). Over the
   support, each iteration zeroes at least one row: at most ``n`` iterations, and
   each step still removes weight in proportion to ``c_i τ_i``, which is what the
   filter's guarantee rests on. Its error is ``O(√(f/n) · σ)`` with no
   assumption on the covariance (σ² the honest spread); NNM brings heterogeneous
   honest rows together first, which is what the "fixing by mixing" bound needs.

The aggregate is ``pᵀ M X`` with ``p = c / Σc`` of the best iterate: a weighted mean of
the original rows with weights ``π = Mᵀ p`` (each ``π_i ≤ 1 / (n − 2f)``).

Everything after one float64-accurate pairwise-distance pass
(:func:`strategies.aggregators.squared_norms_and_distances`: a centred Gram matrix,
pairs that could cancel recomputed from explicit differences) is ``n × n``: for
weights ``a`` summing to 0, ``‖Σ_k a_k x_k‖² = −½ aᵀ D a``, so mixed rows' distances
are ``−½ (m_i − m_j)ᵀ D (m_i − m_j)`` and the weighted covariance's Gram matrix is
the weighted double centring of ``D``. The top eigenpair is exact
(``numpy.linalg.eigh`` of an ``n × n`` matrix); ByzFL's CAF takes one power step
from a random vector instead.

Chosen by measurement (``benchmarks/robust_updates.py``): among the stages tried
behind the detectors (NNM∘Median, NNM∘CAF, CAF, clipping around NNM∘Median), NNM∘CAF
had the lowest worst case; see the README's robustness section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from strategies.aggregators import (
    UpdatesLike,
    WeightsLike,
    as_update_matrix,
    pairwise_squared_distances,
    weighted_sum,
)
from strategies.delta_matrix import one_blas_thread
from strategies.preaggregation import byzantine_count, nearest_neighbours


def filter_max_f(n: int) -> int:
    """Largest ``f`` with ``n > 2f`` (CAF keeps a total weight ``n − 2f > 0``)."""
    return (n - 1) // 2


def mixing_matrix(squared_distances: np.ndarray, f: int) -> np.ndarray:
    """NNM's ``(n, n)`` row-stochastic ``M``: ``1 / (n − f)`` on each row's ``n − f``
    nearest rows (itself included, ties by index), 0 elsewhere."""
    n = squared_distances.shape[0]
    if not 0 <= f < n:
        raise ValueError(f"mixing needs 0 ≤ f < n, got f={f}, n={n}")
    neighbours = nearest_neighbours(squared_distances, n - f)
    mixing = np.zeros((n, n))
    np.put_along_axis(mixing, neighbours, 1.0 / (n - f), axis=1)
    return mixing


def mixed_squared_distances(
    squared_distances: np.ndarray, mixing: np.ndarray
) -> np.ndarray:
    """``‖y_i − y_j‖²`` for ``Y = M X``, from ``D`` alone (``−½ aᵀ D a``, ``Σ a = 0``).

    Clipped at 0: the identity is exact, the rounding of a sum with mixed signs is not.
    """
    half = -0.5 * (mixing @ squared_distances @ mixing.T)
    diagonal = np.diag(half)
    mixed = diagonal[:, None] + diagonal[None, :] - 2.0 * half
    np.fill_diagonal(mixed, 0.0)
    return np.maximum(mixed, 0.0)


def centred_gram(squared_distances: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``K_ij = (x_i − μ)·(x_j − μ)``, ``μ = Σ_k p_k x_k`` (``Σ p = 1``), from ``D``.

    .. math:: K = -\\tfrac12\\,(D - D p 1^\\top - 1 p^\\top D
              + (p^\\top D p)\\,11^\\top)
    """
    dp = squared_distances @ p
    return -0.5 * (squared_distances - dp[:, None] - dp[None, :] + float(p @ dp))


def covariance_filter(squared_distances: np.ndarray, f: int) -> np.ndarray:
    """CAF's weights ``p`` (summing to 1) of the rows whose distances are ``D``.

    See the module docstring; the top eigenpair of ``Σ_c`` comes from the ``n × n``
    matrix ``S K S`` (``S = diag(√p)``): if ``S K S u = λ u`` then ``v ∝ Dᵀ S u`` and
    the projections are ``(x_i − μ)ᵀ v = (K S u)_i / √λ``. Stops early when the
    remaining rows coincide (``λ = 0``); otherwise after at most ``n`` iterations
    (each zeroes the row of largest ``τ`` among those with ``c > 0``).
    """
    n = squared_distances.shape[0]
    if not 0 <= 2 * f < n:
        raise ValueError(f"the covariance filter needs n > 2f, got f={f}, n={n}")
    with one_blas_thread():  # n × n: threads only cost here (and could move bits)
        return _filter_iterations(squared_distances, f)


def _filter_iterations(squared_distances: np.ndarray, f: int) -> np.ndarray:
    n = squared_distances.shape[0]
    c = np.ones(n)
    best, best_eigenvalue = c / n, np.inf
    while c.sum() > n - 2 * f:
        p = c / c.sum()
        gram = centred_gram(squared_distances, p)
        root = np.sqrt(p)
        eigenvalues, eigenvectors = np.linalg.eigh(root[:, None] * gram * root[None, :])
        eigenvalue = float(eigenvalues[-1])
        if eigenvalue < best_eigenvalue:
            best, best_eigenvalue = p, eigenvalue
        if eigenvalue <= 0.0:
            break
        projections = (gram @ (root * eigenvectors[:, -1])) ** 2 / eigenvalue
        largest = float(projections[c > 0.0].max())
        if largest <= 0.0:
            break
        c = c * (1.0 - projections / largest)
    return best


def mixed_filter_weights(squared_distances: np.ndarray, f: int) -> np.ndarray:
    """``π = Mᵀ p``: NNM then CAF, as weights on the original rows (sum 1)."""
    mixing = mixing_matrix(squared_distances, f)
    p = covariance_filter(mixed_squared_distances(squared_distances, mixing), f)
    return mixing.T @ p


@dataclass(frozen=True)
class CovarianceFilter:
    """CAF as an aggregation rule: ``Σ_i p_i x_i`` (:func:`covariance_filter`).

    Parameters
    ----------
    f : int
        Byzantine updates tolerated (``n > 2f``).
    mix : bool
        Run Nearest-Neighbour Mixing with the same ``f`` first (``CAF ∘ NNM``).
    """

    f: int = 0
    mix: bool = False
    supports_weights: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if isinstance(self.f, bool) or not isinstance(self.f, int) or self.f < 0:
            raise ValueError(f"f must be a non-negative integer, got {self.f!r}")

    def weights(self, updates: UpdatesLike) -> np.ndarray:
        """The rule's weight of every row (sum 1)."""
        distances = pairwise_squared_distances(updates)
        if self.mix:
            return mixed_filter_weights(distances, self.f)
        return covariance_filter(distances, self.f)

    def __call__(
        self, updates: UpdatesLike, weights: WeightsLike | None = None
    ) -> np.ndarray:
        if weights is not None:
            raise ValueError("CovarianceFilter does not take weights")
        matrix = as_update_matrix(updates)
        return weighted_sum(matrix, self.weights(matrix))


@dataclass(frozen=True)
class RobustStage:
    """NNM ∘ CAF with ``f = ⌊byzantine_fraction · n⌋`` of the rows it is given.

    Parameters
    ----------
    byzantine_fraction : float
        Assumed fraction of Byzantine rows among those reaching the stage,
        ``0 ≤ β < ½``; ``f`` is capped at ``⌊(n − 1)/2⌋``.
    mix : bool
        ``False`` runs CAF alone (no NNM).
    """

    byzantine_fraction: float = 0.3
    mix: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.byzantine_fraction < 0.5:
            fraction = self.byzantine_fraction
            raise ValueError(f"byzantine_fraction must lie in [0, 0.5), got {fraction}")

    def byzantine_count(self, n: int) -> int:
        """``f`` for ``n`` rows."""
        return byzantine_count(self.byzantine_fraction, n, filter_max_f)

    def weights(self, squared_distances: np.ndarray) -> np.ndarray:
        """``π`` for rows with pairwise squared distances ``D`` (sum 1)."""
        f = self.byzantine_count(squared_distances.shape[0])
        if self.mix:
            return mixed_filter_weights(squared_distances, f)
        return covariance_filter(squared_distances, f)

    def describe(self, n: int | None = None) -> str:
        """One line for a summary (with ``f`` when ``n`` is known)."""
        name = "NNM ∘ CAF" if self.mix else "CAF"
        used = "" if n is None else f", f = {self.byzantine_count(n)} of n = {n}"
        return f"{name} (byzantine_fraction = {self.byzantine_fraction}{used})"


def weights_within_bound(
    robust: np.ndarray, preference: np.ndarray, ceiling: float
) -> np.ndarray:
    """Re-weight ``robust`` by ``preference`` without any row exceeding
    ``ceiling · robust_i``.

    ``w_i = min(ceiling · π_i, λ π_i ρ_i)`` with ``λ`` chosen (water-filling) so that
    ``Σ w = 1``; if even ``λ → ∞`` cannot reach 1 (the rows with ``ρ > 0`` hold less
    than ``1 / ceiling`` of ``π``), every such row sits at its ceiling and the rest of
    the step is not taken (the weights sum to less than 1). ``ρ = 0`` removes a row.

    Parameters
    ----------
    robust : np.ndarray
        ``(n,)`` the robust stage's weights ``π`` (non-negative, sum 1).
    preference : np.ndarray
        ``(n,)`` non-negative: reputation × detector factor.
    ceiling : float
        ``≥ 1``: how far above its robust weight a row may be raised.

    Returns
    -------
    np.ndarray
        ``(n,)`` weights, each ``≤ ceiling · π_i``, summing to at most 1.
    """
    robust = np.asarray(robust, dtype=np.float64)
    wanted = robust * np.asarray(preference, dtype=np.float64)
    caps = ceiling * robust
    if not wanted.sum() > 0.0:
        return np.zeros_like(robust)
    live = wanted > 0.0
    if caps[live].sum() <= 1.0:
        return np.where(live, caps, 0.0)
    # Raise λ through the breakpoints caps_i / wanted_i, fixing rows at their caps.
    # Ordered by log ratio and scaled through normalised shares: a subnormal wanted
    # weight would overflow both the ratio and λ itself.
    order = np.flatnonzero(live)
    order = order[
        np.argsort(np.log(caps[order]) - np.log(wanted[order]), kind="stable")
    ]
    for step, index in enumerate(order):
        # Sums recomputed, not updated: a subtraction would cancel tiny weights.
        fixed = float(caps[order[:step]].sum())
        free = order[step:]
        shares = (1.0 - fixed) * (wanted[free] / wanted[free].sum())
        if shares[0] <= caps[index]:
            weights = np.zeros_like(robust)
            weights[order[:step]] = caps[order[:step]]
            weights[free] = np.minimum(caps[free], shares)
            return weights
    return np.where(live, caps, 0.0)
