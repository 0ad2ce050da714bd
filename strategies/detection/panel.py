"""Scores → verdicts: run a list of detectors and decide about every row."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from strategies.delta_matrix import Deltas
from strategies.detection.detectors import Detector, default_detectors
from strategies.detection.geometry import as_deltas
from strategies.detection.round_context import DetectionContext
from strategies.records import Verdict


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

    def screen(self, deltas: Deltas, context: DetectionContext) -> Screening:
        """Score every row with every detector and decide."""
        matrix = as_deltas(deltas)
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
    detector: Detector, deltas: Deltas, context: DetectionContext, n: int
) -> np.ndarray:
    scores = np.asarray(detector.score(deltas, context), dtype=np.float64)
    if scores.shape != (n,) or np.isnan(scores).any():
        raise ValueError(
            f"detector {detector.name} returned scores of shape {scores.shape} "
            "(or NaN); expected finite scores of shape ({n},)"
        )
    return scores
