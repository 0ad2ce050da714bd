"""The detectors: one small frozen class per signal, its thresholds as fields.

Every detector maps a round's ``(n, d)`` float64 deltas (a lazy
:class:`~strategies.delta_matrix.DeltaMatrix` in a strategy) to ``(n,)`` scores where
larger is more suspicious, and carries two thresholds: a score at or above
``downweight_at`` multiplies the reply's weight by a factor below one, a score at or
above ``reject_at`` removes it (:class:`strategies.detection.panel.DetectorPanel`).
Build one with other thresholds as any dataclass, e.g. ``NormOutlier(reject_at=8)``,
or from a config entry ``{_target_: strategies.detection.NormOutlier, reject_at: 8}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from strategies.delta_matrix import Deltas
from strategies.detection.geometry import (
    centred_gram,
    clipped_mean_coefficients,
    cosines_from_dots,
    krum_neighbour_sums,
    leave_one_out_cosines,
    one_sided_z,
    safe_ratio,
    squared_distances_from_gram,
)
from strategies.detection.round_context import DetectionContext


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

    def score(self, deltas: Deltas, context: DetectionContext) -> np.ndarray:
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

    def score(self, deltas: Deltas, context: DetectionContext) -> np.ndarray:
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

    def score(self, deltas: Deltas, context: DetectionContext) -> np.ndarray:
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

    def score(self, deltas: Deltas, context: DetectionContext) -> np.ndarray:
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

    def score(self, deltas: Deltas, context: DetectionContext) -> np.ndarray:
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

    def score(self, deltas: Deltas, context: DetectionContext) -> np.ndarray:
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

    def score(self, deltas: Deltas, context: DetectionContext) -> np.ndarray:
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

    def score(self, deltas: Deltas, context: DetectionContext) -> np.ndarray:
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
