"""What a detector may know about one round besides the deltas."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from strategies.delta_matrix import Deltas
from strategies.detection.geometry import RoundGeometry, as_deltas
from strategies.detection.history import UpdateHistory


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
        deltas: Deltas,
        identities: Sequence[str],
        history: UpdateHistory | None = None,
        exact_geometry: bool = False,
        norms: np.ndarray | None = None,
    ) -> DetectionContext:
        """Context of one round.

        Parameters
        ----------
        deltas : Deltas
            ``(n, d)`` rows (a strategy's lazy DeltaMatrix, read in blocks).
        identities : Sequence[str]
            Identity of each row.
        history : UpdateHistory | None
            Previous deltas and the sampled coordinates (``None``: no past, default
            sampling).
        exact_geometry : bool
            Compute the Gram matrix over every coordinate (``O(n² d)``) instead of
            the sampled ones.
        norms : np.ndarray | None
            ``(n,)`` exact row norms the caller already has (used with sampled
            geometry, which would otherwise make a pass over the deltas for them).
        """
        matrix = as_deltas(deltas)
        if len(identities) != matrix.shape[0]:
            raise ValueError(
                f"{len(identities)} identities for {matrix.shape[0]} rows of deltas"
            )
        history = history if history is not None else UpdateHistory()
        sketches = history.sketch(matrix)
        sketches.setflags(write=False)  # UpdateHistory.remember may keep views of it
        sampled = sketches.shape[1] < matrix.shape[1] and not exact_geometry
        geometry = RoundGeometry.from_deltas(
            matrix, sketches if sampled else None, norms
        )
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

    def check(self, deltas: Deltas) -> None:
        """Raise if this context was not built for ``deltas``."""
        if deltas.ndim != 2 or deltas.shape[0] != self.geometry.size:
            raise ValueError(
                f"context describes {self.geometry.size} rows, deltas have shape "
                f"{deltas.shape}"
            )
