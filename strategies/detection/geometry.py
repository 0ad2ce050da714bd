"""The geometry of one round: robust scales, cosines and distances from one Gram
matrix, and the geometric median written as a combination of the rows.

Pure functions of numpy arrays, shared by every detector (:mod:`strategies.detection.
detectors`); see :mod:`strategies.detection` for why everything pairwise is read off
one Gram matrix.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import numpy as np

from strategies import aggregators
from strategies.delta_matrix import DeltaMatrix, Deltas

MAD_TO_SIGMA = 1.4826
"""``1 / Φ⁻¹(3/4)``: scales the median absolute deviation to a normal σ."""

SCORE_CEILING = 1e12
"""Largest score reported: a zero robust scale must not turn a score into ``inf``."""


def safe_ratio(numerator: np.ndarray, denominator: np.ndarray | float) -> np.ndarray:
    """``numerator / denominator`` with ``x/0`` read as 0 (``x = 0``) or the ceiling.

    Parameters
    ----------
    numerator : np.ndarray
        Non-negative values.
    denominator : np.ndarray | float
        Non-negative values, broadcastable to ``numerator``.

    Returns
    -------
    np.ndarray
        float64 ratios in ``[0, SCORE_CEILING]``.
    """
    top = np.asarray(numerator, dtype=np.float64)
    bottom = np.broadcast_to(np.asarray(denominator, dtype=np.float64), top.shape)
    undefined = np.where(top == 0.0, 0.0, SCORE_CEILING)
    ratio = np.divide(top, bottom, out=undefined.copy(), where=bottom > 0.0)
    return np.minimum(ratio, SCORE_CEILING)


def robust_z(values: np.ndarray, min_scale: float = 0.0) -> np.ndarray:
    """Signed robust z-scores ``(x − median) / max(1.4826 · MAD, min_scale)``.

    The modified z-score of Iglewicz & Hoaglin (1993), *How to Detect and Handle
    Outliers*, ASQC, Sec. 3.3: ``M_i = 0.6745 (x_i − x̃) / MAD`` (``0.6745 = 1/1.4826``),
    who recommend ``|M_i| > 3.5`` as the outlier label. The median and MAD break down
    only at 50 % contamination, so 30 % attackers cannot hide by shifting them.
    ``min_scale`` stops a population of near-identical values from turning tiny
    honest differences into huge z-scores.

    Parameters
    ----------
    values : np.ndarray
        ``(n,)`` float64, ``n ≥ 1``.
    min_scale : float
        Lower bound on the scale, in the units of ``values``.

    Returns
    -------
    np.ndarray
        ``(n,)`` float64, signed, magnitudes at most :data:`SCORE_CEILING`.
    """
    centre = float(np.median(values))
    deviations = values - centre
    scale = max(MAD_TO_SIGMA * float(np.median(np.abs(deviations))), min_scale)
    return np.sign(deviations) * safe_ratio(np.abs(deviations), scale)


def one_sided_z(
    values: np.ndarray, min_scale: float, side: Literal["upper", "lower"]
) -> np.ndarray:
    """How far each value lies beyond the median on one ``side``, in robust σ.

    :func:`robust_z` with the other side set to 0: a detector that flags long
    updates must not flag short ones (and the reverse).

    Parameters
    ----------
    values, min_scale
        As in :func:`robust_z`.
    side : {"upper", "lower"}
        Which excess counts.

    Returns
    -------
    np.ndarray
        ``(n,)`` float64 in ``[0, SCORE_CEILING]``.
    """
    signed = robust_z(values, min_scale)
    return np.maximum(signed if side == "upper" else -signed, 0.0)


def cosines_from_dots(
    dots: np.ndarray, norms_a: np.ndarray, norms_b: np.ndarray | float
) -> np.ndarray:
    """``dots / (‖a‖ ‖b‖)`` clipped to ``[−1, 1]``; 0 where a norm is 0.

    A zero vector has no direction; calling it orthogonal to everything (cosine 0)
    makes it neither similar nor opposed, which is what a free-rider is.
    """
    scale = np.multiply(norms_a, norms_b)
    result = np.divide(dots, scale, out=np.zeros_like(dots), where=scale > 0.0)
    return np.clip(result, -1.0, 1.0)


def row_norms(matrix: Deltas, workers: int | None = None) -> np.ndarray:
    """Exact Euclidean norm of every row, ``√Σ_k x_ik²``, on several threads.

    One ``einsum`` runs on one core, while the weighted mean it is compared with
    (BLAS ``gemv``) uses all of them: on 50 × 1M with two cores, 36 ms against
    17 ms. ``einsum`` releases the GIL, so rows are split over ``workers`` threads
    (default: the CPUs this process may use, at most 8), which brings it to 18 ms.

    A :class:`~strategies.delta_matrix.DeltaMatrix` computes its own, streamed
    over column blocks on as many threads.

    Parameters
    ----------
    matrix : Deltas
        ``(n, d)`` float64.
    workers : int | None
        Threads to use; ``None`` for the default above.

    Returns
    -------
    np.ndarray
        ``(n,)`` float64 norms.
    """
    if isinstance(matrix, DeltaMatrix):
        return matrix.row_norms()
    rows = matrix.shape[0]
    if workers is None:
        workers = min(len(os.sched_getaffinity(0)), 8)
    workers = max(1, min(workers, rows))
    if workers == 1 or matrix.size < 1 << 20:
        return np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    bounds = np.linspace(0, rows, workers + 1).astype(int)
    with ThreadPoolExecutor(workers) as pool:
        parts = pool.map(
            lambda part: np.einsum("ij,ij->i", part, part),
            [matrix[start:stop] for start, stop in pairwise(bounds)],
        )
        return np.sqrt(np.concatenate(list(parts)))


def gram_matrix(matrix: Deltas) -> np.ndarray:
    """``X Xᵀ`` over every coordinate: one BLAS call, or a sum over column blocks
    of a :class:`~strategies.delta_matrix.DeltaMatrix` (never held whole)."""
    if not isinstance(matrix, DeltaMatrix):
        return matrix @ matrix.T
    gram = np.zeros((matrix.shape[0], matrix.shape[0]))
    for columns in matrix.column_blocks():
        block = matrix.column_block(columns)
        gram += block @ block.T
    return gram


def squared_distances_from_gram(gram: np.ndarray) -> np.ndarray:
    """Pairwise ``‖x_i − x_j‖² = G_ii + G_jj − 2 G_ij``, clipped at 0, zero diagonal."""
    diagonal = np.diag(gram)
    distances = np.maximum(diagonal[:, None] + diagonal[None, :] - 2.0 * gram, 0.0)
    np.fill_diagonal(distances, 0.0)
    return distances


def geometric_median_coefficients(
    gram: np.ndarray,
    max_iterations: int = 100,
    tolerance: float = 1e-9,
) -> np.ndarray:
    """Weiszfeld's geometric median of the rows, as coefficients ``β`` of ``v = βᵀX``.

    Each Weiszfeld step (Weiszfeld 1937; smoothed as in Pillutla, Kakade & Harchaoui,
    "Robust Aggregation for Federated Learning", IEEE TSP 2022, Algorithm 2) is a
    convex combination of the rows, so the estimate stays in their span and every
    distance it needs follows from the Gram matrix:

    .. math:: \\|v - x_i\\|^2 = \\beta^\\top G \\beta - 2 (G\\beta)_i + G_{ii},\\qquad
              \\beta \\leftarrow \\frac{1/\\max(\\nu, \\|v - x_i\\|)}
              {\\sum_j 1/\\max(\\nu, \\|v - x_j\\|)}

    ``O(n²)`` per step and no pass over the ``d`` coordinates: the solver is the
    rule's own (:func:`strategies.aggregators.weiszfeld_iterations`), run in
    :class:`GramSpace`. ``ν`` is ``1e-6`` of the
    median row norm, so an estimate landing on a row keeps the step defined; it must
    exceed the ``~1e-8`` relative precision of Gram-identity distances, or an
    estimate on a row that is not the median cannot see itself leave it.

    A far row must not drag the *computed* centre (the geometric median itself moves
    by at most the spread of the majority). So, unlike RFA, the start is the mean of
    the half of the rows closest to the medoid (the row with the smallest median
    distance to the others), not the mean of all rows, and the iteration stops when
    a step moves the estimate by less than ``tolerance`` × the median distance of
    the rows to it, not when ``Σ‖v − x_i‖`` improves by a fraction of itself: a far
    row dominates that sum, which then stops changing while the estimate is still
    off by ``tolerance`` × that row's distance. (With the old rules one update of
    norm ``10¹⁰`` among eight of norm 0.3 left the centre 4 units away, and
    :class:`Collusion` rejected every honest row, whose residuals all pointed the
    same way.)

    Parameters
    ----------
    gram : np.ndarray
        ``(n, n)`` Gram matrix of the rows.
    max_iterations : int
        Upper bound on Weiszfeld steps.
    tolerance : float
        Stop when a step moves the estimate by less than this fraction of the median
        distance of the rows to it (at least ``ν``).

    Returns
    -------
    np.ndarray
        ``(n,)`` non-negative coefficients summing to 1.
    """
    n = gram.shape[0]
    diagonal = np.diag(gram)
    norms = np.sqrt(np.maximum(diagonal, 0.0))
    nu = max(1e-6 * float(np.median(norms)), 1e-300)
    pairwise_distances = np.sqrt(squared_distances_from_gram(gram))
    medoid = int(np.argmin(np.median(pairwise_distances, axis=1)))
    nearest = np.argsort(pairwise_distances[medoid], kind="stable")[: n // 2 + 1]
    start = np.zeros(n)
    start[nearest] = 1.0 / nearest.size
    coefficients, _ = aggregators.weiszfeld_iterations(
        GramSpace(gram),
        start,
        None,
        nu,
        max_iterations,
        tolerance,
        lambda distances: float(np.median(distances)),
    )
    return coefficients


@dataclass(frozen=True)
class GramSpace:
    """:class:`strategies.aggregators.WeiszfeldSpace` of coefficients: an estimate
    is ``β`` with ``v = βᵀX``, and every distance follows from ``G = X Xᵀ``.

    .. math:: \\|v - x_i\\|^2 = \\beta^\\top G \\beta - 2 (G\\beta)_i + G_{ii}
    """

    gram: np.ndarray

    def distances(self, estimate: np.ndarray) -> np.ndarray:
        projected = self.gram @ estimate
        squared = estimate @ projected - 2.0 * projected + np.diag(self.gram)
        return np.sqrt(np.maximum(squared, 0.0))

    def combine(self, coefficients: np.ndarray) -> np.ndarray:
        return coefficients / coefficients.sum()

    def gap(self, new: np.ndarray, old: np.ndarray) -> float:
        step = new - old
        return float(np.sqrt(max(float(step @ self.gram @ step), 0.0)))


def krum_neighbour_sums(squared_distances: np.ndarray, byzantine: int) -> np.ndarray:
    """Sum of squared distances to the ``n − f − 2`` nearest other rows.

    Krum's score (Blanchard, El Mhamdi, Guerraoui & Stainer, "Machine Learning with
    Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017, Sec. 4):
    ``s(i) = Σ_{i→j} ‖x_i − x_j‖²``. The neighbour count is clamped to ``[1, n − 1]``
    so small rounds still get a score; a single row scores 0. The rule's own
    :func:`strategies.aggregators.krum_scores`, named for the detectors.
    """
    return aggregators.krum_scores(squared_distances, byzantine)


def centred_gram(gram: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """Gram matrix of the residuals ``r_i = x_i − v`` with ``v = βᵀX``.

    .. math:: R R^\\top = G - G\\beta 1^\\top - 1 \\beta^\\top G
              + (\\beta^\\top G \\beta)\\, 1 1^\\top
    """
    projected = gram @ coefficients
    return (
        gram - projected[:, None] - projected[None, :] + float(coefficients @ projected)
    )


def leave_one_out_cosines(gram: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """``cos(x_i, c_{−i})`` with ``c_{−i} = Σ_{j≠i} β_j x_j``, from the Gram matrix.

    .. math:: x_i \\cdot c_{-i} = (G\\beta)_i - \\beta_i G_{ii},\\qquad
              \\|c_{-i}\\|^2 = \\beta^\\top G \\beta - 2\\beta_i (G\\beta)_i
              + \\beta_i^2 G_{ii}

    Leaving the row out matters when client-specific directions dominate (non-IID
    data): with 20 nearly orthogonal updates a row's own share of the full centre
    makes every row look aligned. Cosines are scale-free, so ``β`` need not sum to 1.

    Parameters
    ----------
    gram : np.ndarray
        ``(n, n)`` Gram matrix of the rows.
    coefficients : np.ndarray
        ``(n,)`` non-negative ``β``.

    Returns
    -------
    np.ndarray
        ``(n,)`` cosines in ``[−1, 1]``; 0 where the row or its centre is zero.
    """
    beta = np.asarray(coefficients, dtype=np.float64)
    diagonal = np.diag(gram)
    projected = gram @ beta
    total = float(beta @ projected)
    dots = projected - beta * diagonal
    squared = np.maximum(total - 2.0 * beta * projected + beta**2 * diagonal, 0.0)
    return cosines_from_dots(dots, np.sqrt(np.maximum(diagonal, 0.0)), np.sqrt(squared))


def clipped_mean_coefficients(norms: np.ndarray, used: np.ndarray) -> np.ndarray:
    """``β`` of the mean of the ``used`` rows, each clipped to the median used norm.

    ``β_i = min(1, τ / ‖x_i‖)`` for used rows (0 otherwise), ``τ`` the median norm of
    the used rows: every row gets at most one typical-length vote, so a few scaled
    updates cannot steer the centre (norm clipping as in Sun et al., 2019).
    """
    beta = np.zeros(norms.shape[0])
    if not np.any(used):
        return beta
    bound = float(np.median(norms[used]))
    beta[used] = safe_ratio(np.full(int(used.sum()), bound), norms[used])
    return np.minimum(beta, 1.0)


@dataclass(frozen=True)
class RoundGeometry:
    """Everything pairwise about one round, from one Gram matrix.

    Attributes
    ----------
    gram : np.ndarray
        ``(n, n)`` ``S Sᵀ`` of the sampled coordinates ``S`` (all of them when exact).
    norms : np.ndarray
        ``(n,)`` exact ``‖x_i‖`` over every coordinate.
    gram_norms : np.ndarray
        ``(n,)`` ``‖s_i‖ = √G_ii``, the norms in the Gram matrix's own units.
    centre : np.ndarray
        ``(n,)`` coefficients ``β`` of the geometric median ``v = βᵀS``.
    """

    gram: np.ndarray
    norms: np.ndarray
    gram_norms: np.ndarray
    centre: np.ndarray

    @classmethod
    def from_deltas(
        cls,
        deltas: Deltas,
        sample: np.ndarray | None = None,
        norms: np.ndarray | None = None,
    ) -> RoundGeometry:
        """Gram matrix (one BLAS call), exact norms and the geometric median.

        Parameters
        ----------
        deltas : Deltas
            ``(n, d)`` rows.
        sample : np.ndarray | None
            ``(n, m)`` the rows on sampled coordinates, for the Gram matrix; ``None``
            uses every coordinate.
        norms : np.ndarray | None
            ``(n,)`` exact ``‖x_i‖`` already computed by the caller (e.g. in the
            sweep that also gave the pairwise distances,
            :func:`strategies.aggregators.squared_norms_and_distances`); with a
            sample, saves the pass over the deltas that would compute them.
        """
        matrix = as_deltas(deltas)
        source = matrix if sample is None else np.asarray(sample, dtype=np.float64)
        if source.shape[0] != matrix.shape[0]:
            raise ValueError(
                f"sample has {source.shape[0]} rows, deltas have {matrix.shape[0]}"
            )
        gram = gram_matrix(source)
        gram = 0.5 * (gram + gram.T)  # BLAS may leave last-bit asymmetry
        gram_norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
        if sample is None:
            norms = gram_norms
        elif norms is None:
            norms = row_norms(matrix)
        elif np.shape(norms) != (matrix.shape[0],):
            raise ValueError(
                f"need {matrix.shape[0]} norms, got shape {np.shape(norms)}"
            )
        if not (np.isfinite(gram).all() and np.isfinite(norms).all()):
            raise ValueError("deltas contain NaN or infinite values (or overflow)")
        return cls(gram, norms, gram_norms, geometric_median_coefficients(gram))

    @property
    def size(self) -> int:
        """Number of rows."""
        return int(self.norms.shape[0])

    def cosines_to_centre(self) -> np.ndarray:
        """``cos(x_i, v_{−i})``: each row against the median with itself left out.

        With ``v = Σ_j β_j x_j`` the leave-one-out centre is ``v_{−i} = (v − β_i x_i)
        / (1 − β_i)``; its dot product with ``x_i`` and its norm follow from the Gram
        matrix. Leaving the row out matters when client noise dominates the shared
        direction: ``x_i · v`` then mostly measures ``x_i``'s own share in ``v``, which
        makes an update opposed to the others look aligned. A row carrying all the
        weight (``β_i = 1``) is compared with the full centre.
        """
        projected = self.gram @ self.centre
        total = float(self.centre @ projected)
        own = self.centre
        diagonal = np.diag(self.gram)
        alone = own >= 1.0 - 1e-12
        rest = np.where(alone, 1.0, 1.0 - own)
        dots = np.where(alone, projected, (projected - own * diagonal) / rest)
        squared = np.where(
            alone,
            total,
            (total - 2.0 * own * projected + own**2 * diagonal) / rest**2,
        )
        centre_norms = np.sqrt(np.maximum(squared, 0.0))
        return cosines_from_dots(dots, self.gram_norms, centre_norms)


def as_deltas(deltas: Deltas) -> Deltas:
    """``deltas`` as a float64 ndarray, or the DeltaMatrix itself (kept lazy)."""
    matrix = (
        deltas
        if isinstance(deltas, DeltaMatrix)
        else np.asarray(deltas, dtype=np.float64)
    )
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise ValueError(
            f"deltas must have shape (n, d) with n ≥ 1, got {matrix.shape}"
        )
    # Finiteness is checked on the Gram matrix and norms (RoundGeometry.from_deltas):
    # a NaN or inf anywhere shows there, without another pass over the deltas.
    return matrix
