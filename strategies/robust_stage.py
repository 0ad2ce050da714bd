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

Two stages, both on the ``n × n`` pairwise squared distances ``D`` of the rows:

**The certified filter** (:class:`CertifiedStage`, the default). The covariance filter
of CAF (below), stopped as soon as its current weights carry a *certificate*: the top
eigenvalue of the weighted covariance is no larger than ``t = C · max(s², s²(v))``,
two estimates of the honest spread that the Byzantine rows cannot raise (the mean
one, and the one along the top direction ``v``), with at least ``n − f`` of the
weight left. Classic filters stop on ``λ ≤ C σ²`` with ``σ`` known (Diakonikolas,
Kamath, Kane, Li, Moitra & Stewart, "Being Robust (in High Dimensions) Can Be
Practical", ICML 2017; Diakonikolas & Kane, "Algorithmic High-Dimensional Robust
Statistics", 2023, ch. 2); ``max(s², s²(v))`` replaces the unknown ``σ²``, and when
no iterate is certified the stage returns what CAF returns, with CAF's bound. Rows
that need no filtering (no attack, or attackers already dropped by the detectors)
pass at the first iterate and get exactly ``1/n``: the plain mean, where CAF with an
assumed ``f`` always removes ``2f`` of weight (about 0.18 of relative error in
``benchmarks/robust_updates.py``).

Notation: ``H`` the honest rows (``|H| = h ≥ n − f``, at most ``f`` Byzantine),
``μ_H`` their mean, ``Σ_H = (1/h) Σ_{i∈H} (x_i − μ_H)(x_i − μ_H)ᵀ``, ``σ² = ‖Σ_H‖``;
for weights ``c ∈ [0, 1]ⁿ``, ``W = Σc``, ``μ_c`` and ``Σ_c`` the ``c/W``-weighted
mean and covariance, ``λ_c = ‖Σ_c‖``.

1. *The scales cannot be raised.* (a) The mean spread (:func:`spread_scale`):
   ``a_i`` = mean of the ``k = n − f − 1`` smallest ``‖x_i − x_j‖²``,
   ``s² = a_(m) / (2(n − 1))``, ``m = ⌈n/2⌉``. For ``i ∈ H`` the ``h − 1 ≥ k``
   other honest rows give
   ``a_i ≤ (1/(h − 1)) Σ_{j∈H} ‖x_i − x_j‖² = (h/(h − 1))(‖x_i − μ_H‖² + tr Σ_H)``,
   whose mean over ``H`` is ``(2h/(h − 1)) tr Σ_H ≤ 2h σ²`` (``Σ_H`` has rank at most
   ``h − 1``). By Markov the ``m``-th smallest honest ``a_i`` is at most
   ``h/(h − m + 1)`` times that mean, and the ``m``-th smallest of all rows is no
   larger: ``s² ≤ κ σ²``, ``κ = n² / ((n − 1)(n − f − m + 1))`` (:func:`spread_factor`;
   4.2 for ``n = 20``, ``f = 6``). Byzantine rows can only lower ``s²``, which makes
   the filter stricter, never looser. (b) The spread along a direction
   (:func:`direction_spread`): for weights ``c`` with top eigenvector ``v``,
   ``s²(v)`` is the smallest variance of ``y_i = x_iᵀ v`` over any ``n − f`` of the
   *n* rows. For any unit ``v`` (the attackers may choose it) and any ``S ⊆ H`` of
   ``n − f`` rows, ``var_S(y) ≤ (1/(n − f)) Σ_{i∈S} (y_i − ȳ_H)² ≤
   (h/(n − f)) vᵀ Σ_H v``, so ``s²(v) ≤ (n/(n − f)) σ² ≤ κ σ²`` (``κ ≥ n/(n − f)``:
   ``n²/(n − 1) ≥ n`` and ``n − f − m + 1 ≤ n − f``). Hence
   ``t = C max(s², s²(v)) ≤ C κ σ²``: step 2's bound, with the same ``κ``, holds.
   Why both: ``s²`` is about the *mean* eigenvalue ``tr Σ_H / (n − 1)``, so honest
   rows whose spread lies in a few directions (``λ ≫ s²``) were never certified
   and the stage was CAF (0.13 of relative error without attack,
   ``benchmarks/robust_updates.py --directions 3``); ``s²(v)`` measures the spread
   where the covariance is largest, but for ``n ≪ d`` the top direction of
   isotropic honest rows is fitted to them, its projections concentrate on a few
   rows, and ``s²(v)`` alone left clean rows of the default benchmark uncertified
   (0.19). The larger of the two certifies clean rows of both kinds at once.
2. *A certificate bounds the error* (the resilience lemma, Steinhardt, Charikar &
   Valiant, "Resilience: A Criterion for Learning in the Presence of Arbitrary
   Outliers", ITCS 2018; Diakonikolas & Kane, ch. 2): for two distributions at
   total variation ``η``, ``‖μ_p − μ_u‖ ≤ √(η/(1 − η)) (√‖Σ_p‖ + √‖Σ_u‖)``
   (split both into their common part and a remainder; the between-part covariance
   is ``η(1 − η)`` times the squared gap). With ``p = c / W``, ``u`` uniform on ``H``
   and ``W ≥ n − f``: if ``W ≥ h``, ``η ≤ b/W ≤ f/(n − f)``; else
   ``η ≤ 1 − (W − b)/h ≤ f/(n − b) ≤ f/(n − f)`` (``b`` the Byzantine count). So a
   returned certified iterate (``λ_c ≤ t ≤ C κ σ²``) satisfies
   ``‖μ_c − μ_H‖ ≤ √(f / (n − 2f)) · (√(C κ) + 1) · σ``, which is
   ``O(√(f/n) σ)`` like CAF, whatever the Byzantine rows are (4.4 σ for ``n = 20``,
   ``f = 6``, ``C = 4``). The bound is a property of the returned weights, not of
   how they were found: that is what allows the rounding step, which tries the
   hard set ``1[c ≥ ½]`` (full weight on the rows the filter kept, none on the
   others) before ``c`` itself, and keeps it only if it carries the certificate too.
3. *Reputation stays inside* (:func:`weights_within_bound`): weights ``w ≤ ρ π``
   with ``π = c/W`` and ``Σw = 1`` are ``c'/W'`` with ``c' = w W/ρ ≤ c`` and
   ``W' = W/ρ``, and ``Σ_w ⪯ ρ Σ_π``; step 2 applies with ``W/ρ`` and ``ρ t`` (for the
   defaults, ``ρ = 1/(1 − β)``, ``W/ρ ≥ (1 − β)(n − f) > n − 2f`` and
   ``η < 2f/(n − f)``).

``C`` (``threshold``, default 4) is chosen by measurement: honest heterogeneous rows
have ``λ ≈ 2 s²``; with 3 the honest rows left after filtering were sometimes not
certified (CAF's answer, about 0.12–0.19 of error, at another seed), with 5 or 6
four MinSum or Mimic attackers were certified with the honest rows at ``f = 4``
(both measured with ``s²`` alone; ``s²(v)`` below ``s²`` changes nothing there).
With the honest spread in 3 directions, attackers that sit off the honest subspace
with a covariance below ``C s²`` (MinMax, the adaptive attack at ``f = 4``) are
certified with the honest rows: about 0.33–0.36 of relative error, inside the bound,
where Krum-type rules drop them.

**NNM ∘ CAF** (:class:`RobustStage`, the former default, kept for comparison):

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

Chosen by measurement (``benchmarks/robust_updates.py``, README's robustness section):
behind the detectors, the certified filter has the lowest worst case of every row,
ByzFL's included, at ``f = 4`` and ``f = 6`` of 20.
"""

from __future__ import annotations

from collections.abc import Iterator
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
    best, best_eigenvalue = np.full(n, 1.0 / n), np.inf
    for _, p, eigenvalue in filter_iterates(squared_distances, f):
        if eigenvalue < best_eigenvalue:
            best, best_eigenvalue = p, eigenvalue
    return best


def filter_iterates(
    squared_distances: np.ndarray, f: int
) -> Iterator[tuple[np.ndarray, np.ndarray, float]]:
    """CAF's iterates ``(c, p = c / Σc, λ)`` while ``Σc > n − 2f`` (none if ``f = 0``).

    ``λ`` is the top eigenvalue of the ``p``-weighted covariance; the next ``c``
    shrinks every row by ``τ_i / max_{j: c_j > 0} τ_j`` (module docstring). Ends
    early when the rows in play coincide.
    """
    n = squared_distances.shape[0]
    if not 0 <= 2 * f < n:
        raise ValueError(f"the covariance filter needs n > 2f, got f={f}, n={n}")
    with one_blas_thread():  # n × n: threads only cost here (and could move bits)
        yield from _filter_iterations(squared_distances, f)


def _filter_iterations(
    squared_distances: np.ndarray, f: int
) -> Iterator[tuple[np.ndarray, np.ndarray, float]]:
    n = squared_distances.shape[0]
    c = np.ones(n)
    while c.sum() > n - 2 * f:
        p = c / c.sum()
        gram = centred_gram(squared_distances, p)
        root = np.sqrt(p)
        eigenvalues, eigenvectors = np.linalg.eigh(root[:, None] * gram * root[None, :])
        eigenvalue = float(eigenvalues[-1])
        yield c, p, eigenvalue
        if eigenvalue <= 0.0:
            return
        projections = (gram @ (root * eigenvectors[:, -1])) ** 2 / eigenvalue
        largest = float(projections[c > 0.0].max())
        if largest <= 0.0:
            return
        c = c * (1.0 - projections / largest)


def top_direction(
    squared_distances: np.ndarray, c: np.ndarray
) -> tuple[float, np.ndarray]:
    """``λ_c`` and every row's projection ``(x_i − μ_c)ᵀ v_c`` on the top eigenvector
    ``v_c`` of the ``c / Σc``-weighted covariance (from ``D``, as in
    :func:`covariance_filter`: ``(K S u)_i / √λ``). Zero projections when
    ``λ_c = 0`` (the weighted rows coincide: there is no direction)."""
    p = c / c.sum()
    root = np.sqrt(p)
    gram = centred_gram(squared_distances, p)
    eigenvalues, eigenvectors = np.linalg.eigh(root[:, None] * gram * root[None, :])
    eigenvalue = float(eigenvalues[-1])
    if not eigenvalue > 0.0:
        return 0.0, np.zeros(c.shape[0])
    return eigenvalue, gram @ (root * eigenvectors[:, -1]) / np.sqrt(eigenvalue)


def direction_spread(projections: np.ndarray, f: int) -> float:
    """``s²(v)``: the smallest variance of any ``n − f`` of the rows' projections
    ``y_i = x_iᵀ v`` on a direction ``v``, an estimate of the honest spread along
    ``v`` that ``f`` Byzantine rows cannot raise (module docstring, step 1).

    Exact: the minimum is reached on ``n − f`` consecutive sorted values. For any
    set ``S`` with mean ``a``, the ``n − f`` values nearest to ``a`` are consecutive
    and no farther from ``a`` in total square, and their own variance is at most
    their mean square about ``a`` (the univariate MCD/LTS of Rousseeuw & Leroy,
    "Robust Regression and Outlier Detection", 1987, ch. 4). ``0`` when
    ``n − f < 2``.
    """
    values = np.sort(np.asarray(projections, dtype=np.float64))
    k = values.shape[0] - f
    if k < 2:
        return 0.0
    windows = np.lib.stride_tricks.sliding_window_view(values, k)
    return float(windows.var(axis=1).min())


def carries_certificate(
    squared_distances: np.ndarray,
    c: np.ndarray,
    f: int,
    threshold: float,
    scale: float,
) -> bool:
    """``λ_c ≤ threshold · max(s², s²(v_c))``: the certificate of weights ``c``.

    ``scale`` is ``s²`` (:func:`spread_scale`); ``s²(v_c)`` is
    :func:`direction_spread` of every row's projection on ``c``'s top direction.
    """
    eigenvalue, projections = top_direction(squared_distances, c)
    # The isotropic floor decides most candidates without sorting projections.
    if eigenvalue <= threshold * scale:
        return True
    return eigenvalue <= threshold * direction_spread(projections, f)


def spread_scale(squared_distances: np.ndarray, f: int) -> float:
    """``s²``: an estimate of the honest spread that ``f`` Byzantine rows cannot raise.

    ``a_i`` is the mean of the ``k = n − f − 1`` smallest ``‖x_i − x_j‖²``
    (``j ≠ i``) and ``s² = a_(m) / (2(n − 1))`` with ``a_(m)`` the ``m``-th smallest,
    ``m = ⌈n/2⌉``. For near-orthogonal honest deviations ``s²`` is about
    ``tr Σ_H / (n − 1)``, the mean eigenvalue of the honest covariance; whatever the
    Byzantine rows are, ``s² ≤ κ σ²`` (module docstring, step 1). ``0`` for one row.
    """
    n = squared_distances.shape[0]
    if n < 2:
        return 0.0
    others = squared_distances + np.diag(np.full(n, np.inf))
    nearest = np.sort(others, axis=1)[:, : n - f - 1]
    means = nearest.mean(axis=1) if nearest.shape[1] > 0 else np.zeros(n)
    return float(np.sort(means)[(n + 1) // 2 - 1]) / (2.0 * (n - 1))


def spread_factor(n: int, f: int) -> float:
    """``κ = n² / ((n − 1)(n − f − ⌈n/2⌉ + 1))``: ``s² ≤ κ σ²`` (module docstring)."""
    return n * n / ((n - 1) * (n - f - (n + 1) // 2 + 1))


@dataclass(frozen=True)
class Certification:
    """What the certified filter returns: the weights, and the rows it vouches for.

    Attributes
    ----------
    weights : np.ndarray
        ``(n,)`` ``p``, summing to 1.
    vouched : np.ndarray | None
        ``(n,)`` bool: the hard set ``1[c ≥ ½]`` whose uniform weights carried the
        certificate (``weights`` is uniform on it), all rows when they passed at
        once; ``None`` when the answer is a fractional iterate or CAF's fallback,
        which vouch for no set of rows.
    """

    weights: np.ndarray
    vouched: np.ndarray | None


def certified_filter(
    squared_distances: np.ndarray, f: int, threshold: float
) -> np.ndarray:
    """Weights ``p`` (sum 1): the first CAF iterate that passes the certificate, else
    CAF's own answer (:func:`covariance_filter`); see :func:`certify`."""
    return certify(squared_distances, f, threshold).weights


@dataclass(frozen=True)
class Population:
    """All ``n`` valid rows of a round, when the filter runs on some of them.

    Attributes
    ----------
    squared_distances : np.ndarray
        ``(n, n)`` pairwise squared distances of every valid row.
    rows : np.ndarray
        Indices of the rows the filter runs on (the survivors of the detectors).
    f : int
        Byzantine rows assumed among all ``n``.
    """

    squared_distances: np.ndarray
    rows: np.ndarray
    f: int


def certify(
    squared_distances: np.ndarray,
    f: int,
    threshold: float,
    population: Population | None = None,
) -> Certification:
    """The certified filter's weights and the set of rows they vouch for.

    At each iterate ``c`` that carries the certificate (:func:`carries_certificate`:
    ``λ_c ≤ threshold · max(s², s²(v_c))``) two candidates are tried, the rounded
    ``1[c ≥ ½]`` first, then ``c`` itself; the first with ``Σ ≥ n − f`` that carries
    the certificate (along its own top direction) is returned, as ``c / Σc``. When the
    rows at hand pass at once (no attack, or attackers already dropped by the
    detectors) the weights are exactly ``1/n``: the plain mean.

    ``population``: the rows at hand are ``population.rows`` of more valid rows, at
    most ``population.f`` of which are Byzantine. Each scale is then the larger of
    the one read from the rows at hand (with ``f``) and the one read from all of
    them (with ``population.f``, ``c`` zero on the others). Step 1 of the module
    docstring bounds both by ``κ σ²`` (with ``κ`` of the rows at hand, the larger),
    so the larger is a bound too: honest rows that the detectors dropped still show
    the honest spread, where ``f`` attackers assumed among fewer rows would make the
    scales of those rows alone strict enough to filter honest ones; identical
    rejected rows (IPM, ALIE) lower the scales of all rows, not those of the rows
    at hand (:meth:`CertifiedStage.certify_survivors`).
    """
    n = squared_distances.shape[0]
    if not 0 <= 2 * f < n:
        raise ValueError(f"the covariance filter needs n > 2f, got f={f}, n={n}")
    if not threshold > 0.0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    scale = spread_scale(squared_distances, f)
    if population is not None:
        scale = max(scale, spread_scale(population.squared_distances, population.f))

    def carries(weights: np.ndarray) -> bool:
        if carries_certificate(squared_distances, weights, f, threshold, scale):
            return True
        if population is None:
            return False
        everywhere = np.zeros(population.squared_distances.shape[0])
        everywhere[population.rows] = weights
        return carries_certificate(
            population.squared_distances, everywhere, population.f, threshold, scale
        )

    best, best_eigenvalue = np.full(n, 1.0 / n), np.inf
    for c, p, eigenvalue in filter_iterates(squared_distances, f):
        # The isotropic floor first: it decides without another eigendecomposition.
        if eigenvalue <= threshold * scale or carries(c):
            rounded = np.where(c >= 0.5, 1.0, 0.0)
            if float(rounded.sum()) >= n - f and (
                np.array_equal(rounded, c) or carries(rounded)
            ):
                return Certification(rounded / float(rounded.sum()), rounded > 0.0)
            if float(c.sum()) >= n - f:
                return Certification(p, None)
        if eigenvalue < best_eigenvalue:
            best, best_eigenvalue = p, eigenvalue
    return Certification(best, None)


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
class CertifiedFilter:
    """The certified filter as an aggregation rule: ``Σ_i p_i x_i``
    (:func:`certified_filter`).

    Parameters
    ----------
    f : int
        Byzantine updates tolerated (``n > 2f``).
    threshold : float
        ``C`` of the certificate ``λ ≤ C s²`` (module docstring).
    """

    f: int = 0
    threshold: float = 4.0
    supports_weights: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if isinstance(self.f, bool) or not isinstance(self.f, int) or self.f < 0:
            raise ValueError(f"f must be a non-negative integer, got {self.f!r}")
        if not self.threshold > 0.0:
            raise ValueError(f"threshold must be positive, got {self.threshold}")

    def weights(self, updates: UpdatesLike) -> np.ndarray:
        """The rule's weight of every row (sum 1)."""
        return certified_filter(
            pairwise_squared_distances(updates), self.f, self.threshold
        )

    def __call__(
        self, updates: UpdatesLike, weights: WeightsLike | None = None
    ) -> np.ndarray:
        if weights is not None:
            raise ValueError("CertifiedFilter does not take weights")
        matrix = as_update_matrix(updates)
        return weighted_sum(matrix, self.weights(matrix))


def _check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction < 0.5:
        raise ValueError(f"byzantine_fraction must lie in [0, 0.5), got {fraction}")


@dataclass(frozen=True)
class CertifiedStage:
    """The default stage: the certified filter with ``f = ⌊byzantine_fraction · n⌋``.

    Parameters
    ----------
    byzantine_fraction : float
        Assumed fraction of Byzantine rows among the valid replies, ``0 ≤ β < ½``;
        ``f`` is capped at ``⌊(n − 1)/2⌋`` of the rows the filter runs on.
    threshold : float
        ``C`` of the certificate ``λ ≤ C s²`` (module docstring), ``> 0``.
    """

    byzantine_fraction: float = 0.3
    threshold: float = 4.0

    def __post_init__(self) -> None:
        _check_fraction(self.byzantine_fraction)
        if not self.threshold > 0.0:
            raise ValueError(f"threshold must be positive, got {self.threshold}")

    def byzantine_count(self, n: int) -> int:
        """``f`` for ``n`` rows."""
        return byzantine_count(self.byzantine_fraction, n, filter_max_f)

    def weights(self, squared_distances: np.ndarray) -> np.ndarray:
        """``π`` for rows with pairwise squared distances ``D`` (sum 1)."""
        return self.certify(squared_distances).weights

    def certify(self, squared_distances: np.ndarray) -> Certification:
        """``π`` and the rows it vouches for (:func:`certify`)."""
        f = self.byzantine_count(squared_distances.shape[0])
        return certify(squared_distances, f, self.threshold)

    def certify_survivors(
        self, squared_distances: np.ndarray, survivors: np.ndarray
    ) -> Certification:
        """``π`` over the rows ``survivors`` (indices) of all ``n`` valid rows, whose
        pairwise squared distances are ``D``, and the survivors it vouches for.

        ``β`` bounds the Byzantine share of the *replies*: all ``F = ⌊β n⌋`` may be
        among the ``n'`` survivors, since a row dropped before the stage may have
        been honest (an attacker who has read the detectors can make them drop
        one). So the filter assumes ``min(F, ⌊(n' − 1)/2⌋)`` of the survivors, and
        reads its scales from them and from all ``n`` rows (:func:`certify`'s
        ``population``).
        Assuming ``⌊β n'⌋`` let 6 attackers of 20, shifted along the honest rows'
        top direction, pass as 5 once the detectors had rejected one honest row
        (relative error 0.81 in that round, where the filter alone on the 20 rows
        gives 0.16: ``benchmarks/tailored_attacks.py``).
        """
        n, kept = squared_distances.shape[0], survivors.shape[0]
        replies_f = self.byzantine_count(n)
        f = min(replies_f, filter_max_f(kept))
        in_play = squared_distances[np.ix_(survivors, survivors)]
        if kept == n:
            return certify(in_play, f, self.threshold)
        population = Population(squared_distances, survivors, replies_f)
        return certify(in_play, f, self.threshold, population)

    def describe(self, n: int | None = None) -> str:
        """One line for a summary (with ``f`` when ``n`` is known)."""
        used = "" if n is None else f", f = {self.byzantine_count(n)} of n = {n}"
        return (
            f"certified filter (byzantine_fraction = {self.byzantine_fraction}, "
            f"threshold = {self.threshold}{used})"
        )


@dataclass(frozen=True)
class RobustStage:
    """NNM ∘ CAF with ``f = ⌊byzantine_fraction · n⌋`` of the rows it is given (the
    former default; ``robust_rule: {_target_: strategies.robust_stage.RobustStage}``).

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
        _check_fraction(self.byzantine_fraction)

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
    for step in range(order.size):
        # Sums recomputed, not updated: a subtraction would cancel tiny weights.
        fixed = float(caps[order[:step]].sum())
        free = order[step:]
        shares = (1.0 - fixed) * (wanted[free] / wanted[free].sum())
        # Every free row, not only the next breakpoint's: near subnormals the log
        # order and the rounded shares can disagree, and stopping on the first row
        # alone left another above its cap (then clipped: Σ w < 1).
        if np.all(shares <= caps[free]):
            weights = np.zeros_like(robust)
            weights[order[:step]] = caps[order[:step]]
            weights[free] = np.minimum(caps[free], shares)
            return weights
    return np.where(live, caps, 0.0)


Stage = CertifiedStage | RobustStage
"""A stage :class:`strategies.trusted.TrustedFedAvg` can run (``robust_rule``)."""
