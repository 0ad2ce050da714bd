"""Anomaly detectors: one small class per signal, one verdict per reply.

Every detector maps a round's ``(n, d)`` float64 deltas to ``(n,)`` scores where
larger is more suspicious, and carries two thresholds: a score at or above
``downweight_at`` multiplies the reply's weight by a factor below one, a score at or
above ``reject_at`` removes it. :class:`DetectorPanel` runs several detectors and
turns their scores into one :class:`Screening` per round, each reason naming the
detector and its value.

Cost. Everything pairwise is read off one Gram matrix ``G = S Sᵀ``
(:class:`RoundGeometry`): cosines, pairwise distances and a geometric median written
as a combination of the rows. ``S`` holds the deltas on :data:`SKETCH_COORDINATES`
coordinates, so for ``d`` up to 32 768 everything is exact; for larger models ``S``
is 32 random blocks of 1 024 coordinates drawn from a seed the server keeps to
itself (:func:`sketch_coordinates`). An exact ``n × n`` Gram matrix costs ``n² d``
flops: measured 127 ms on 50 × 1M, seven times the 18 ms of the weighted mean it
serves, whereas gathering the sketch and its Gram matrix cost about 3 + 5 ms.
Norms are always exact (one pass), and so are the norm detector and the norm bound
built on them; a change confined to unsampled coordinates must therefore be small,
or it shows in the norm.
``exact_geometry=True`` (:meth:`DetectionContext.build`) uses all coordinates.
Distances taken from the Gram identity lose precision only when two rows are closer
than ``~1e-8`` of their norm, far below every threshold used here (the
exact-difference form of :mod:`strategies.aggregators` is for rules whose *output*
depends on them). History (:class:`UpdateHistory`) keeps the same sampled
coordinates, so remembering a client costs ``O(m)``, not ``O(d)``.

Attacks and the detector meant to catch them (30 % malicious of 20 clients):

=========================  =========================================================
sign flip, IPM, Sybil      :class:`Opposition` (against the round's consensus),
                           :class:`CosineToCentre` (pointing away from the median)
scaling ×λ                 :class:`NormOutlier`
Gaussian noise             :class:`NormOutlier` (σ√d), :class:`KrumDistance`
ALIE, IPM, Sybils          :class:`Collusion` (identical crafted updates)
free-rider (zero, stale)   :class:`FreeRider`
sleeper, drifting client   :class:`HistoryConsistency` (down-weights only)
=========================  =========================================================
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import pairwise
from typing import ClassVar, Literal, Protocol, runtime_checkable

import numpy as np

from strategies import aggregators
from strategies.records import Verdict

MAD_TO_SIGMA = 1.4826
"""``1 / Φ⁻¹(3/4)``: scales the median absolute deviation to a normal σ."""

SCORE_CEILING = 1e12
"""Largest score reported: a zero robust scale must not turn a score into ``inf``."""

SKETCH_COORDINATES = 32_768
"""Coordinates sampled from each delta for pairwise geometry and history (all of
them when ``d`` is smaller)."""

SKETCH_BLOCK = 1_024
"""Length of the contiguous blocks the sampled coordinates come in."""


# --------------------------------------------------------------------------------------
# Pure mathematical helpers
# --------------------------------------------------------------------------------------


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


def row_norms(matrix: np.ndarray, workers: int | None = None) -> np.ndarray:
    """Exact Euclidean norm of every row, ``√Σ_k x_ik²``, on several threads.

    One ``einsum`` runs on one core, while the weighted mean it is compared with
    (BLAS ``gemv``) uses all of them: on 50 × 1M with two cores, 36 ms against
    17 ms. ``einsum`` releases the GIL, so rows are split over ``workers`` threads
    (default: the CPUs this process may use, at most 8), which brings it to 18 ms.

    Parameters
    ----------
    matrix : np.ndarray
        ``(n, d)`` float64.
    workers : int | None
        Threads to use; ``None`` for the default above.

    Returns
    -------
    np.ndarray
        ``(n,)`` float64 norms.
    """
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

    ``O(n²)`` per step and no pass over the ``d`` coordinates. ``ν`` is ``1e-6`` of the
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
    coefficients = np.zeros(n)
    coefficients[nearest] = 1.0 / nearest.size

    def distances_to(beta: np.ndarray) -> np.ndarray:
        projected = gram @ beta
        return np.sqrt(np.maximum(beta @ projected - 2.0 * projected + diagonal, 0.0))

    distances = distances_to(coefficients)
    for _ in range(max_iterations):
        inverse = 1.0 / np.maximum(distances, nu)
        step = inverse / inverse.sum() - coefficients
        coefficients = coefficients + step
        distances = distances_to(coefficients)
        moved = float(np.sqrt(max(float(step @ gram @ step), 0.0)))
        if moved <= tolerance * max(nu, float(np.median(distances))):
            break
    return coefficients


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


# --------------------------------------------------------------------------------------
# What the detectors see
# --------------------------------------------------------------------------------------


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
        cls, deltas: np.ndarray, sample: np.ndarray | None = None
    ) -> RoundGeometry:
        """Gram matrix (one BLAS call), exact norms and the geometric median.

        Parameters
        ----------
        deltas : np.ndarray
            ``(n, d)`` rows.
        sample : np.ndarray | None
            ``(n, m)`` the rows on sampled coordinates, for the Gram matrix; ``None``
            uses every coordinate.
        """
        matrix = _as_deltas(deltas)
        source = matrix if sample is None else np.asarray(sample, dtype=np.float64)
        if source.shape[0] != matrix.shape[0]:
            raise ValueError(
                f"sample has {source.shape[0]} rows, deltas have {matrix.shape[0]}"
            )
        gram = source @ source.T
        gram = 0.5 * (gram + gram.T)  # BLAS may leave last-bit asymmetry
        gram_norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
        norms = gram_norms if sample is None else row_norms(matrix)
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


@lru_cache(maxsize=8)
def sketch_coordinates(width: int, count: int, seed: int) -> np.ndarray:
    """The coordinates sampled for geometry and history (sorted, read-only, cached).

    All of them when ``width ≤ count``; else ``count // SKETCH_BLOCK`` distinct
    blocks of :data:`SKETCH_BLOCK` consecutive coordinates drawn with ``seed``.
    Contiguous blocks are read at memory speed, whereas ``count`` scattered indices
    cost a cache miss each (measured: 130 ms against 5 ms on 50 × 1M).
    """
    if width <= count:
        chosen = np.arange(width)
    else:
        block = min(SKETCH_BLOCK, count)
        generator = np.random.default_rng([seed, width])
        starts = np.sort(
            generator.choice(width // block, count // block, replace=False) * block
        )
        chosen = (starts[:, None] + np.arange(block)[None, :]).ravel()
    chosen.setflags(write=False)
    return chosen


@dataclass(frozen=True)
class UpdateHistory:
    """Each identity's previous delta, restricted to a fixed set of coordinates.

    Keeping ``m`` coordinates (:func:`sketch_coordinates`, at most
    :data:`SKETCH_COORDINATES`, in random blocks) instead of all ``d`` bounds memory
    by ``m`` floats per identity. A stale replay is identical on any subset; a cosine
    over 32 random blocks of a dense delta estimates the full one (exactly so when
    ``d ≤ m``, where every coordinate is kept). ``seed`` picks the blocks: keep it
    secret (the strategy draws it from the OS), so clients cannot aim at the gaps.

    Immutable: :meth:`remember` returns the history of the next round.
    """

    width: int | None = None
    """Length ``d`` of the deltas remembered (``None`` before the first round)."""
    previous: Mapping[str, np.ndarray] = field(default_factory=dict)
    last_seen: Mapping[str, int] = field(default_factory=dict)
    max_coordinates: int = SKETCH_COORDINATES
    seed: int = 0

    def coordinates(self, width: int) -> np.ndarray:
        """Indices of the remembered coordinates for deltas of length ``width``."""
        return sketch_coordinates(width, self.max_coordinates, self.seed)

    def sketch(self, deltas: np.ndarray) -> np.ndarray:
        """The remembered coordinates of each row: ``(n, m)``, a new array."""
        coordinates = self.coordinates(deltas.shape[1])
        if coordinates.shape[0] == deltas.shape[1]:
            return np.array(deltas)
        return deltas[:, coordinates]  # fancy indexing: already a new array

    def compare(
        self, identities: Sequence[str], sketches: np.ndarray, width: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """How each row relates to its identity's previous sketch.

        Parameters
        ----------
        identities : Sequence[str]
            Identity of each row.
        sketches : np.ndarray
            ``(n, m)`` this round's rows on the sampled coordinates.
        width : int
            Length ``d`` of this round's deltas: after a change of model shape
            nothing is known.

        Returns
        -------
        tuple[np.ndarray, np.ndarray, np.ndarray]
            ``(n,)`` dot products ``s_i · p_i``, ``(n,)`` norms ``‖p_i‖`` (0 where
            unknown) and the ``(n,)`` bool mask of rows with a previous sketch.
        """
        rows = len(identities)
        dots, norms, known = np.zeros(rows), np.zeros(rows), np.zeros(rows, bool)
        if width != self.width:
            return dots, norms, known
        for row, identity in enumerate(identities):
            remembered = self.previous.get(identity)
            if remembered is None:
                continue
            # einsum, not a BLAS dot: on a loaded machine each threaded BLAS call can
            # wait milliseconds for its threads (measured 380 ms for 100 calls).
            dots[row] = float(np.einsum("i,i->", sketches[row], remembered))
            norms[row] = float(np.sqrt(np.einsum("i,i->", remembered, remembered)))
            known[row] = True
        return dots, norms, known

    def remember(
        self,
        identities: Sequence[str],
        sketches: np.ndarray,
        width: int,
        server_round: int,
        max_age: int = 10,
    ) -> UpdateHistory:
        """History after ``server_round``: these rows replace older ones.

        Parameters
        ----------
        identities : Sequence[str]
            Whose rows.
        sketches : np.ndarray
            ``(len(identities), m)`` rows from :meth:`sketch` (or
            :attr:`DetectionContext.sketches`), so no pass over the full deltas.
        width : int
            Length ``d`` of the deltas they came from.
        server_round : int
            The round they belong to.
        max_age : int
            Entries not refreshed for more than this many rounds are forgotten, so a
            departed identity does not cost memory forever.
        """
        expected = (len(identities), self.coordinates(width).shape[0])
        if sketches.shape != expected:
            raise ValueError(f"sketches have shape {sketches.shape}, need {expected}")
        if sketches.flags.writeable:
            sketches = np.array(sketches)  # one copy, then no caller can change it
            sketches.setflags(write=False)
        same_model = width == self.width
        previous = dict(self.previous) if same_model else {}
        last_seen = dict(self.last_seen) if same_model else {}
        for row, identity in enumerate(identities):
            # A view: the round's sketch matrix stays alive while a row of it is
            # remembered, at most max_age rounds.
            previous[identity] = sketches[row]
            last_seen[identity] = server_round
        for identity in [
            key for key, seen in last_seen.items() if server_round - seen > max_age
        ]:
            del previous[identity], last_seen[identity]
        return UpdateHistory(
            width, previous, last_seen, self.max_coordinates, self.seed
        )


@dataclass(frozen=True)
class DetectionContext:
    """What a detector may know besides the deltas.

    Attributes
    ----------
    identities : tuple[str, ...]
        Persistent identity of each row.
    geometry : RoundGeometry
        Gram matrix, norms and geometric median of the deltas.
    sketches : np.ndarray
        ``(n, m)`` the deltas on the sampled coordinates.
    sketch_norms : np.ndarray
        ``(n,)`` ``‖s_i‖``, norms of the sketches.
    previous_dots : np.ndarray
        ``(n,)`` ``s_i · p_i`` with the identity's previous sketch (0 if none).
    previous_norms : np.ndarray
        ``(n,)`` ``‖p_i‖`` (0 if none).
    has_history : np.ndarray
        ``(n,)`` bool, whether the row's identity has a previous sketch.
    """

    identities: tuple[str, ...]
    geometry: RoundGeometry
    sketches: np.ndarray
    sketch_norms: np.ndarray
    previous_dots: np.ndarray
    previous_norms: np.ndarray
    has_history: np.ndarray

    @classmethod
    def build(
        cls,
        deltas: np.ndarray,
        identities: Sequence[str],
        history: UpdateHistory | None = None,
        exact_geometry: bool = False,
    ) -> DetectionContext:
        """Context of one round.

        Parameters
        ----------
        deltas : np.ndarray
            ``(n, d)`` rows.
        identities : Sequence[str]
            Identity of each row.
        history : UpdateHistory | None
            Previous deltas and the sampled coordinates (``None``: no past, default
            sampling).
        exact_geometry : bool
            Compute the Gram matrix over every coordinate (``O(n² d)``) instead of
            the sampled ones.
        """
        matrix = _as_deltas(deltas)
        if len(identities) != matrix.shape[0]:
            raise ValueError(
                f"{len(identities)} identities for {matrix.shape[0]} rows of deltas"
            )
        history = history if history is not None else UpdateHistory()
        sketches = history.sketch(matrix)
        sketches.setflags(write=False)  # UpdateHistory.remember may keep views of it
        sampled = sketches.shape[1] < matrix.shape[1] and not exact_geometry
        geometry = RoundGeometry.from_deltas(matrix, sketches if sampled else None)
        dots, previous_norms, known = history.compare(
            identities, sketches, matrix.shape[1]
        )
        sketch_norms = (
            geometry.gram_norms
            if sampled or sketches.shape[1] == matrix.shape[1]
            else np.sqrt(np.einsum("ij,ij->i", sketches, sketches))
        )
        return cls(
            tuple(identities),
            geometry,
            sketches,
            sketch_norms,
            dots,
            previous_norms,
            known,
        )

    def check(self, deltas: np.ndarray) -> None:
        """Raise if this context was not built for ``deltas``."""
        if deltas.ndim != 2 or deltas.shape[0] != self.geometry.size:
            raise ValueError(
                f"context describes {self.geometry.size} rows, deltas have shape "
                f"{deltas.shape}"
            )


# --------------------------------------------------------------------------------------
# Detectors
# --------------------------------------------------------------------------------------


@runtime_checkable
class Detector(Protocol):
    """A suspicion score per row and the thresholds that turn it into a verdict."""

    name: ClassVar[str]

    @property
    def downweight_at(self) -> float:
        """Scores at or above this down-weight the reply."""
        ...

    @property
    def reject_at(self) -> float:
        """Scores at or above this reject the reply."""
        ...

    def score(self, deltas: np.ndarray, context: DetectionContext) -> np.ndarray:
        """``(n,)`` float64 scores, larger is more suspicious."""
        ...


@dataclass(frozen=True)
class NormOutlier:
    """Updates much longer than the others (scaling / model replacement).

    Robust z-score of the norms, upper side only (Iglewicz & Hoaglin 1993):

    .. math:: s_i = \\max\\Big(0, \\frac{\\|x_i\\| - \\mathrm{med}_j \\|x_j\\|}
              {\\max(1.4826\\, \\mathrm{MAD}, \\rho\\, \\mathrm{med}_j \\|x_j\\|)}\\Big)

    Short updates are left to :class:`FreeRider`: an honest client with few examples
    takes few steps, and a short update can do little harm. ``ρ`` (``min_relative_
    scale``) keeps the scale meaningful when honest norms are nearly equal, and when
    colluders send one update under several identities: identical norms collapse the
    MAD (on digits, 20 clients, six ALIE copies pushed honest scores to 8.7 with
    ``ρ = 0.1``). With ``ρ = 0.25`` a row is rejected only when longer than
    ``1 + 6ρ = 2.5`` times the median norm; honest non-IID rows measured on real
    rounds stay under 1.7 times (``benchmarks/calibrate_trusted.py``).
    """

    name: ClassVar[str] = "norm"
    downweight_at: float = 3.5
    reject_at: float = 6.0
    min_relative_scale: float = 0.25

    def score(self, deltas: np.ndarray, context: DetectionContext) -> np.ndarray:
        context.check(deltas)
        norms = context.geometry.norms
        floor = self.min_relative_scale * float(np.median(norms))
        return one_sided_z(norms, floor, "upper")


@dataclass(frozen=True)
class CosineToCentre:
    """Updates pointing away from the geometric median (sign flip, IPM, noise).

    Cosine similarity to a robust centre is the signal of FLTrust (Cao, Fang, Liu &
    Gong, NDSS 2021), which compares with a server update; with no trusted data here
    the centre is the geometric median of the round (RFA; Pillutla et al. 2022),
    robust to any minority. The score is the robust z-score of the cosine, lower side
    only, with a floor ``κ`` on the scale (cosine units):

    .. math:: s_i = \\max\\Big(0, \\frac{\\mathrm{med}_j c_j - c_i}
              {\\max(1.4826\\, \\mathrm{MAD}(c), \\kappa)}\\Big),\\quad
              c_i = \\cos(x_i, \\mathrm{GM}(x))

    The floor ``κ = 0.02`` means a client needs a cosine at least 0.12 below the
    typical one to be rejected (reject at 6) even when honest cosines are nearly
    equal; heterogeneous (non-IID) honest clients widen the MAD and with it the
    margin. The centre leaves the scored row out
    (:meth:`RoundGeometry.cosines_to_centre`).
    """

    name: ClassVar[str] = "cosine"
    downweight_at: float = 3.5
    reject_at: float = 6.0
    min_scale: float = 0.02

    def score(self, deltas: np.ndarray, context: DetectionContext) -> np.ndarray:
        context.check(deltas)
        cosines = context.geometry.cosines_to_centre()
        return one_sided_z(cosines, self.min_scale, "lower")


@dataclass(frozen=True)
class Opposition:
    """Updates whose direction works against the consensus of the round.

    With non-IID clients honest cosines to any centre spread over a wide band (on
    digits, Dirichlet α = 0.5, 20 clients: from about −0.4 to 0.9), and a sign-
    flipped update is the mirror image of an honest one, so a robust z-score
    relative to that spread cannot separate them (:class:`CosineToCentre` keeps
    that role for near-IID rounds). What harms the model is the sign: to first
    order an update with a negative inner product with the consensus step raises
    the loss that the consensus lowers (the argument of inner-product manipulation,
    Xie, Koyejo & Gupta, UAI 2019). FLTrust (Cao et al., NDSS 2021) therefore gives
    trust ``ReLU(cos)``; without trusted data the consensus here is estimated in two
    passes from the round itself:

    1. ``c¹`` = mean of the rows each clipped to the median norm
       (:func:`clipped_mean_coefficients`), leave-one-out;
    2. ``c²`` = the same over the rows with ``cos(x_i, c¹_{−i}) > −refine_at``, so
       that strongly opposed rows no longer pull the centre towards themselves;

    and the score is ``s_i = −cos(x_i, c²_{−i})`` (larger is more opposed). The
    default thresholds come from replaying real rounds
    (``benchmarks/calibrate_trusted.py``; digits, 20 clients, 30 % sign-flippers):
    honest rows reached ``s = 0.37`` at most and ``0.27`` at the 98th percentile,
    flipped updates of clients that agree with the consensus ``0.6`` to ``0.9``.
    A flipped update of a client that was nearly orthogonal to the consensus stays
    near 0 and is accepted: it does little harm.
    """

    name: ClassVar[str] = "opposition"
    downweight_at: float = 0.3
    reject_at: float = 0.45
    refine_at: float = 0.3

    def score(self, deltas: np.ndarray, context: DetectionContext) -> np.ndarray:
        context.check(deltas)
        geometry = context.geometry
        everyone = np.ones(geometry.size, dtype=bool)
        first = leave_one_out_cosines(
            geometry.gram, clipped_mean_coefficients(geometry.gram_norms, everyone)
        )
        agreeing = first > -self.refine_at
        if not np.any(agreeing):
            return -first
        second = leave_one_out_cosines(
            geometry.gram, clipped_mean_coefficients(geometry.gram_norms, agreeing)
        )
        return -second


@dataclass(frozen=True)
class KrumDistance:
    """Updates far from their nearest neighbours, relative to the typical update.

    Krum's score (Blanchard et al., NeurIPS 2017, Sec. 4) divided by its median, so
    that it is scale-free and an ordinary update scores about 1:

    .. math:: s_i = \\frac{\\sum_{i \\to j} \\|x_i - x_j\\|^2}
              {\\mathrm{med}_k \\sum_{k \\to j} \\|x_k - x_j\\|^2}

    over the ``n − f − 2`` nearest others, ``f = ⌊byzantine_fraction · n⌋``. Catches
    gross outliers (large noise, huge updates). Colluders sending the same update sit
    next to each other and score *low*; :class:`Collusion` covers them.
    """

    name: ClassVar[str] = "krum"
    downweight_at: float = 3.0
    reject_at: float = 10.0
    byzantine_fraction: float = 0.3

    def score(self, deltas: np.ndarray, context: DetectionContext) -> np.ndarray:
        context.check(deltas)
        n = context.geometry.size
        distances = squared_distances_from_gram(context.geometry.gram)
        sums = krum_neighbour_sums(distances, int(self.byzantine_fraction * n))
        return safe_ratio(sums, float(np.median(sums)))


@dataclass(frozen=True)
class Collusion:
    """Near-identical updates from different identities (Sybils, ALIE, IPM).

    FoolsGold (Fung, Yoon & Beschastnikh, "The Limitations of Federated Learning in
    Sybil Settings", RAID 2020) flags clients whose updates are too similar to each
    other's. Honest updates share the training direction, so raw cosines can be high
    in IID rounds; here the similarity is taken between *residuals* from the
    geometric median ``r_i = x_i − v``, where honest noise is nearly independent
    (cosines near 0) while copies of one crafted update stay identical. Unlike
    FoolsGold the cosine is multiplied by the ratio of the residual lengths, so a
    row and a scaled version of it (or a zero update and an update opposite to the
    centre) are not mistaken for copies:

    .. math:: s_i = \\max_{j \\ne i} \\cos(r_i, r_j)
              \\frac{\\min(\\|r_i\\|, \\|r_j\\|)}{\\max(\\|r_i\\|, \\|r_j\\|)}

    Every member of a group of copies is flagged, not all but one: an honest client
    never reproduces another's update.
    """

    name: ClassVar[str] = "collusion"
    downweight_at: float = 0.95
    reject_at: float = 0.99

    def score(self, deltas: np.ndarray, context: DetectionContext) -> np.ndarray:
        context.check(deltas)
        n = context.geometry.size
        if n < 2:
            return np.zeros(n)
        residual_gram = centred_gram(context.geometry.gram, context.geometry.centre)
        residual_norms = np.sqrt(np.maximum(np.diag(residual_gram), 0.0))
        # Residuals shorter than 1e-6 of the typical update are all the same point
        # (the centre) up to rounding: give them a direction of their own (cosine 0)
        # unless they coincide with another row, which distance 0 says below.
        typical = float(np.median(context.geometry.gram_norms))
        short = residual_norms <= 1e-6 * typical
        cosines = cosines_from_dots(
            residual_gram, residual_norms[:, None], residual_norms[None, :]
        )
        lengths = np.minimum.outer(residual_norms, residual_norms)
        cosines *= safe_ratio(lengths, np.maximum.outer(residual_norms, residual_norms))
        cosines[short, :] = 0.0
        cosines[:, short] = 0.0
        # Two non-zero rows within 1e-6 of the typical norm of each other are copies
        # (the Gram identity resolves distances only to ~1e-8 of the norms).
        distances = squared_distances_from_gram(context.geometry.gram)
        nonzero = context.geometry.gram_norms > 0.0
        copies = (distances <= 1e-12 * typical**2) & np.outer(nonzero, nonzero)
        cosines[copies] = 1.0
        np.fill_diagonal(cosines, -1.0)
        return np.maximum(cosines.max(axis=1), 0.0)


@dataclass(frozen=True)
class FreeRider:
    """Updates that carry no work: about zero, or a replay of one's own last update.

    Free-riders (Lin, Du & Liu, "Free-riders in Federated Learning: Attacks and
    Defenses", 2019) send the global model back (``Δ ≈ 0``, maybe plus tiny noise)
    or replay a stale update. Two scores in ``[0, 1]``, the larger one counts:

    .. math:: s_i = \\max\\Big(1 - \\frac{\\|x_i\\|}{\\mathrm{med}_j \\|x_j\\|},\\;
              1 - \\frac{\\|x_i - p_i\\|}{\\|p_i\\|}\\Big)^+

    with ``p_i`` the identity's previous delta (history coordinates; the second term
    is 0 without history). An honest update changes by about its own length between
    rounds; a replay by nothing. On real non-IID rounds honest staleness reached
    0.82 (a client's data, hence its direction, persists between rounds), so only
    scores from 0.9 on count (``benchmarks/calibrate_trusted.py``).
    """

    name: ClassVar[str] = "free_rider"
    downweight_at: float = 0.9
    reject_at: float = 0.95

    def score(self, deltas: np.ndarray, context: DetectionContext) -> np.ndarray:
        context.check(deltas)
        norms = context.geometry.norms
        emptiness = 1.0 - safe_ratio(norms, float(np.median(norms)))
        # ‖s − p‖² = ‖s‖² − 2 s·p + ‖p‖²: an exact replay gives 0 up to ~1e-8 of the
        # norms, far below the 5 % change that still counts as stale.
        squared_change = (
            context.sketch_norms**2
            - 2.0 * context.previous_dots
            + context.previous_norms**2
        )
        change = np.sqrt(np.maximum(squared_change, 0.0))
        staleness = np.where(
            context.has_history & (context.previous_norms > 0.0),
            1.0 - safe_ratio(change, context.previous_norms),
            0.0,
        )
        return np.clip(np.maximum(emptiness, staleness), 0.0, 1.0)


@dataclass(frozen=True)
class HistoryConsistency:
    """A client that turned away from its own past more than others did.

    FoolsGold keeps per-client update history; here the signal is how a client's
    update aligns with its own previous one, ``h_i = cos(x_i, p_i)`` on the history
    coordinates, compared with the population by a lower-side robust z-score:

    .. math:: s_i = \\max\\Big(0, \\frac{\\mathrm{med}_j h_j - h_i}
              {\\max(1.4826\\, \\mathrm{MAD}(h), \\kappa)}\\Big)

    over the rows with history (others score 0; fewer than three with history: all
    0). Honest training directions persist between rounds; a sleeper switching to an
    attack, or noise, does not. Evidence about the past is weak, so by default it
    only down-weights (``reject_at = inf``).
    """

    name: ClassVar[str] = "history"
    downweight_at: float = 4.0
    reject_at: float = float("inf")
    min_scale: float = 0.1
    min_population: int = 3

    def score(self, deltas: np.ndarray, context: DetectionContext) -> np.ndarray:
        context.check(deltas)
        scores = np.zeros(context.geometry.size)
        known = context.has_history
        if int(known.sum()) < self.min_population:
            return scores
        alignment = cosines_from_dots(
            context.previous_dots[known],
            context.sketch_norms[known],
            context.previous_norms[known],
        )
        scores[known] = one_sided_z(alignment, self.min_scale, "lower")
        return scores


def default_detectors() -> tuple[Detector, ...]:
    """The panel :class:`DetectorPanel` uses when given none."""
    return (
        NormOutlier(),
        CosineToCentre(),
        Opposition(),
        KrumDistance(),
        Collusion(),
        FreeRider(),
        HistoryConsistency(),
    )


# --------------------------------------------------------------------------------------
# Scores → verdicts
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Screening:
    """Per-row result of a :class:`DetectorPanel`.

    Attributes
    ----------
    scores : tuple[Mapping[str, float], ...]
        Detector name → score, per row.
    verdicts : tuple[Verdict, ...]
        Per row.
    reasons : tuple[str, ...]
        Per row; names each detector that fired and its value, empty when accepted.
    factors : np.ndarray
        ``(n,)`` weight multiplier: 1 accepted, ``downweight_factor`` down-weighted,
        0 rejected.
    """

    scores: tuple[Mapping[str, float], ...]
    verdicts: tuple[Verdict, ...]
    reasons: tuple[str, ...]
    factors: np.ndarray


@dataclass(frozen=True)
class DetectorPanel:
    """Run detectors and map scores to verdicts.

    A row is rejected when any detector's score reaches its ``reject_at``, else
    down-weighted (weight × ``downweight_factor``) when any reaches its
    ``downweight_at``, else accepted.

    Parameters
    ----------
    detectors : tuple[Detector, ...]
        Detectors to run (default :func:`default_detectors`); names must be unique.
    downweight_factor : float
        Weight multiplier of a down-weighted row, in ``(0, 1)``.
    """

    detectors: tuple[Detector, ...] = field(default_factory=default_detectors)
    downweight_factor: float = 0.25

    def __post_init__(self) -> None:
        names = [detector.name for detector in self.detectors]
        if len(set(names)) != len(names):
            raise ValueError(f"detector names must be unique, got {names}")
        if not 0.0 < self.downweight_factor < 1.0:
            raise ValueError(
                f"downweight_factor must lie in (0, 1), got {self.downweight_factor}"
            )
        for detector in self.detectors:
            if not detector.downweight_at <= detector.reject_at:
                raise ValueError(
                    f"{detector.name}: downweight_at {detector.downweight_at} exceeds "
                    f"reject_at {detector.reject_at}"
                )

    def screen(self, deltas: np.ndarray, context: DetectionContext) -> Screening:
        """Score every row with every detector and decide."""
        matrix = _as_deltas(deltas)
        context.check(matrix)
        n = matrix.shape[0]
        table = {
            detector.name: _checked_scores(detector, matrix, context, n)
            for detector in self.detectors
        }
        scores = tuple(
            {name: float(values[row]) for name, values in table.items()}
            for row in range(n)
        )
        verdicts: list[Verdict] = []
        reasons: list[str] = []
        factors = np.ones(n)
        for row, row_scores in enumerate(scores):
            rejecting = _fired(self.detectors, row_scores, _reject_at)
            lowering = _fired(self.detectors, row_scores, _downweight_at)
            if rejecting:
                verdicts.append(Verdict.REJECTED)
                reasons.append("rejected by " + "; ".join(rejecting))
                factors[row] = 0.0
            elif lowering:
                verdicts.append(Verdict.DOWNWEIGHTED)
                reasons.append(
                    f"weight × {self.downweight_factor:g} by " + "; ".join(lowering)
                )
                factors[row] = self.downweight_factor
            else:
                verdicts.append(Verdict.ACCEPTED)
                reasons.append("")
        return Screening(scores, tuple(verdicts), tuple(reasons), factors)


def _reject_at(detector: Detector) -> float:
    return detector.reject_at


def _downweight_at(detector: Detector) -> float:
    return detector.downweight_at


def _fired(
    detectors: Sequence[Detector],
    scores: Mapping[str, float],
    threshold: Callable[[Detector], float],
) -> list[str]:
    """``"name score ≥ threshold"`` for each detector whose score reaches it."""
    return [
        f"{detector.name} {scores[detector.name]:.4g} ≥ {threshold(detector):g}"
        for detector in detectors
        if scores[detector.name] >= threshold(detector)
    ]


def _checked_scores(
    detector: Detector, deltas: np.ndarray, context: DetectionContext, n: int
) -> np.ndarray:
    scores = np.asarray(detector.score(deltas, context), dtype=np.float64)
    if scores.shape != (n,) or np.isnan(scores).any():
        raise ValueError(
            f"detector {detector.name} returned scores of shape {scores.shape} "
            "(or NaN); expected finite scores of shape ({n},)"
        )
    return scores


def _as_deltas(deltas: np.ndarray) -> np.ndarray:
    matrix = np.asarray(deltas, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise ValueError(
            f"deltas must have shape (n, d) with n ≥ 1, got {matrix.shape}"
        )
    # Finiteness is checked on the Gram matrix and norms (RoundGeometry.from_deltas):
    # a NaN or inf anywhere shows there, without another pass over the deltas.
    return matrix
