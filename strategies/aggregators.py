"""Exact robust aggregation rules: a batch of client updates in, one vector out.

Every rule is a small callable class in the style of ByzFL (Allouah et al., "ByzFL:
Research Framework for Robust Federated Learning", 2024): configure it once, call it
on a batch.

* Input ``updates``: an ``(n, d)`` :class:`numpy.ndarray`, an ``(n, d)`` torch tensor,
  a sequence of ``n`` one-dimensional vectors (numpy arrays, tensors or lists), or a
  :class:`~strategies.delta_matrix.DeltaMatrix` (a strategy's deltas, read from the
  replies block by block). It is never modified. All arithmetic is float64, done over
  column blocks of at most :data:`BLOCK_ELEMENTS` values (a DeltaMatrix: its own
  blocks) converted on the fly, so a float32 batch is never copied whole into float64
  and scratch memory stays bounded whatever ``d`` is.
* Optional ``weights``: ``(n,)`` non-negative, not all zero, normalised internally.
  Rules whose definition has no weights raise :class:`ValueError` when given some,
  rather than silently ignoring a caller's reputation or example counts.
* Output: a fresh 1-D float64 :class:`numpy.ndarray` of length ``d``.

Selection rules (:class:`Krum`, :class:`MultiKrum`, :class:`Bulyan`) also expose
``select(updates)``, the indices they keep, so a strategy can say who was chosen.

Pairwise distances are float64-accurate (see :func:`squared_norms_and_distances`):
the Gram identity ``‖a‖² + ‖b‖² − 2a·b`` is used only on rows centred on a row of
the bulk, and every pair where it could still cancel is recomputed from explicit
differences. Uncentred, for the close, large-norm updates of late training rounds
that identity cancels catastrophically, most of all in float32 (Flower 1.41's
``compute_distances`` in ``flwr/serverapp/strategy/multikrum.py`` does exactly that).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from strategies.delta_matrix import (
    DeltaMatrix,
    Deltas,
    accumulate_rows,
    one_blas_thread,
)

UpdatesLike = npt.ArrayLike | Sequence[Any] | Any
"""An ``(n, d)`` array, an ``(n, d)`` torch tensor, or ``n`` one-dimensional vectors."""

WeightsLike = npt.ArrayLike | Any
"""``(n,)`` non-negative weights as an array, a sequence or a torch tensor."""

BLOCK_ELEMENTS = 1 << 16
"""Values per float64 column block (512 KiB): bounds every rule's scratch memory.

Cache-sized on purpose: at 50 × 1M float32 on the 2-core dev machine the weighted
mean took ~0.09 s with 2^16-value blocks against ~0.5 s with 2^22 (noisy, shared CPU).
"""


# --------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------


def _to_array(value: Any) -> np.ndarray:
    """Read ``value`` (numpy, torch tensor, nested sequence) as a numpy array.

    Torch is detected by duck typing so that importing this module never imports
    torch. The result may share memory with ``value``; nothing in this module writes
    into it, so the caller's data are never modified.
    """
    if hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "numpy"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _to_numpy(value: Any) -> np.ndarray:
    """Read ``value`` as a float64 array (weights, centres)."""
    return np.asarray(_to_array(value), dtype=np.float64)


def as_update_matrix(updates: UpdatesLike) -> Deltas:
    """Read a batch of updates as a finite ``(n, d)`` floating-point matrix.

    float32 and float64 data are kept as they are (a view where possible: the
    arithmetic converts column blocks to float64 later); any other dtype is read as
    float64. A :class:`~strategies.delta_matrix.DeltaMatrix` stays lazy.

    Parameters
    ----------
    updates : UpdatesLike
        ``(n, d)`` array or tensor, or a sequence of ``n`` 1-D vectors of equal length.

    Returns
    -------
    Deltas
        ``(n, d)`` float32 or float64 view or copy (or the DeltaMatrix); treat it
        as read-only.

    Raises
    ------
    ValueError
        If the batch is empty, not two-dimensional, ragged or not finite.
    """
    if isinstance(updates, DeltaMatrix):
        if updates.shape[1] == 0:
            raise ValueError(f"updates must be non-empty, got shape {updates.shape}")
        if not updates.all_finite():
            raise ValueError("updates contain NaN or infinite values")
        return updates
    if isinstance(updates, Sequence) and not isinstance(updates, str | bytes):
        if len(updates) == 0:
            raise ValueError("updates is empty: need at least one update")
        rows = [_to_array(row) for row in updates]
        if any(row.ndim != 1 for row in rows):
            shapes = sorted({row.shape for row in rows})
            raise ValueError(
                f"a sequence of updates must hold 1-D vectors, got shapes {shapes}"
            )
        lengths = {row.shape[0] for row in rows}
        if len(lengths) != 1:
            raise ValueError(f"updates have different lengths: {sorted(lengths)}")
        matrix = np.stack(rows)
    else:
        matrix = _to_array(updates)
    if matrix.dtype not in (np.float32, np.float64):
        matrix = matrix.astype(np.float64)
    if matrix.ndim != 2:
        raise ValueError(
            f"updates must be two-dimensional (n, d), got shape {matrix.shape}"
        )
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"updates must be non-empty, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError("updates contain NaN or infinite values")
    return matrix


def normalised_weights(weights: WeightsLike | None, n: int) -> np.ndarray:
    """Validate ``weights`` for ``n`` updates and scale them to sum to one.

    ``None`` means uniform weights ``1/n``.

    Raises
    ------
    ValueError
        If the weights are not ``(n,)``, not finite, negative or all zero.
    """
    if weights is None:
        return np.full(n, 1.0 / n)
    values = _to_numpy(weights)
    if values.shape != (n,):
        raise ValueError(
            f"weights must have shape ({n},) to match the updates, got {values.shape}"
        )
    if not np.isfinite(values).all():
        raise ValueError("weights contain NaN or infinite values")
    if (values < 0).any():
        raise ValueError(f"weights must be non-negative, got minimum {values.min()}")
    total = values.sum()
    if total <= 0:
        raise ValueError("weights are all zero: nothing to aggregate")
    return values / total


def _require_no_weights(rule: str, weights: WeightsLike | None) -> None:
    if weights is not None:
        raise ValueError(
            f"{rule} has no weighted form; aggregate without weights or use a rule "
            "that supports them (Mean, MultiKrum, GeometricMedian, CenteredClipping)"
        )


def _require_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


# --------------------------------------------------------------------------------------
# Pure mathematical helpers
# --------------------------------------------------------------------------------------


def column_blocks(n: int, d: int) -> Iterator[slice]:
    """Slices cutting ``d`` columns into blocks of at most ``BLOCK_ELEMENTS / n``."""
    width = max(1, BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, d, width):
        yield slice(start, min(start + width, d))


def matrix_blocks(matrix: Deltas) -> Iterator[slice]:
    """The column blocks to read ``matrix`` in: :func:`column_blocks`, or a
    DeltaMatrix's own (larger: each of its blocks gathers ``n`` row pieces)."""
    if isinstance(matrix, DeltaMatrix):
        return matrix.column_blocks()
    return column_blocks(*matrix.shape)


def _float64(block: np.ndarray) -> np.ndarray:
    return np.asarray(block, dtype=np.float64)


def weighted_sum(matrix: Deltas, coefficients: np.ndarray) -> np.ndarray:
    """``Σ_i c_i x_i`` in float64, rows added in index order (fixed reduction order).

    Each coordinate is ``((c_0 x_0 + c_1 x_1) + c_2 x_2) + …``, every product and
    sum rounded once (IEEE-754 float64, no fused multiply-add), so the result is the
    same bits on any machine and thread count: an auditor re-running a round gets
    the aggregator's model. A BLAS product is not (its kernel, blocking and use of
    FMA depend on the CPU and the library build) and at 20 × 1M float64 saves only
    ~40 % of the time. Rows with coefficient 0 are skipped (their rows are finite,
    adding ``0 · x`` changes nothing). One kernel for arrays and
    :class:`DeltaMatrix` alike (:func:`strategies.delta_matrix.accumulate_rows`).
    No float64 copy of the batch is made.
    """
    if isinstance(matrix, DeltaMatrix):
        return matrix.weighted_sum(coefficients)
    d = matrix.shape[1]
    total = np.zeros(d)
    scratch = np.empty(min(d, BLOCK_ELEMENTS))
    for start in range(0, d, BLOCK_ELEMENTS):
        stop = min(start + BLOCK_ELEMENTS, d)
        accumulate_rows(
            total[start:stop],
            coefficients,
            matrix[:, start:stop],
            scratch[: stop - start],
        )
    return total


def columnwise(
    matrix: Deltas, reduce: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Apply a per-coordinate reduction ``(n, c) → (c,)`` to float64 column blocks."""
    result = np.empty(matrix.shape[1])
    for columns in matrix_blocks(matrix):
        result[columns] = reduce(_float64(matrix[:, columns]))
    return result


def coordinate_median(block: np.ndarray) -> np.ndarray:
    """Median of every column (mean of the two middle values when ``n`` is even)."""
    return np.median(block, axis=0)


def trimmed_column_mean(block: np.ndarray, trim: int) -> np.ndarray:
    """Mean of every column without its ``trim`` smallest and largest values."""
    n = block.shape[0]
    if trim == 0:
        return block.mean(axis=0)
    # Partition puts the two cut points in place in O(n) per column; everything
    # strictly between them is the kept middle (order inside it is irrelevant).
    partitioned = np.partition(block, (trim, n - trim - 1), axis=0)
    return partitioned[trim : n - trim].mean(axis=0)


CANCELLATION_RATIO = 16.0
"""Pairs whose centred norms ``‖y_i‖² + ‖y_j‖²`` exceed this many times their squared
distance are recomputed from explicit differences (the Gram identity would lose
more than ~4 of its ~15 significant digits there)."""

MEDOID_SKETCH_COLUMNS = 2048
"""Evenly spaced columns on which the centring row is chosen."""


def pairwise_squared_distances(updates: UpdatesLike) -> np.ndarray:
    """Squared Euclidean distances between all pairs of updates, to float64 accuracy.

    .. math:: D_{ij} = \\sum_k (x_{ik} - x_{jk})^2

    See :func:`squared_norms_and_distances` (this is its second half).

    Parameters
    ----------
    updates : UpdatesLike
        ``(n, d)`` batch.

    Returns
    -------
    np.ndarray
        ``(n, n)`` symmetric float64 matrix with an exactly zero diagonal.
    """
    return squared_norms_and_distances(as_update_matrix(updates))[1]


def squared_norms_and_distances(matrix: Deltas) -> tuple[np.ndarray, np.ndarray]:
    """``‖x_i‖²`` and all pairwise ``‖x_i − x_j‖²`` of a finite matrix, in one sweep.

    Distances are translation invariant, so they are read off the Gram matrix of
    the rows minus one row ``x_c`` of the bulk (:meth:`~strategies.delta_matrix.
    DeltaMatrix.norms_and_centred_gram`, a BLAS ``syrk`` per cache-sized block):

    .. math:: y_i = x_i - x_c,\\quad D_{ij} = \\|y_i\\|^2 + \\|y_j\\|^2
              - 2\\,y_i\\cdot y_j

    The rounding error of that identity is about ``u √w (‖y_i‖² + ‖y_j‖²)`` (``u``
    the float64 unit roundoff, ``w`` a block's width), against ``u √w D_ij`` for a
    sum of squared differences. Centring makes the two alike wherever the rows are
    spread about as far from ``x_c`` as from each other, which is what the
    uncentred identity misses (close updates of large norm: Flower's float32
    ``compute_distances`` loses every digit there,
    ``tests/test_aggregators.py``). Where it is not so (two rows close to each
    other and far from ``x_c``, e.g. colluding outliers, or identical rows), i.e.
    ``‖y_i‖² + ‖y_j‖² > CANCELLATION_RATIO · D_ij``, the pair is recomputed from
    its explicit differences, so every distance keeps the precision of a sum of
    non-negative terms. ``x_c`` is the medoid of the rows on
    :data:`MEDOID_SKETCH_COLUMNS` evenly spaced columns (centred by their
    coordinate median), so a far row cannot pull the centre out of the bulk.

    Deterministic: BLAS runs on one thread and partial sums are added in a fixed
    order (the same bits whatever the thread count).

    Parameters
    ----------
    matrix : Deltas
        ``(n, d)`` finite rows (:func:`as_update_matrix`).

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        ``(n,)`` squared norms (to the precision of a sum of squares, see
        :meth:`~strategies.delta_matrix.DeltaMatrix.norms_and_centred_gram`) and
        the ``(n, n)`` symmetric distance matrix with an exactly zero diagonal.
    """
    lazy = matrix if isinstance(matrix, DeltaMatrix) else DeltaMatrix.of(matrix)
    n = lazy.shape[0]
    centre = _sketch_medoid(lazy)
    squared_norms, gram = lazy.norms_and_centred_gram(centre)
    diagonal = np.diag(gram).copy()
    spread = diagonal[:, None] + diagonal[None, :]
    with np.errstate(over="ignore", invalid="ignore"):  # overflow: recomputed below
        distances = np.maximum(spread - 2.0 * gram, 0.0)
        doubtful = ~(spread <= CANCELLATION_RATIO * distances)
    np.fill_diagonal(distances, 0.0)
    doubtful[np.tril_indices(n)] = False
    pairs = np.argwhere(doubtful)
    if pairs.size:
        exact = exact_pair_distances(lazy, pairs)
        distances[pairs[:, 0], pairs[:, 1]] = exact
        distances[pairs[:, 1], pairs[:, 0]] = exact
    return squared_norms, distances


def _sketch_medoid(matrix: DeltaMatrix) -> int:
    """Row with the smallest median distance to the others on a few columns."""
    n, d = matrix.shape
    if n <= 2:
        return 0
    columns = np.unique(
        np.linspace(0, d - 1, min(d, MEDOID_SKETCH_COLUMNS)).astype(np.intp)
    )
    sketch = matrix.take_columns(columns)
    sketch -= np.median(sketch, axis=0)
    with one_blas_thread():
        gram = sketch @ sketch.T
    diagonal = np.diag(gram)
    distances = diagonal[:, None] + diagonal[None, :] - 2.0 * gram
    return int(np.argmin(np.median(distances, axis=1)))


def exact_pair_distances(matrix: DeltaMatrix, pairs: np.ndarray) -> np.ndarray:
    """``‖x_i − x_j‖²`` of the ``(p, 2)`` index ``pairs``, from explicit differences.

    Every term is non-negative, so the only error is the benign relative rounding
    of a sum of positive numbers. Rows are read once per column block, only those
    in some pair.
    """
    involved, positions = np.unique(pairs, return_inverse=True)
    positions = positions.reshape(pairs.shape)
    rows = matrix.rows(involved)
    partners = [
        (first, np.flatnonzero(positions[:, 0] == first))
        for first in np.unique(positions[:, 0])
    ]
    totals = np.zeros(pairs.shape[0])
    with one_blas_thread():  # a mixed DeltaMatrix's blocks are BLAS products
        for columns in rows.column_blocks():
            block = rows.column_block(columns)
            for first, slots in partners:
                differences = block[positions[slots, 1]] - block[first]
                totals[slots] += np.einsum("ij,ij->i", differences, differences)
    return totals


def distances_to_point(updates: Deltas, point: np.ndarray) -> np.ndarray:
    """Euclidean distances ``‖x_i − point‖`` from explicit differences.

    Parameters
    ----------
    updates : Deltas
        ``(n, d)`` matrix from :func:`as_update_matrix`.
    point : np.ndarray
        ``(d,)`` float64 vector.

    Returns
    -------
    np.ndarray
        ``(n,)`` float64 distances.
    """
    squared = np.zeros(updates.shape[0])
    for columns in matrix_blocks(updates):
        differences = _float64(updates[:, columns]) - point[columns]
        squared += np.einsum("ij,ij->i", differences, differences)
    return np.sqrt(squared)


def krum_scores(squared_distances: np.ndarray, f: int) -> np.ndarray:
    """Krum score of every update (Blanchard et al., 2017, Sec. 4).

    .. math:: s(i) = \\sum_{i \\to j} \\|x_i - x_j\\|^2

    where ``i → j`` ranges over the ``n − f − 2`` updates closest to ``x_i`` other than
    ``x_i`` itself. Krum proper needs ``n ≥ 2f + 3``, so that count is at least one;
    Bulyan's iterative selection runs Krum on shrinking sets down to ``2f + 1``
    members, where the count is clamped to ``[1, n − 1]`` (as Flower 1.41 does) so the
    last picks still prefer the update with the nearest neighbour instead of
    degenerating to an all-zero tie.

    Parameters
    ----------
    squared_distances : np.ndarray
        ``(n, n)`` matrix from :func:`pairwise_squared_distances`.
    f : int
        Number of Byzantine updates tolerated.

    Returns
    -------
    np.ndarray
        ``(n,)`` float64 scores; lower is more central.
    """
    n = squared_distances.shape[0]
    neighbours = min(n - 1, max(1, n - f - 2))
    # Drop the diagonal by position, not by sorting: a duplicate of x_i is a genuine
    # neighbour at distance 0 and must not be confused with x_i itself.
    off_diagonal = squared_distances[~np.eye(n, dtype=bool)].reshape(n, n - 1)
    closest = np.sort(off_diagonal, axis=1)[:, :neighbours]
    return closest.sum(axis=1)


def krum_ranking(squared_distances: np.ndarray, f: int) -> np.ndarray:
    """All indices ordered from most to least central by Krum's criterion.

    Sorted by :func:`krum_scores`, ties broken by the total squared distance to every
    other update, then by index. The second key matters: with one neighbour (Bulyan's
    last picks) the two members of a mutually-nearest pair always tie, and breaking
    that tie by position alone would make the result depend on the order of replies.

    Parameters
    ----------
    squared_distances : np.ndarray
        ``(n, n)`` matrix from :func:`pairwise_squared_distances`.
    f : int
        Number of Byzantine updates tolerated.

    Returns
    -------
    np.ndarray
        ``(n,)`` permutation of ``range(n)``.
    """
    scores = krum_scores(squared_distances, f)
    totals = squared_distances.sum(axis=1)
    # lexsort sorts by the last key first.
    return np.lexsort((np.arange(len(scores)), totals, scores))


def closest_to_median_mean(selected: np.ndarray, keep: int) -> np.ndarray:
    """Coordinate-wise mean of the ``keep`` values closest to the coordinate median.

    Bulyan's second stage (El Mhamdi et al., 2018, Sec. 3):

    .. math:: y_k = \\frac{1}{\\beta} \\sum_{j \\in M_k} x_{jk},\\quad
              M_k = \\arg\\min_{|M| = \\beta}
              \\sum_{j \\in M} |x_{jk} - \\mathrm{med}_k|

    Ties in ``|x_{jk} − med_k|`` are broken by row order (stable sort); all tied values
    are equally close, so the choice only matters when they differ in sign.

    Parameters
    ----------
    selected : np.ndarray
        ``(θ, d)`` float64 matrix.
    keep : int
        ``β``, with ``1 ≤ β ≤ θ``.

    Returns
    -------
    np.ndarray
        ``(d,)`` float64 vector.
    """
    median = coordinate_median(selected)
    order = np.argsort(np.abs(selected - median), axis=0, kind="stable")[:keep]
    return np.take_along_axis(selected, order, axis=0).mean(axis=0)


def trimmed_count(beta: float, n: int) -> int:
    """``⌊β n⌋``, immune to the binary representation of ``β``.

    ``0.29 * 100`` is ``28.999999999999996`` in floating point; rounding the product
    to nine decimals first makes it trim 29 as the formula says.
    """
    return math.floor(round(beta * n, 9))


def weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Lower weighted median along axis 0: the smallest value whose cumulative
    weight (values in increasing order) reaches half of the total.

    Parameters
    ----------
    values : np.ndarray
        ``(n,)`` or ``(n, c)`` float64.
    weights : np.ndarray
        ``(n,)`` non-negative, not all zero.

    Returns
    -------
    np.ndarray
        ``()`` or ``(c,)`` float64.
    """
    # Sorting contiguous rows of n values is twice as fast as sorting along axis 0.
    rows = np.ascontiguousarray(np.asarray(values).T)
    order = np.argsort(rows, axis=-1)
    cumulative = np.cumsum(weights[order], axis=-1)
    total = cumulative[..., -1:]
    # Rounding may leave a cumulative sum a hair under the half it reaches exactly.
    position = np.argmax(cumulative >= 0.5 * total - 1e-12 * total, axis=-1)
    chosen = np.take_along_axis(order, position[..., None], axis=-1)
    return np.take_along_axis(rows, chosen, axis=-1)[..., 0]


def weighted_coordinate_median(matrix: Deltas, weights: np.ndarray) -> np.ndarray:
    """:func:`weighted_median` of every column, in column blocks.

    Equal weights take a partial sort (``np.partition``, ``O(n)`` per column), about
    five times faster than the full sort unequal weights need.
    """
    n = matrix.shape[0]
    if np.all(weights == weights[0]):
        middle = (n - 1) // 2  # the lower median, as weighted_median gives
        return columnwise(
            matrix, lambda block: np.partition(block, middle, axis=0)[middle]
        )
    return columnwise(matrix, lambda block: weighted_median(block, weights))


class WeiszfeldSpace(Protocol):
    """Where a Weiszfeld iteration runs: how to combine rows and measure distances.

    The estimate is a numpy array whose meaning the space decides: a point of
    ``R^d`` (:class:`RowSpace`, the rule) or the coefficients ``β`` of ``v = βᵀX``
    (:class:`strategies.detection.geometry.GramSpace`, the detectors, which never
    touch the ``d`` coordinates). :func:`weiszfeld_iterations` is the one solver.
    """

    def distances(self, estimate: np.ndarray) -> np.ndarray:
        """``(n,)`` ``‖v − x_i‖``."""
        ...

    def combine(self, coefficients: np.ndarray) -> np.ndarray:
        """The estimate ``Σ c_i x_i / Σ c_i``."""
        ...

    def gap(self, new: np.ndarray, old: np.ndarray) -> float:
        """``‖new − old‖`` between two estimates."""
        ...


@dataclass(frozen=True)
class RowSpace:
    """:class:`WeiszfeldSpace` of the rows themselves: estimates are points of R^d."""

    updates: Deltas

    def distances(self, estimate: np.ndarray) -> np.ndarray:
        return distances_to_point(self.updates, estimate)

    def combine(self, coefficients: np.ndarray) -> np.ndarray:
        return weighted_sum(self.updates, coefficients) / coefficients.sum()

    def gap(self, new: np.ndarray, old: np.ndarray) -> float:
        step = new - old  # einsum, not a BLAS dot: no thread-count dependence
        return float(np.sqrt(np.einsum("i,i->", step, step)))


def weiszfeld_iterations(
    space: WeiszfeldSpace,
    start: np.ndarray,
    weights: np.ndarray | None,
    nu: float,
    max_iterations: int,
    tolerance: float,
    spread: Callable[[np.ndarray], float],
) -> tuple[np.ndarray, int]:
    """Smoothed Weiszfeld steps from ``start`` until a step moves the estimate by at
    most ``tolerance × max(ν, spread(distances))`` (see :func:`weiszfeld`).

    ``weights`` ``α`` (``None``: all equal) enter each step as ``α_i / max(ν, d_i)``.

    Returns
    -------
    tuple[np.ndarray, int]
        The estimate and the number of iterations run.
    """
    estimate = start
    distances = space.distances(estimate)
    for iteration in range(1, max_iterations + 1):
        bounded = np.maximum(nu, distances)
        coefficients = 1.0 / bounded if weights is None else weights / bounded
        step = space.combine(coefficients)
        moved = space.gap(step, estimate)
        estimate = step
        distances = space.distances(estimate)
        if moved <= tolerance * max(nu, spread(distances)):
            return estimate, iteration
    return estimate, max_iterations


def weiszfeld(
    updates: Deltas,
    weights: np.ndarray,
    nu: float,
    max_iterations: int,
    tolerance: float,
) -> tuple[np.ndarray, int]:
    """Smoothed Weiszfeld iterations for the weighted geometric median.

    Algorithm 2 of Pillutla, Kakade & Harchaoui, "Robust Aggregation for Federated
    Learning", IEEE TSP 2022 (RFA):

    .. math:: \\beta_i = \\frac{\\alpha_i}{\\max(\\nu, \\|v - x_i\\|)},\\qquad
              v \\leftarrow \\frac{\\sum_i \\beta_i x_i}{\\sum_i \\beta_i},

    a majorise-minimise step on ``g(v) = Σ α_i ‖v − x_i‖`` in which ``ν`` keeps the
    step defined when ``v`` lands on an update.

    Two choices differ from RFA, both so that one far update cannot drag the
    *computed* estimate (the geometric median itself moves by at most the honest
    spread): the start is the weighted coordinate-wise median, not the weighted
    mean (from a mean pulled ``10³⁰`` away, each step only halves the distance);
    and the iteration stops when a step moves the estimate by less than
    ``tolerance`` × the weighted median distance of the updates to it (at least
    ``ν``), not when ``g`` improves by less than ``tolerance × g``: a far update
    dominates ``g``, so a relative change of ``g`` stops the iteration while the
    estimate is still off by ``tolerance`` × that update's distance (found by
    ``tests/test_fuzz_replies.py``: two equal updates and one at ``10³⁰`` gave, with
    the default settings, a "median" ``4·10²⁴`` away from them).

    Returns
    -------
    tuple[np.ndarray, int]
        The median estimate and the number of iterations run.
    """
    return weiszfeld_iterations(
        RowSpace(updates),
        weighted_coordinate_median(updates, weights),
        weights,
        nu,
        max_iterations,
        tolerance,
        lambda distances: float(weighted_median(distances, weights)),
    )


def clip_factors(norms: np.ndarray, tau: float) -> np.ndarray:
    """Scale factors ``min(1, τ/‖z‖)`` of the clipping operator ``clip_τ``.

    Written as ``τ / max(‖z‖, τ)`` so a zero vector gets factor one, not ``τ/0``.
    """
    return tau / np.maximum(norms, tau)


# --------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------


@runtime_checkable
class AggregationRule(Protocol):
    """What every rule in this module is: ``rule(updates, weights=None) -> (d,)``."""

    supports_weights: ClassVar[bool]

    def __call__(
        self, updates: UpdatesLike, weights: WeightsLike | None = None
    ) -> np.ndarray:
        """Aggregate an ``(n, d)`` batch into a ``(d,)`` float64 vector."""
        ...


@runtime_checkable
class SelectionRule(AggregationRule, Protocol):
    """A rule whose aggregate is built from a subset of the updates."""

    def select(self, updates: UpdatesLike) -> np.ndarray:
        """Indices of the updates the rule keeps, in the order it chose them."""
        ...


@dataclass(frozen=True)
class Mean:
    """Weighted arithmetic mean (FedAvg; McMahan et al., AISTATS 2017).

    .. math:: \\mathrm{Mean}(x_1, \\dots, x_n) = \\sum_i \\alpha_i x_i,
              \\quad \\alpha_i = w_i / \\sum_j w_j

    Not robust: one update can move it arbitrarily far. The baseline.
    """

    supports_weights: ClassVar[bool] = True

    def __call__(
        self, updates: UpdatesLike, weights: WeightsLike | None = None
    ) -> np.ndarray:
        matrix = as_update_matrix(updates)
        return weighted_sum(matrix, normalised_weights(weights, matrix.shape[0]))


@dataclass(frozen=True)
class CoordinateMedian:
    """Coordinate-wise median (Yin et al., "Byzantine-Robust Distributed Learning:
    Towards Optimal Statistical Rates", ICML 2018).

    .. math:: [\\mathrm{Median}(x_1, \\dots, x_n)]_k = \\mathrm{median}(x_{1k}, \\dots,
              x_{nk})

    With an even ``n`` the median of a coordinate is the mean of its two middle
    values (numpy's convention, as Flower's FedMedian). Unweighted.
    """

    supports_weights: ClassVar[bool] = False

    def __call__(
        self, updates: UpdatesLike, weights: WeightsLike | None = None
    ) -> np.ndarray:
        _require_no_weights(type(self).__name__, weights)
        return columnwise(as_update_matrix(updates), coordinate_median)


@dataclass(frozen=True)
class TrimmedMean:
    """Coordinate-wise β-trimmed mean (Yin et al., ICML 2018).

    .. math:: [\\mathrm{TrMean}_\\beta(x)]_k = \\frac{1}{n - 2b}
              \\sum_{j = b + 1}^{n - b} x_{\\pi_k(j)\\,k},\\qquad b = \\lfloor \\beta n
              \\rfloor

    where ``π_k`` sorts the ``k``-th coordinates in non-decreasing order: the ``b``
    smallest and ``b`` largest values of every coordinate are dropped.

    Parameters
    ----------
    beta : float
        Fraction trimmed from each side, ``0 ≤ β < 0.5``.
    """

    beta: float = 0.1
    supports_weights: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not (isinstance(self.beta, int | float) and 0.0 <= self.beta < 0.5):
            raise ValueError(f"beta must lie in [0, 0.5), got {self.beta!r}")

    def __call__(
        self, updates: UpdatesLike, weights: WeightsLike | None = None
    ) -> np.ndarray:
        _require_no_weights(type(self).__name__, weights)
        matrix = as_update_matrix(updates)
        n = matrix.shape[0]
        trim = trimmed_count(self.beta, n)
        return columnwise(matrix, lambda block: trimmed_column_mean(block, trim))


@dataclass(frozen=True)
class MultiKrum:
    """Multi-Krum (Blanchard, El Mhamdi, Guerraoui & Stainer, "Machine Learning with
    Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017, Sec. 4).

    Scores every update by the sum of squared distances to its ``n − f − 2`` nearest
    other updates (:func:`krum_scores`), keeps the ``m`` lowest-scoring ones and
    averages them:

    .. math:: \\mathrm{MultiKrum}_{f,m}(x) = \\sum_{i \\in S_m} \\alpha_i x_i,
              \\qquad S_m = \\text{the } m \\text{ lowest } s(i)

    with ``α`` the given weights renormalised over ``S_m`` (uniform by default; Flower
    1.41 weights by example count the same way). Ties are broken as in
    :func:`krum_ranking`.

    Parameters
    ----------
    f : int
        Byzantine updates tolerated; requires ``n ≥ 2f + 3``.
    m : int
        Updates kept, ``1 ≤ m ≤ n``; ``m = 1`` is :class:`Krum`.
    """

    f: int = 0
    m: int = 1
    supports_weights: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _require_count("f", self.f, 0)
        _require_count("m", self.m, 1)

    def _check_size(self, n: int) -> None:
        if n < 2 * self.f + 3:
            raise ValueError(
                f"{type(self).__name__} with f={self.f} needs n >= 2f + 3 = "
                f"{2 * self.f + 3} updates, got {n}"
            )
        if self.m > n:
            raise ValueError(f"cannot keep m={self.m} of only {n} updates")

    def scores(self, updates: UpdatesLike) -> np.ndarray:
        """Krum score of every update (lower is more central)."""
        matrix = as_update_matrix(updates)
        self._check_size(matrix.shape[0])
        return krum_scores(pairwise_squared_distances(matrix), self.f)

    def select(self, updates: UpdatesLike) -> np.ndarray:
        """Indices of the ``m`` kept updates, best first (see :func:`krum_ranking`)."""
        return self._select(as_update_matrix(updates))

    def _select(self, matrix: Deltas) -> np.ndarray:
        self._check_size(matrix.shape[0])
        return krum_ranking(pairwise_squared_distances(matrix), self.f)[: self.m]

    def __call__(
        self, updates: UpdatesLike, weights: WeightsLike | None = None
    ) -> np.ndarray:
        matrix = as_update_matrix(updates)
        alphas = normalised_weights(weights, matrix.shape[0])
        chosen = self._select(matrix)
        # Zero the weights of the rows left out instead of copying the kept rows.
        kept = np.zeros_like(alphas)
        kept[chosen] = alphas[chosen]
        if kept.sum() <= 0:
            raise ValueError(
                f"every update {type(self).__name__} selected has weight zero"
            )
        return weighted_sum(matrix, kept / kept.sum())


@dataclass(frozen=True)
class Krum(MultiKrum):
    """Krum (Blanchard et al., NeurIPS 2017, Sec. 4): the single update with the lowest
    score

    .. math:: \\mathrm{Krum}_f(x) = x_{i^*},\\qquad i^* = \\arg\\min_i
              \\sum_{i \\to j} \\|x_i - x_j\\|^2

    where ``i → j`` are the ``n − f − 2`` nearest other updates. Requires
    ``n ≥ 2f + 3``. Weights are accepted for interface symmetry with
    :class:`MultiKrum`; they cannot change the returned update, only refuse it when
    its weight is zero.
    """

    m: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.m != 1:
            raise ValueError(f"Krum keeps exactly one update (m=1), got m={self.m}")


@dataclass(frozen=True)
class Bulyan:
    """Bulyan over Krum (El Mhamdi, Guerraoui & Rouault, "The Hidden Vulnerability of
    Distributed Learning in Byzantium", ICML 2018, Algorithm 1).

    1. Selection, iterative: with ``R`` all updates and ``S`` empty, repeat
       ``θ = n − 2f`` times: ``x = Krum_f(R)`` computed on the *remaining* set,
       move ``x`` from ``R`` to ``S``.
    2. Aggregation, coordinate-wise: with ``β = θ − 2f``,

       .. math:: y_k = \\frac{1}{\\beta} \\sum_{j \\in M_k} x_{jk}

       where ``M_k`` holds the ``β`` members of ``S`` whose ``k``-th coordinate is
       closest to the median of the ``k``-th coordinates of ``S``.

    Requires ``n ≥ 4f + 3``. Krum's neighbour count follows the shrinking ``R``
    (see :func:`krum_scores` for the clamp in the last picks); ties are broken as in
    :func:`krum_ranking`. Flower 1.41's Bulyan instead keeps the ``θ`` best scores
    of one Multi-Krum pass over all ``n`` updates. Unweighted.

    Parameters
    ----------
    f : int
        Byzantine updates tolerated.
    """

    f: int = 0
    supports_weights: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _require_count("f", self.f, 0)

    def select(self, updates: UpdatesLike) -> np.ndarray:
        """Indices of the ``θ = n − 2f`` updates in the order Krum chose them."""
        return self._select(as_update_matrix(updates))

    def _select(self, matrix: Deltas) -> np.ndarray:
        n = matrix.shape[0]
        if n < 4 * self.f + 3:
            raise ValueError(
                f"Bulyan with f={self.f} needs n >= 4f + 3 = {4 * self.f + 3} "
                f"updates, got {n}"
            )
        # Distances between two updates do not depend on who else remains, so one
        # exact matrix serves every Krum round through sub-indexing.
        distances = pairwise_squared_distances(matrix)
        remaining = list(range(n))
        chosen: list[int] = []
        for _ in range(n - 2 * self.f):
            subset = np.asarray(remaining)
            best = krum_ranking(distances[np.ix_(subset, subset)], self.f)[0]
            winner = remaining[int(best)]
            chosen.append(winner)
            remaining.remove(winner)
        return np.asarray(chosen, dtype=np.intp)

    def __call__(
        self, updates: UpdatesLike, weights: WeightsLike | None = None
    ) -> np.ndarray:
        _require_no_weights(type(self).__name__, weights)
        matrix = as_update_matrix(updates)
        chosen = self._select(matrix)
        keep = len(chosen) - 2 * self.f
        return columnwise(
            matrix, lambda block: closest_to_median_mean(block[chosen], keep)
        )


@dataclass(frozen=True)
class GeometricMedian:
    """Weighted geometric median by smoothed Weiszfeld (RFA; Pillutla, Kakade &
    Harchaoui, "Robust Aggregation for Federated Learning", IEEE TSP 2022).

    .. math:: \\mathrm{GM}(x) \\approx \\arg\\min_v \\sum_i \\alpha_i \\|v - x_i\\|_2

    approximated by :func:`weiszfeld`. Breakdown point 1/2 of the total weight.

    Parameters
    ----------
    nu : float
        Smoothing ``ν > 0``: distances below it count as ``ν`` (avoids dividing by
        zero when the estimate lands on an update).
    max_iterations : int
        Upper bound on Weiszfeld steps (``≥ 1``).
    tolerance : float
        Stop when a step moves the estimate by less than this fraction of the
        weighted median distance of the updates to it (see :func:`weiszfeld`).
    """

    nu: float = 1e-6
    max_iterations: int = 100
    tolerance: float = 1e-6
    supports_weights: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not self.nu > 0:
            raise ValueError(f"nu must be positive, got {self.nu!r}")
        _require_count("max_iterations", self.max_iterations, 1)
        if not self.tolerance >= 0:
            raise ValueError(f"tolerance must be non-negative, got {self.tolerance!r}")

    def solve(
        self, updates: UpdatesLike, weights: WeightsLike | None = None
    ) -> tuple[np.ndarray, int]:
        """The median estimate and how many Weiszfeld iterations it took."""
        matrix = as_update_matrix(updates)
        alphas = normalised_weights(weights, matrix.shape[0])
        return weiszfeld(matrix, alphas, self.nu, self.max_iterations, self.tolerance)

    def __call__(
        self, updates: UpdatesLike, weights: WeightsLike | None = None
    ) -> np.ndarray:
        return self.solve(updates, weights)[0]


@dataclass(frozen=True)
class CenteredClipping:
    """Centered clipping (Karimireddy, He & Jaggi, "Learning from History for
    Byzantine Robust Optimization", ICML 2021, Eq. 2).

    .. math:: v_{l+1} = v_l + \\sum_i \\alpha_i\\, \\mathrm{clip}_\\tau(x_i - v_l),
              \\qquad \\mathrm{clip}_\\tau(z) = z \\min(1, \\tau / \\|z\\|)

    run for ``iterations`` steps (uniform ``α`` as in the paper unless weights are
    given).

    The paper starts from the previous round's aggregate (with worker momentum);
    pass it as ``center`` (or via :meth:`with_center`). Without one, the start is the
    coordinate-wise median of the batch: unlike zeros it is robust and meaningful
    whether the rows are models or deltas, so a single step from it cannot be dragged
    far by outliers (at most ``τ`` times their weight share).

    Parameters
    ----------
    tau : float
        Clipping radius ``τ > 0``.
    iterations : int
        Number of clipping steps ``L ≥ 1`` (the paper finds ``L = 1`` suffices).
    center : array-like or None
        Starting point ``v_0`` of length ``d``; ``None`` for the coordinate median.
    """

    tau: float = 10.0
    iterations: int = 1
    center: npt.ArrayLike | None = None
    supports_weights: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not (isinstance(self.tau, int | float) and self.tau > 0):
            raise ValueError(f"tau must be positive, got {self.tau!r}")
        _require_count("iterations", self.iterations, 1)

    def with_center(self, center: npt.ArrayLike | None) -> CenteredClipping:
        """The same rule starting from ``center`` (e.g. last round's aggregate)."""
        return replace(self, center=center)

    def __call__(
        self, updates: UpdatesLike, weights: WeightsLike | None = None
    ) -> np.ndarray:
        matrix = as_update_matrix(updates)
        alphas = normalised_weights(weights, matrix.shape[0])
        if self.center is None:
            estimate = columnwise(matrix, coordinate_median)
        else:
            estimate = _to_numpy(self.center).copy()
            if estimate.shape != (matrix.shape[1],):
                raise ValueError(
                    f"center must have shape ({matrix.shape[1]},), got {estimate.shape}"
                )
            if not np.isfinite(estimate).all():
                raise ValueError("center contains NaN or infinite values")
        for _ in range(self.iterations):
            factors = clip_factors(distances_to_point(matrix, estimate), self.tau)
            # Σ α_i c_i (x_i − v) = (α∘c)·X − (Σ α_i c_i) v: one weighted sum
            # instead of an (n, d) temporary of differences.
            scaled = alphas * factors
            estimate = estimate + (
                weighted_sum(matrix, scaled) - scaled.sum() * estimate
            )
        return estimate
