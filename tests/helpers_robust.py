"""Brute-force transcriptions of the certified filter (strategies/robust_stage.py),
in ``d``-space: explicit distances, the full weighted covariance, ``eigh``."""

from __future__ import annotations

import itertools
import math

import numpy as np


def brute_force_spread(rows: np.ndarray, f: int) -> float:
    """``s² = a_(⌈n/2⌉) / (2(n − 1))``, ``a_i`` the mean of the ``n − f − 1``
    smallest squared distances from row ``i`` to the others."""
    n = len(rows)
    if n < 2:
        return 0.0
    k = n - f - 1
    means = []
    for i in range(n):
        others = sorted(
            float(np.sum((rows[i] - rows[j]) ** 2)) for j in range(n) if j != i
        )
        means.append(sum(others[:k]) / k if k > 0 else 0.0)
    return sorted(means)[(n + 1) // 2 - 1] / (2 * (n - 1))


def top_covariance(rows: np.ndarray, c: np.ndarray) -> tuple[float, np.ndarray]:
    """Top eigenvalue of the ``c/Σc``-weighted covariance, and ``τ_i`` along it."""
    value, projections = top_projections(rows, c)
    return value, projections**2


def top_projections(rows: np.ndarray, c: np.ndarray) -> tuple[float, np.ndarray]:
    """Top eigenvalue of the ``c/Σc``-weighted covariance, and ``(x_i − μ_c)ᵀ v``."""
    p = c / c.sum()
    diffs = rows - p @ rows
    values, vectors = np.linalg.eigh((p[:, None] * diffs).T @ diffs)
    return float(values[-1]), diffs @ vectors[:, -1]


def brute_force_direction_spread(projections: np.ndarray, f: int) -> float:
    """The smallest variance over every subset of ``n − f`` of the values."""
    n = len(projections)
    if n - f < 2:
        return 0.0
    return min(
        float(np.var(projections[list(subset)]))
        for subset in itertools.combinations(range(n), n - f)
    )


def brute_force_certified(rows: np.ndarray, f: int, threshold: float) -> np.ndarray:
    """The first CAF iterate whose rounding ``1[c ≥ ½]``, or itself, keeps ``≥ n − f``
    of the weight with top eigenvalue ``≤ threshold · max(s², s²(v))`` (``v`` its
    top direction, ``s²(v)`` the smallest variance of ``n − f`` projections on it,
    over the consecutive sorted ones); else CAF's answer."""
    n = len(rows)
    scale = brute_force_spread(rows, f)

    def certified(c: np.ndarray) -> bool:
        value, projections = top_projections(rows, c)
        ordered, k = np.sort(projections), n - f
        along = (
            min(float(np.var(ordered[i : i + k])) for i in range(n - k + 1))
            if k >= 2
            else 0.0
        )
        return value <= threshold * max(scale, along)

    c = np.ones(n)
    best, best_value = c / n, math.inf
    while c.sum() > n - 2 * f:
        value, tau = top_covariance(rows, c)
        if certified(c):
            hard = (c >= 0.5).astype(np.float64)
            if hard.sum() >= n - f and certified(hard):
                return hard / hard.sum()
            if c.sum() >= n - f:
                return c / c.sum()
        if value < best_value:
            best, best_value = c / c.sum(), value
        if value <= 0:
            break
        c = c * (1 - tau / tau[c > 0].max())
    return best
