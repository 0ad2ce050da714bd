"""Anomaly detection: one small class per signal, one verdict per reply.

Four concepts, one module each:

* :mod:`~strategies.detection.geometry` — the round's Gram matrix, norms, robust
  scales and geometric median (:class:`RoundGeometry`);
* :mod:`~strategies.detection.history` — each identity's previous delta on sampled
  coordinates (:class:`UpdateHistory`); :mod:`~strategies.detection.round_context`
  joins both into what a detector sees (:class:`DetectionContext`);
* :mod:`~strategies.detection.detectors` — the :class:`Detector` protocol and the
  detectors, thresholds as their fields;
* :mod:`~strategies.detection.panel` — :class:`DetectorPanel` runs several detectors
  and turns their scores into one :class:`Screening` per round, each reason naming
  the detector and its value.

Every detector maps a round's ``(n, d)`` float64 deltas to ``(n,)`` scores where
larger is more suspicious, and carries two thresholds: a score at or above
``downweight_at`` multiplies the reply's weight by a factor below one, a score at or
above ``reject_at`` removes it.

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

from strategies.detection.detectors import (
    Collusion,
    CosineToCentre,
    Detector,
    FreeRider,
    HistoryConsistency,
    KrumDistance,
    NormOutlier,
    Opposition,
    default_detectors,
)
from strategies.detection.geometry import (
    MAD_TO_SIGMA,
    SCORE_CEILING,
    RoundGeometry,
    as_deltas,
    centred_gram,
    clipped_mean_coefficients,
    cosines_from_dots,
    geometric_median_coefficients,
    krum_neighbour_sums,
    leave_one_out_cosines,
    one_sided_z,
    robust_z,
    row_norms,
    safe_ratio,
    squared_distances_from_gram,
)
from strategies.detection.history import (
    SKETCH_BLOCK,
    SKETCH_COORDINATES,
    UpdateHistory,
    sketch_coordinates,
)
from strategies.detection.panel import (
    DetectorPanel,
    Screening,
)
from strategies.detection.round_context import (
    DetectionContext,
)

__all__ = [
    "MAD_TO_SIGMA",
    "SCORE_CEILING",
    "SKETCH_BLOCK",
    "SKETCH_COORDINATES",
    "Collusion",
    "CosineToCentre",
    "DetectionContext",
    "Detector",
    "DetectorPanel",
    "FreeRider",
    "HistoryConsistency",
    "KrumDistance",
    "NormOutlier",
    "Opposition",
    "RoundGeometry",
    "Screening",
    "UpdateHistory",
    "as_deltas",
    "centred_gram",
    "clipped_mean_coefficients",
    "cosines_from_dots",
    "default_detectors",
    "geometric_median_coefficients",
    "krum_neighbour_sums",
    "leave_one_out_cosines",
    "one_sided_z",
    "robust_z",
    "row_norms",
    "safe_ratio",
    "sketch_coordinates",
    "squared_distances_from_gram",
]
