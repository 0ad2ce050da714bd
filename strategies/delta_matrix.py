"""The update matrix of a round, read in column blocks and never held whole.

A round of ``n`` replies of ``d`` parameters is an ``(n, d)`` matrix of deltas
``x_i − o`` (client model − global model). Held as float64 it is twice the replies'
own size, and the replies are still alive (the decoded arrays are views on their
bytes, :mod:`strategies.validation`). :class:`DeltaMatrix` keeps only references to
those arrays and the float64 origin ``o``, and produces float64 values on demand:

* :meth:`DeltaMatrix.column_block` – the ``(k, c)`` float64 block of some columns;
* :meth:`DeltaMatrix.weighted_sum` – ``Σ_i c_i y_i``, streamed over cache-sized
  blocks (the FedAvg aggregate);
* :meth:`DeltaMatrix.row_norms` – exact ``‖y_i‖``;
* :meth:`DeltaMatrix.norms_and_centred_gram` – ``‖y_i‖²`` and the Gram matrix of
  the rows minus one of them, in the same sweep (the pairwise distances'
  kernel, :func:`strategies.aggregators.squared_norms_and_distances`);
* :meth:`DeltaMatrix.rows`, :meth:`DeltaMatrix.scaled`, :meth:`DeltaMatrix.mixed` –
  subsets, row scalings (clipping) and linear mixes (``M Y``, e.g. nearest-neighbour
  mixing) as new lazy matrices, without touching a value.

Every value is computed the way a materialised float64 matrix would be: the delta
``float64(x_ik) − o_k`` first (exact for float32 inputs up to float64 rounding), then
the row scale, then the mix. Scratch memory is one block per worker thread.

Indexing follows numpy where it is cheap to: ``m[:, columns]`` is a float64 block,
``m[rows]`` a lazy subset, ``m[i]`` one float64 row, ``weights @ m`` the weighted sum
and ``mixing @ m`` a lazy mix; ``np.asarray(m)`` materialises the whole float64
matrix (for code that needs an ndarray; it costs ``8 k d`` bytes).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import Any, TypeAlias

import numpy as np
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

STREAM_ELEMENTS = 1 << 18
"""Values per ``(k, c)`` block of the streamed reductions (2 MiB of float64)."""

STREAM_MIN_COLUMNS = 4096
"""Narrowest block of the streamed reductions (32 MiB of scratch at 1,000 rows)."""

GATHER_ELEMENTS = 1 << 20
"""Values per ``(k, c)`` block of :meth:`DeltaMatrix.column_blocks` (8 MiB)."""

SUM_COLUMNS = 1 << 15
"""Columns per span of :meth:`DeltaMatrix.weighted_sum` (one float64 row of scratch,
256 KiB, and the running sum beside it stay in the core's cache)."""

GRAM_GROUP_SPANS = 8
"""Spans of columns per partial Gram matrix of :meth:`DeltaMatrix.
norms_and_centred_gram`: fixed, so the partial sums are added in the same order
whatever the number of threads."""

NORM_CANCELLATION_RATIO = 16.0
"""Rows whose ``H_ii + H_oo`` exceeds this many times their squared norm get it
recomputed from their values (:meth:`DeltaMatrix.norms_and_centred_gram`)."""

_WORKERS = min(8, len(os.sched_getaffinity(0)))


def one_blas_thread() -> Any:
    """Context in which BLAS runs on one thread: a product's bits then do not depend
    on how many threads BLAS would have split it over (our own threads split the
    columns instead, in a fixed order)."""
    return threadpool_limits(limits=1, user_api="blas")


def _span_groups(columns: int, width: int) -> list[list[tuple[int, int]]]:
    """Spans of ``width`` columns covering ``[0, columns)``, in groups of
    :data:`GRAM_GROUP_SPANS` (fixed: partial sums added in the same order whatever
    the number of threads)."""
    spans = [(start, min(start + width, columns)) for start in range(0, columns, width)]
    return [
        spans[first : first + GRAM_GROUP_SPANS]
        for first in range(0, len(spans), GRAM_GROUP_SPANS)
    ]


def accumulate_rows(
    out: np.ndarray,
    coefficients: np.ndarray,
    rows: Any,
    scratch: np.ndarray | None = None,
) -> np.ndarray:
    """``out = Σ_i c_i r_i`` over ``rows`` (any real dtype) in float64: the one
    fixed-order weighted-sum kernel.

    Each coordinate is ``((c_0 r_0 + c_1 r_1) + c_2 r_2) + …``, rows added in
    index order, every product and sum rounded once (IEEE-754 float64, no fused
    multiply-add): the same bits on every machine and thread count, so an auditor
    re-running a round gets the aggregator's model. Rows with coefficient 0 are
    skipped (finite rows: adding ``0 · r`` changes nothing). ``scratch`` (as long
    as ``out``) holds each product; one is allocated when not given.
    """
    product = np.empty_like(out) if scratch is None else scratch
    out[:] = 0.0
    for coefficient, row in zip(coefficients, rows, strict=True):
        if coefficient == 0.0:
            continue
        np.multiply(row, coefficient, out=product, dtype=np.float64)
        np.add(out, product, out=out)
    return out


class DeltaMatrix:  # pylint: disable=too-many-instance-attributes
    """``(k, d)`` float64 matrix ``M · diag(s) · (X_R − 1 oᵀ)``, evaluated lazily.

    ``X`` holds one row per source (a sequence of flat arrays of any real dtype,
    concatenated), ``R`` selects and orders rows of it, ``s`` scales them and ``M``
    (``(k, |R|)``, optional) mixes them.

    Parameters
    ----------
    sources : Sequence[Sequence[np.ndarray]]
        Per source row, its pieces: 1-D arrays whose lengths are the same for every
        row and sum to ``d``. They are referenced, never copied or modified.
    origin : np.ndarray | None
        ``(d,)`` float64 subtracted from every row; ``None`` for zero.
    finite_sources : bool
        The caller vouches that every source value is finite (validated replies);
        :meth:`all_finite` can then often answer without a pass over the values.
    """

    __slots__ = (
        "_bounds",
        "_finite_sources",
        "_mixing",
        "_origin",
        "_rows",
        "_scales",
        "_sources",
    )

    # numpy hands ``weights @ m`` to __rmatmul__ instead of converting ``m``, and a
    # ufunc on a DeltaMatrix is an error rather than a silent 8·k·d-byte copy.
    __array_ufunc__ = None

    def __init__(
        self,
        sources: Sequence[Sequence[np.ndarray]],
        origin: np.ndarray | None = None,
        finite_sources: bool = False,
    ) -> None:
        if len(sources) == 0:
            raise ValueError("a DeltaMatrix needs at least one row")
        pieces = [tuple(np.ravel(piece) for piece in row) for row in sources]
        lengths = [piece.shape[0] for piece in pieces[0]]
        for row in pieces:
            if [piece.shape[0] for piece in row] != lengths:
                raise ValueError("every row of a DeltaMatrix needs the same pieces")
            for piece in row:
                if piece.dtype.kind not in "biuf":
                    raise ValueError(f"pieces must be real numbers, got {piece.dtype}")
        bounds = np.cumsum([0, *lengths])
        if origin is not None:
            origin = np.asarray(origin, dtype=np.float64)
            if origin.shape != (int(bounds[-1]),):
                raise ValueError(
                    f"origin has shape {origin.shape}, "
                    f"rows have {int(bounds[-1])} values"
                )
        self._sources = tuple(pieces)
        self._origin = origin
        self._bounds = bounds
        self._rows = np.arange(len(pieces))
        self._scales: np.ndarray | None = None
        self._mixing: np.ndarray | None = None
        self._finite_sources = finite_sources

    @classmethod
    def of(cls, matrix: Any) -> DeltaMatrix:
        """The rows of an in-memory ``(n, d)`` array, as they are (no origin)."""
        array = np.asarray(matrix)
        if array.ndim != 2:
            raise ValueError(f"need an (n, d) matrix, got shape {array.shape}")
        return cls([(row,) for row in array])

    def all_finite(self) -> bool:
        """Whether every value is finite (neither NaN nor infinite).

        Without a pass over the values when the sources are known finite and at
        most 4 bytes wide (so ``|x| ≤ 3.5·10³⁸``) and the origin, scales and mixing
        cannot push such values past float64's range; else block by block.
        """
        if self._finite_sources and self._bounded():
            return True
        with np.errstate(over="ignore", invalid="ignore"):  # the answer, not an error
            return all(
                bool(np.isfinite(self.column_block(columns)).all())
                for columns in self.column_blocks()
            )

    def _bounded(self) -> bool:
        narrow = all(
            piece.dtype.itemsize <= 4 for row in self._sources for piece in row
        )
        if not narrow:
            return False
        bound = 3.5e38
        if self._origin is not None and self._origin.size:
            if not np.isfinite(self._origin).all():
                return False
            # Two reductions instead of np.abs: no d-value temporary.
            bound += max(-float(self._origin.min()), float(self._origin.max()))
        if self._scales is not None:
            if not np.isfinite(self._scales).all():
                return False
            bound *= float(np.abs(self._scales).max(initial=0.0))
        if self._mixing is not None:
            if not np.isfinite(self._mixing).all():
                return False
            bound *= float(np.abs(self._mixing).sum(axis=1).max(initial=0.0))
        return bound < 1e300

    def _derived(
        self, rows: np.ndarray, scales: np.ndarray | None, mixing: np.ndarray | None
    ) -> DeltaMatrix:
        derived = object.__new__(DeltaMatrix)
        derived._sources = self._sources
        derived._origin = self._origin
        derived._bounds = self._bounds
        derived._rows = rows
        derived._scales = scales
        derived._mixing = mixing
        derived._finite_sources = self._finite_sources
        return derived

    # ---------------------------------------------------------------- shape

    @property
    def shape(self) -> tuple[int, int]:
        """``(k, d)``."""
        rows = self._rows.shape[0] if self._mixing is None else self._mixing.shape[0]
        return int(rows), int(self._bounds[-1])

    @property
    def ndim(self) -> int:
        """Always 2."""
        return 2

    @property
    def dtype(self) -> np.dtype[np.float64]:
        """float64: what every block is."""
        return np.dtype(np.float64)

    @property
    def size(self) -> int:
        """``k · d``."""
        rows, columns = self.shape
        return rows * columns

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        rows, columns = self.shape
        return f"DeltaMatrix({rows} × {columns:,})"

    # ----------------------------------------------------------- derivations

    def rows(self, selection: Any) -> DeltaMatrix:
        """Rows ``selection`` (indices, a boolean mask or a slice), lazily."""
        chosen = np.arange(self.shape[0])[selection]
        if chosen.ndim != 1:
            raise IndexError("select rows with a 1-D index, a mask or a slice")
        if self._mixing is not None:
            return self._derived(self._rows, self._scales, self._mixing[chosen])
        scales = None if self._scales is None else self._scales[chosen]
        return self._derived(self._rows[chosen], scales, None)

    def scaled(self, factors: np.ndarray) -> DeltaMatrix:
        """``diag(factors) · self``, lazily (e.g. clipping each row to a norm)."""
        values = np.asarray(factors, dtype=np.float64)
        if values.shape != (self.shape[0],):
            raise ValueError(f"need {self.shape[0]} factors, got shape {values.shape}")
        if self._mixing is not None:
            return self._derived(
                self._rows, self._scales, self._mixing * values[:, None]
            )
        scales = values if self._scales is None else self._scales * values
        return self._derived(self._rows, scales, None)

    def mixed(self, mixing: np.ndarray) -> DeltaMatrix:
        """``mixing · self`` for a ``(m, k)`` matrix, lazily."""
        values = np.asarray(mixing, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != self.shape[0]:
            raise ValueError(
                f"mixing must have shape (m, {self.shape[0]}), got {values.shape}"
            )
        combined = values if self._mixing is None else values @ self._mixing
        return self._derived(self._rows, self._scales, combined)

    # ------------------------------------------------------------ evaluation

    def _base_block(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """``diag(s)(X_R − 1oᵀ)`` on columns ``[start, stop)`` written into ``out``."""
        bounds = self._bounds
        first = int(np.searchsorted(bounds, start, side="right")) - 1
        for target, source in zip(out, self._rows, strict=True):
            pieces = self._sources[source]
            piece = first
            position = start
            while position < stop:
                low, high = int(bounds[piece]), int(bounds[piece + 1])
                end = min(stop, high)
                # A cast copy per row, then one broadcast subtraction for the block:
                # half the time of a mixed-dtype subtraction per row (same values).
                target[position - start : end - start] = pieces[piece][
                    position - low : end - low
                ]
                position = end
                piece += 1
        if self._origin is not None:
            out -= self._origin[start:stop]
        if self._scales is not None:
            out *= self._scales[:, None]
        return out

    def column_block(self, columns: slice) -> np.ndarray:
        """The float64 values of a contiguous range of columns, ``(k, c)``, fresh."""
        start, stop, step = columns.indices(self.shape[1])
        if step != 1:
            return self.take_columns(np.arange(start, stop, step))
        stop = max(start, stop)
        base = self._base_block(
            start, stop, np.empty((self._rows.shape[0], stop - start))
        )
        return base if self._mixing is None else self._mixing @ base

    def take_columns(self, indices: Any) -> np.ndarray:
        """The float64 values of arbitrary columns, ``(k, len(indices))``, fresh."""
        wanted = np.asarray(indices, dtype=np.intp).ravel()
        if wanted.size and (wanted.min() < 0 or wanted.max() >= self.shape[1]):
            raise IndexError("column index out of range")
        ascending = bool(np.all(wanted[1:] >= wanted[:-1]))
        order = None if ascending else np.argsort(wanted, kind="stable")
        ordered = wanted if order is None else wanted[order]
        base = np.empty((self._rows.shape[0], wanted.size))
        bounds = self._bounds
        cuts = np.searchsorted(ordered, bounds)
        for row, source in enumerate(self._rows):
            pieces = self._sources[source]
            for piece, (low, high) in enumerate(pairwise(cuts)):
                if high > low:
                    base[row, low:high] = pieces[piece][
                        ordered[low:high] - bounds[piece]
                    ]
        if self._origin is not None:
            base -= self._origin[ordered]
        if self._scales is not None:
            base *= self._scales[:, None]
        if self._mixing is not None:
            base = self._mixing @ base
        if order is None:  # sorted already (sketch coordinates): no second copy
            return base
        result = np.empty_like(base)
        result[:, order] = base
        return result

    def column_blocks(self, elements: int = GATHER_ELEMENTS) -> Iterator[slice]:
        """Slices of at most ``elements / k`` columns covering all ``d``."""
        rows, columns = self.shape
        width = max(1, elements // max(rows, 1))
        for start in range(0, columns, width):
            yield slice(start, min(start + width, columns))

    def _stream(self, reduce: Any) -> list[Any]:
        """``reduce(start, stop, scratch)`` over blocks of columns on worker threads."""
        columns = self.shape[1]
        # At least STREAM_MIN_COLUMNS: with a thousand rows, cache-sized blocks are
        # so narrow that a row copy per block costs more in calls than in bytes.
        width = max(STREAM_MIN_COLUMNS, STREAM_ELEMENTS // self._rows.shape[0])
        spans = [
            (start, min(start + width, columns)) for start in range(0, columns, width)
        ]
        chunks = np.array_split(np.arange(len(spans)), min(_WORKERS, len(spans)) or 1)

        def work(chunk: np.ndarray) -> list[Any]:
            scratch = np.empty((self._rows.shape[0], width))
            return [
                reduce(*spans[index], scratch[:, : spans[index][1] - spans[index][0]])
                for index in chunk
            ]

        if len(chunks) == 1:
            return work(chunks[0])
        with ThreadPoolExecutor(len(chunks)) as pool:
            return [part for parts in pool.map(work, chunks) for part in parts]

    def weighted_sum(self, coefficients: np.ndarray) -> np.ndarray:
        """``Σ_i c_i y_i`` in float64, ``(d,)``: span by span, no copy of the rows.

        The fixed-order kernel of :func:`accumulate_rows` (no BLAS reduction, an
        auditor re-running the round gets these bits), fed one row at a time: each
        value is ``c_i · (s_i · (float64(x_ik) − o_k))`` exactly as in a
        materialised block, but only one row of scratch is in flight, so spans can
        be wide (fewer calls) and still stay in cache.
        """
        values = np.asarray(coefficients, dtype=np.float64)
        if values.shape != (self.shape[0],):
            raise ValueError(
                f"need {self.shape[0]} coefficients, got shape {values.shape}"
            )
        if self._mixing is not None:
            values = values @ self._mixing
        columns = self.shape[1]
        total = np.empty(columns)
        spans = [
            (start, min(start + SUM_COLUMNS, columns))
            for start in range(0, columns, SUM_COLUMNS)
        ]
        chunks = np.array_split(np.arange(len(spans)), min(_WORKERS, len(spans)) or 1)
        scales = self._scales

        def work(chunk: np.ndarray) -> None:
            scratch = np.empty(SUM_COLUMNS)
            for index in chunk:
                start, stop = spans[index]
                row = scratch[: stop - start]
                out = total[start:stop]
                out[:] = 0.0
                origin = None if self._origin is None else self._origin[start:stop]
                segments = self._segments(start, stop)
                for position, (coefficient, source) in enumerate(
                    zip(values, self._rows, strict=True)
                ):
                    if coefficient == 0.0:
                        continue
                    self._copy_row(int(source), segments, row)
                    if origin is not None:
                        np.subtract(row, origin, out=row)
                    if scales is not None:
                        np.multiply(row, scales[position], out=row)
                    np.multiply(row, coefficient, out=row)
                    np.add(out, row, out=out)

        if len(chunks) == 1:
            work(chunks[0])
        else:
            with ThreadPoolExecutor(len(chunks)) as pool:
                list(pool.map(work, chunks))
        return total

    def _segments(self, start: int, stop: int) -> tuple[tuple[int, int, int, int], ...]:
        """How columns ``[start, stop)`` lie in the pieces, the same for every row:
        ``(piece, low, high, at)``, piece values ``[low, high)`` going to
        ``out[at : at + high − low]``. Found once per span, not once per row."""
        bounds = self._bounds
        piece = int(np.searchsorted(bounds, start, side="right")) - 1
        position = start
        segments = []
        while position < stop:
            low, high = int(bounds[piece]), int(bounds[piece + 1])
            end = min(stop, high)
            if end > position:
                segments.append((piece, position - low, end - low, position - start))
            position = end
            piece += 1
        return tuple(segments)

    def _copy_row(
        self,
        source: int,
        segments: tuple[tuple[int, int, int, int], ...],
        out: np.ndarray,
    ) -> None:
        """Source row ``source`` on a span's ``segments``, cast into ``out``."""
        pieces = self._sources[source]
        for piece, low, high, at in segments:
            out[at : at + high - low] = pieces[piece][low:high]

    def norms_and_centred_gram(self, centre: int) -> tuple[np.ndarray, np.ndarray]:
        """``‖y_i‖²`` and ``G = (Y − 1 y_cᵀ)(Y − 1 y_cᵀ)ᵀ`` in one sweep over the rows.

        Each span of columns is read once and its block's Gram matrix (BLAS
        ``syrk``, on one thread) is added to its group's partial sum; groups of
        :data:`GRAM_GROUP_SPANS` spans run on worker threads and their partial sums
        are added in column order, so the result does not depend on the number of
        threads. Centring on a row of the bulk is what keeps the Gram identity of
        :func:`strategies.aggregators.squared_norms_and_distances` from cancelling.

        Rows that are plain deltas (no scale, no mix: a strategy's batch) are
        centred before the origin is taken off, ``y_i − y_c = x_i − x_c``, with the
        origin as one more row of the block: a block is then the rows cast to
        float64 and one subtraction, and ``‖y_i‖² = ‖(x_i − x_c) − (o − x_c)‖²``
        comes out of the same ``syrk`` (:meth:`_source_gram`). Other rows take the
        general route: origin, scales and mix applied per block, squared norms
        summed beside the Gram matrix (the spans and sums of :meth:`row_norms`).
        """
        k, columns = self.shape
        if not 0 <= centre < k:
            raise IndexError(f"centre {centre} is not a row of {k}")
        if self._scales is None and self._mixing is None:
            return self._source_gram(centre)
        width = max(STREAM_MIN_COLUMNS, STREAM_ELEMENTS // self._rows.shape[0])
        groups = _span_groups(columns, width)
        chunks = np.array_split(np.arange(len(groups)), min(_WORKERS, len(groups)) or 1)

        def work(chunk: np.ndarray) -> list[tuple[list[np.ndarray], np.ndarray]]:
            scratch = np.empty((self._rows.shape[0], width))
            reference = np.empty(width)
            results = []
            for index in chunk:
                gram = np.zeros((k, k))
                squares = []
                for start, stop in groups[index]:
                    block = self._base_block(start, stop, scratch[:, : stop - start])
                    if self._mixing is not None:
                        block = self._mixing @ block
                    squares.append(np.einsum("ij,ij->i", block, block))
                    centre_row = reference[: stop - start]
                    centre_row[:] = block[centre]
                    block -= centre_row
                    gram += block @ block.T
                results.append((squares, gram))
            return results

        parts = self._on_workers(work, chunks)
        gram = np.zeros((k, k))
        for _, partial in parts:
            gram += partial
        squares = [square for found, _ in parts for square in found]
        squared_norms = np.sum(squares, axis=0) if squares else np.zeros(k)
        return squared_norms, gram

    def _on_workers(self, work: Any, chunks: list[np.ndarray]) -> list[Any]:
        """``work(chunk)`` for every chunk, on threads, BLAS on one thread each;
        the results of all chunks in chunk order."""
        with one_blas_thread():
            if len(chunks) == 1:
                return list(work(chunks[0]))
            with ThreadPoolExecutor(len(chunks)) as pool:
                return [part for found in pool.map(work, chunks) for part in found]

    def _source_gram(self, centre: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`norms_and_centred_gram` of unscaled, unmixed rows.

        The block of a span holds ``x_i − x_c`` for every row ``i`` (each
        difference of two float32 values is exact in float64) and ``o − x_c`` in
        its last row; its Gram matrix ``H`` gives the centred Gram matrix
        (``H[:k, :k]``) and ``‖y_i‖² = H_ii + H_oo − 2 H_io``. That identity
        cancels for a row much shorter than its distance to the centre (a delta
        near 0, e.g. a free-rider's): where ``H_ii + H_oo`` exceeds
        :data:`NORM_CANCELLATION_RATIO` times the result, the row's norm is
        recomputed from its values (:meth:`row_norms`), so every squared norm has
        the precision of a sum of squares.
        """
        k, columns = self.shape
        source_centre = int(self._rows[centre])
        width = max(STREAM_MIN_COLUMNS, STREAM_ELEMENTS // (k + 1))
        groups = _span_groups(columns, width)
        chunks = np.array_split(np.arange(len(groups)), min(_WORKERS, len(groups)) or 1)
        origin = self._origin

        def work(chunk: np.ndarray) -> list[np.ndarray]:
            scratch = np.empty((k + 1, width))
            centre_row = np.empty(width)
            results = []
            for index in chunk:
                gram = np.zeros((k + 1, k + 1))
                for start, stop in groups[index]:
                    block = scratch[:, : stop - start]
                    segments = self._segments(start, stop)
                    for target, source in zip(block, self._rows, strict=False):
                        self._copy_row(int(source), segments, target)
                    if origin is None:
                        block[k] = 0.0
                    else:
                        block[k] = origin[start:stop]
                    here = centre_row[: stop - start]
                    self._copy_row(source_centre, segments, here)
                    block -= here
                    gram += block @ block.T
                results.append(gram)
            return results

        total = np.zeros((k + 1, k + 1))
        for partial in self._on_workers(work, chunks):
            total += partial
        gram = np.ascontiguousarray(total[:k, :k])
        diagonal = np.diag(total)
        spread = diagonal[:k] + diagonal[k]
        with np.errstate(over="ignore", invalid="ignore"):
            squared_norms = np.maximum(spread - 2.0 * total[:k, k], 0.0)
            doubtful = ~(spread <= NORM_CANCELLATION_RATIO * squared_norms)
        if np.any(doubtful):
            squared_norms[doubtful] = self.rows(doubtful).row_norms() ** 2
        return squared_norms, gram

    def row_norms(self) -> np.ndarray:
        """Exact Euclidean norm of every row, ``(k,)``, block by block."""
        if self._mixing is not None:
            squares = sum(
                np.einsum("ij,ij->i", block, block)
                for block in map(self.column_block, self.column_blocks())
            )
            return np.sqrt(np.asarray(squares, dtype=np.float64))

        def reduce(start: int, stop: int, scratch: np.ndarray) -> np.ndarray:
            block = self._base_block(start, stop, scratch)
            return np.einsum("ij,ij->i", block, block)

        parts = self._stream(reduce)
        return np.sqrt(np.sum(parts, axis=0)) if parts else np.zeros(self.shape[0])

    def to_array(self) -> np.ndarray:
        """The whole float64 matrix (``8 k d`` bytes: for small batches and tests)."""
        return self.column_block(slice(None))

    # ------------------------------------------------------- numpy protocol

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        matrix = self.to_array()
        return matrix if dtype is None else matrix.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):
            if len(key) != 2 or key[0] != slice(None):
                raise IndexError("index a DeltaMatrix as m[rows] or m[:, columns]")
            columns = key[1]
            if isinstance(columns, slice):
                return self.column_block(columns)
            if isinstance(columns, int | np.integer):
                return self.take_columns([int(columns)])[:, 0]
            return self.take_columns(columns)
        if isinstance(key, int | np.integer):
            return self.rows([int(key)]).to_array()[0]
        return self.rows(key)

    def __rmatmul__(self, left: Any) -> Any:
        values = np.asarray(left, dtype=np.float64)
        if values.ndim == 1:
            return self.weighted_sum(values)
        return self.mixed(values)

    def __iter__(self) -> Iterator[np.ndarray]:
        for row in range(self.shape[0]):
            yield self[row]


Deltas: TypeAlias = np.ndarray | DeltaMatrix
"""An ``(n, d)`` update matrix, in memory or lazy: what rules and detectors take."""
