"""What the strategy remembers between rounds: each identity's previous delta on a
fixed, secret set of sampled coordinates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from strategies.delta_matrix import Deltas

SKETCH_COORDINATES = 32_768
"""Coordinates sampled from each delta for pairwise geometry and history (all of
them when ``d`` is smaller)."""

SKETCH_BLOCK = 1_024
"""Length of the contiguous blocks the sampled coordinates come in."""


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

    def sketch(self, deltas: Deltas) -> np.ndarray:
        """The remembered coordinates of each row: ``(n, m)`` float64, a new array."""
        coordinates = self.coordinates(deltas.shape[1])
        if coordinates.shape[0] == deltas.shape[1]:
            return np.array(deltas, dtype=np.float64)
        # Fancy indexing (of an ndarray or a DeltaMatrix): already a new array.
        return np.asarray(deltas[:, coordinates], dtype=np.float64)

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
