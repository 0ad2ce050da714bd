"""Fuzzing: malformed replies mixed with good ones never abort a round.

Hypothesis draws a round of replies, each either well-formed (small or huge update)
or broken in one of many ways (including a second reply under an identity already
heard this round). For every exported strategy the round must not raise, no reply
may be mutated, and:

* every reply that should not count is reported rejected, with a reason;
* the round is *exactly* the round of the good replies alone: the same model, bit
  for bit, and the same contribution (verdict, weight, scores) for every good reply;
* the model and each good reply's weight are what a brute-force transcription of
  the strategy's rule gives on the good replies (written here from the papers'
  definitions, without :mod:`strategies.aggregators`); for the rules driven by the
  anomaly detectors, the reference takes the verdicts as given and recomputes the
  weights and the aggregate from them; a selection rule (Krum, Multi-Krum, Bulyan)
  may pick another row than the reference only where their scores tie to 1e-9 (a
  far update dominating every score leaves the winner to summation order);
* for central DP with noise, the model is finite (the exact-round check above, with
  the same noise seed, covers the rest).

The default run draws :data:`DEFAULT_EXAMPLES` rounds per strategy (a few hundred in
all); ``-m slow`` draws :data:`SLOW_EXAMPLES` per strategy. Register further
strategies in :data:`FUZZED`; :func:`test_every_exported_strategy_is_fuzzed` fails
until a new export is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from helpers_messages import (
    make_error_reply,
    make_reply,
    make_train_reply,
)
from helpers_robust import brute_force_certified
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import strategies
from flp2p.app import arrays_to_record
from strategies import aggregators
from strategies.base import ScreenedFedAvg
from strategies.bulyan import Bulyan
from strategies.centered_clipping import CenteredClipping
from strategies.central_dp import CentralDP
from strategies.detection import DetectorPanel
from strategies.geometric_median import GeometricMedian
from strategies.krum import Krum, MultiKrum
from strategies.median import Median
from strategies.preaggregation import NearestNeighbourMixing
from strategies.records import (
    ARRAYS_KEY,
    METRICS_KEY,
    InMemoryStore,
    RoundReport,
    Verdict,
    update_sha256,
)
from strategies.robust_rule import RobustRuleFedAvg
from strategies.robust_stage import RobustStage
from strategies.trimmed_mean import TrimmedMean
from strategies.trusted import (
    DetectorsOnlyFedAvg,
    TrustedFedAvg,
    TrustedMedianFedAvg,
)

DEFAULT_EXAMPLES = 25
"""Rounds per strategy in the default run (times the strategies: a few hundred)."""
SLOW_EXAMPLES = 10_000
"""Rounds per strategy under ``-m slow``."""

REFERENCE: dict[str, np.ndarray] = {
    "dense.weight": np.linspace(-0.5, 0.5, 8, dtype=np.float32).reshape(2, 4),
    "dense.bias": np.array([0.1, -0.1], dtype=np.float32),
    "steps": np.array(3, dtype=np.int64),
}

WELL_FORMED = ("good", "huge")
"""Kinds that pass validation (a huge norm is for detectors, not validation)."""
DUPLICATE = "duplicate_identity"
"""A well-formed reply under the identity ``peer-1``: of the valid replies naming one
identity only the one with the smallest update digest counts (one vote per identity
and round, whatever the arrival order)."""
MALFORMED = (
    "nan",
    "inf",
    "wrong_shape",
    "wrong_dtype",
    "missing_array",
    "extra_array",
    "no_array_record",
    "two_array_records",
    "no_metric_record",
    "zero_examples",
    "negative_examples",
    "fractional_examples",
    "nan_examples",
    "undecodable",
    "error",
)
HUGE_SCALE = 1e30
"""Noise of a "huge" update: far beyond any honest one, still within float32."""
DOWNWEIGHT_FACTOR = DetectorPanel().downweight_factor


# -------------------------------------------------------------- brute-force rules


@dataclass(frozen=True)
class GoodRound:
    """The good replies of a round, as a reference rule sees them.

    ``deltas`` ``(n, d)`` float64 and ``counts`` ``(n,)`` are rebuilt by the test from
    the generator's seeds; ``verdicts`` are the strategy's own, for the rules whose
    rejections come from the anomaly detectors.
    """

    deltas: np.ndarray
    counts: np.ndarray
    verdicts: tuple[Verdict, ...]


@dataclass(frozen=True)
class Expected:
    """Aggregate delta ``(d,)`` and each good reply's reported weight ``(n,)``."""

    delta: np.ndarray
    weights: np.ndarray


Reference = Callable[[GoodRound], Expected | None]
"""Brute-force rule: ``None`` when it cannot aggregate this round."""


def norm(vector: np.ndarray) -> float:
    return math.sqrt(sum(float(value) ** 2 for value in vector))


def column_median(column: Sequence[float]) -> float:
    ordered = sorted(column)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def coordinate_median(rows: np.ndarray) -> np.ndarray:
    return np.array([column_median(list(column)) for column in rows.T])


def uniform(rows: int) -> np.ndarray:
    return np.full(rows, 1.0 / rows)


def fedavg_reference(good: GoodRound) -> Expected:
    """McMahan et al. (2017): the example-weighted mean, a sum of scaled rows."""
    total = float(sum(good.counts))
    weights = np.array([float(count) / total for count in good.counts])
    delta = sum(
        (weight * row for weight, row in zip(weights, good.deltas, strict=True)),
        np.zeros(good.deltas.shape[1]),
    )
    return Expected(delta, weights)


def median_reference(good: GoodRound) -> Expected:
    """Yin et al. (2018): each coordinate's middle value (mean of the two middle)."""
    return Expected(coordinate_median(good.deltas), uniform(len(good.deltas)))


def trimmed_mean_reference(beta: float) -> Reference:
    """Yin et al. (2018): drop the ⌊βn⌋ smallest and largest of each coordinate."""

    def reference(good: GoodRound) -> Expected:
        n = len(good.deltas)
        trim = math.floor(beta * n + 1e-9)
        delta = np.array(
            [np.mean(sorted(column)[trim : n - trim]) for column in good.deltas.T]
        )
        return Expected(delta, uniform(n))

    return reference


def squared_distance(a: np.ndarray, b: np.ndarray) -> float:
    return sum((float(x) - float(y)) ** 2 for x, y in zip(a, b, strict=True))


TIE = 1e-9
"""Krum scores this close (relatively) are a tie in floating point: when a far
update dominates every score, which of two rows wins depends on summation order."""


def krum_keys(rows: np.ndarray, f: int) -> list[tuple[float, float, int]]:
    """Per row: Krum score (Blanchard et al., 2017), the sum of squared distances to
    the ``n − f − 2`` nearest others (clamped to ``[1, n − 1]``); the total squared
    distance to all others; the position. Sorted, they rank the rows."""
    n = len(rows)
    neighbours = min(n - 1, max(1, n - f - 2))
    keys = []
    for i in range(n):
        others = sorted(squared_distance(rows[i], rows[j]) for j in range(n) if j != i)
        keys.append((sum(others[:neighbours]), sum(others), i))
    return keys


def pick(ranked: list[tuple[float, float, int]], chosen: set[int]) -> int:
    """The first row of ``ranked`` keys, or a row of ``chosen`` (the strategy's
    selection) whose score ties with it."""
    best = ranked[0][2]
    if best in chosen:
        return best
    tied = [
        row
        for score, _, row in ranked
        if row in chosen and score <= ranked[0][0] * (1 + TIE)
    ]
    assert tied, f"row {best} has the best Krum score but was not selected"
    return tied[0]


def selected(good: GoodRound) -> set[int]:
    return {row for row, v in enumerate(good.verdicts) if v is not Verdict.REJECTED}


def multikrum_reference(f: int, m: int) -> Reference:
    """Multi-Krum: the plain mean of the ``m`` best-scored rows (needs n ≥ 2f + 3)."""

    def reference(good: GoodRound) -> Expected | None:
        n = len(good.deltas)
        if n < max(2 * f + 3, m):
            return None
        ranked = sorted(krum_keys(good.deltas, f))
        picked: list[int] = []
        for _ in range(m):
            picked.append(
                pick([k for k in ranked if k[2] not in picked], selected(good))
            )
        weights = np.zeros(n)
        weights[picked] = 1.0 / m
        return Expected(good.deltas[picked].mean(axis=0), weights)

    return reference


def bulyan_reference(f: int) -> Reference:
    """El Mhamdi et al. (2018), Algorithm 1: Krum re-run on the remaining rows picks
    θ = n − 2f; per coordinate, the mean of the θ − 2f picked values closest to
    their median (ties: the earlier pick)."""

    def reference(good: GoodRound) -> Expected | None:
        n = len(good.deltas)
        if n < 4 * f + 3:
            return None
        remaining = list(range(n))
        picked: list[int] = []
        for _ in range(n - 2 * f):
            ranked = sorted(
                (score, total, remaining[row])
                for score, total, row in krum_keys(good.deltas[remaining], f)
            )
            best = pick(ranked, selected(good))
            picked.append(best)
            remaining.remove(best)
        keep = len(picked) - 2 * f
        delta = []
        for column in good.deltas[picked].T:
            centre = column_median(list(column))
            closest = sorted(
                range(len(column)), key=lambda k: (abs(column[k] - centre), k)
            )
            delta.append(np.mean([column[k] for k in closest[:keep]]))
        weights = np.zeros(n)
        weights[picked] = 1.0 / len(picked)
        return Expected(np.array(delta), weights)

    return reference


def geometric_median_reference(nu: float) -> Reference:
    """Smoothed Weiszfeld (Pillutla et al., 2022, Algorithm 2) run to its fixed
    point; weights are each row's share ``1/max(ν, ‖v − x_i‖)``. It starts, as the
    rule does, from the lower coordinate-wise median: the start picks the point when
    the median is not unique (two distinct rows: any point between them)."""

    def reference(good: GoodRound) -> Expected:
        rows = good.deltas
        lower = (len(rows) - 1) // 2
        estimate = np.array([sorted(column)[lower] for column in rows.T])
        for _ in range(10_000):
            inverse = [1.0 / max(nu, norm(estimate - row)) for row in rows]
            step = sum(
                (share * row for share, row in zip(inverse, rows, strict=True)),
                np.zeros(rows.shape[1]),
            ) / sum(inverse)
            moved = norm(step - estimate)
            estimate = step
            if moved <= 1e-13 * max(1.0, norm(estimate)):
                break
        inverse = [1.0 / max(nu, norm(estimate - row)) for row in rows]
        return Expected(estimate, np.array(inverse) / sum(inverse))

    return reference


def clip(vector: np.ndarray, radius: float) -> np.ndarray:
    length = norm(vector)
    return vector if length <= radius else vector * (radius / length)


def centered_clipping_reference(tau: float, iterations: int) -> Reference:
    """Karimireddy et al. (2021), Eq. 2, from the coordinate median (no history)."""

    def reference(good: GoodRound) -> Expected:
        rows = good.deltas
        estimate = coordinate_median(rows)
        for _ in range(iterations):
            estimate = estimate + sum(
                (clip(row - estimate, tau) for row in rows), np.zeros(rows.shape[1])
            ) / len(rows)
        return Expected(estimate, uniform(len(rows)))

    return reference


def detector_factors(verdicts: Sequence[Verdict]) -> np.ndarray:
    return np.array(
        [
            {
                Verdict.ACCEPTED: 1.0,
                Verdict.DOWNWEIGHTED: DOWNWEIGHT_FACTOR,
                Verdict.REJECTED: 0.0,
            }[verdict]
            for verdict in verdicts
        ]
    )


def trusted_reference(
    example_cap: float | None, bound_ratio: float, rule: str
) -> Reference:
    """TrustedFedAvg's combination, given the detectors' verdicts.

    In a first round every identity is new (same tier, all on probation, so the
    probation cap does not bind): weights are ``min(n_i, cap · med n_used) · f_i``
    normalised, ``f_i`` the verdict's factor. ``rule="mean"``: the weighted mean of
    the rows, each first scaled to at most ``bound_ratio`` × the median used norm
    (Sun et al., 2019), weights not renormalised after the scaling. ``rule="median"``:
    the coordinate median of the used rows, each reported with weight ``1/k``.
    """

    def reference(good: GoodRound) -> Expected | None:
        factors = detector_factors(good.verdicts)
        used = factors > 0
        if not used.any():
            return None
        counts = good.counts.astype(np.float64)
        if example_cap is not None:
            limit = example_cap * column_median(list(counts[used]))
            counts = np.array([min(count, limit) for count in counts])
        raw = counts * factors
        weights = raw / raw.sum()
        if rule == "median":
            return Expected(
                coordinate_median(good.deltas[used]), used / float(used.sum())
            )
        norms = [norm(row) for row in good.deltas]
        bound = bound_ratio * column_median([norms[i] for i in np.flatnonzero(used)])
        delta = np.zeros(good.deltas.shape[1])
        for weight, length, row in zip(weights, norms, good.deltas, strict=True):
            scale = 1.0 if bound <= 0 or length <= bound else bound / length
            delta = delta + weight * scale * row
        return Expected(delta, weights)

    return reference


def water_filled(weights: np.ndarray, cap: float) -> np.ndarray:
    """Shares ``min(cap, λ w_i)`` summing to 1 (λ by bisection), or ``cap`` for every
    positive weight when even that cannot reach 1."""
    positive = weights > 0
    if positive.sum() * cap <= 1.0:
        return np.where(positive, cap, 0.0)
    low, high = 0.0, 1.0
    while np.minimum(cap, high * weights).sum() < 1.0:
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2
        if np.minimum(cap, middle * weights).sum() < 1.0:
            low = middle
        else:
            high = middle
    return np.minimum(cap, high * weights)


def fraction_count(n: int, bound: Callable[[int], int], fraction: float = 0.3) -> int:
    """``⌊fraction · n⌋`` capped by ``bound(n)`` (and at least 0), by hand."""
    return max(0, min(math.floor(fraction * n + 1e-9), n - 1, bound(n)))


def multikrum_from_fraction_reference(good: GoodRound) -> Expected | None:
    """Default Multi-Krum: ``f = ⌊0.3 n⌋`` capped at ``n > 2f + 2``, ``m = n − f``."""
    n = len(good.deltas)
    f = fraction_count(n, lambda rows: (rows - 3) // 2)
    return multikrum_reference(f, max(1, n - f))(good)


def brute_force_mixing(rows: np.ndarray, f: int) -> np.ndarray:
    """NNM (Allouah et al. 2023): row ``i`` of ``M`` is ``1/(n − f)`` on the
    ``n − f`` rows nearest to ``x_i`` (distance, then index)."""
    n = len(rows)
    mixing = np.zeros((n, n))
    for i in range(n):
        order = sorted(range(n), key=lambda j: (squared_distance(rows[i], rows[j]), j))
        mixing[i, order[: n - f]] = 1.0 / (n - f)
    return mixing


def brute_force_caf(rows: np.ndarray, f: int) -> np.ndarray:
    """CAF (Allouah, Guerraoui & Stephan 2025) in ``d``-space: the weights ``c/Σc``
    of the iterate with the smallest top eigenvalue of the weighted covariance."""
    n = len(rows)
    c = np.ones(n)
    best, best_value = c / n, math.inf
    while c.sum() > n - 2 * f:
        p = c / c.sum()
        diffs = rows - p @ rows
        values, vectors = np.linalg.eigh((p[:, None] * diffs).T @ diffs)
        if values[-1] < best_value:
            best, best_value = p, values[-1]
        if values[-1] <= 0:
            break
        tau = (diffs @ vectors[:, -1]) ** 2
        c = c * (1 - tau / tau[c > 0].max())
    return best


def capped_water_filled(caps: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """``min(caps_i, λ wanted_i)`` summing to 1 (λ by bisection), or the caps of
    every wanted row when even they cannot reach 1."""
    live = wanted > 0
    if caps[live].sum() <= 1.0:
        return np.where(live, caps, 0.0)
    low, high = 0.0, 1.0
    while np.minimum(caps, high * wanted).sum() < 1.0:
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2
        if np.minimum(caps, middle * wanted).sum() < 1.0:
            low = middle
        else:
            high = middle
    return np.minimum(caps, high * wanted)


def trusted_robust_reference(
    example_cap: float, fraction: float, certified: bool = True
) -> Reference:
    """TrustedFedAvg's default in a first round, given the detectors' verdicts:
    reputation weights ``ρ`` as in :func:`trusted_reference` but with every kept
    row's factor 1 (down-weighted rows are not tilted against); robust weights
    ``π`` of the certified filter (``f = ⌊β k⌋`` of the ``k`` used rows, threshold 4,
    :func:`helpers_robust.brute_force_certified`), or with ``certified=False``
    ``π = Mᵀ p`` of the former stage (NNM then CAF with the same ``f``); final
    ``min(π_i / (1 − β), λ π_i ρ_i)`` summing to 1 (all newcomers: no cap binds)."""

    def reference(good: GoodRound) -> Expected | None:
        factors = detector_factors(good.verdicts)
        used = np.flatnonzero(factors > 0)
        if used.size == 0:
            return None
        counts = good.counts.astype(np.float64)
        limit = example_cap * column_median(list(counts[used]))
        # In front of the stage a verdict counts as kept or not, never as a tilt.
        rho = np.array([min(count, limit) for count in counts]) * (factors > 0)
        rows = good.deltas[used]
        f = fraction_count(len(rows), lambda k: (k - 1) // 2, fraction)
        if certified:
            robust = brute_force_certified(rows, f, 4.0)
        else:
            mixing = brute_force_mixing(rows, f)
            robust = mixing.T @ brute_force_caf(mixing @ rows, f)
        inside = capped_water_filled(robust / (1 - fraction), robust * rho[used])
        weights = np.zeros(len(good.deltas))
        weights[used] = inside
        return Expected(inside @ rows, weights)

    return reference


def nnm_median_reference(good: GoodRound) -> Expected:
    """NNM with ``f = ⌊0.3 n⌋`` (capped at ``n > 2f``), then the coordinate median."""
    n = len(good.deltas)
    mixing = brute_force_mixing(good.deltas, fraction_count(n, lambda k: (k - 1) // 2))
    return Expected(coordinate_median(mixing @ good.deltas), uniform(n))


def central_dp_reference(clip_norm: float, max_share: float) -> Reference:
    """DP-FedAvg without noise (McMahan et al., 2018): rows clipped to ``C``, example
    weights capped at ``w_max`` by water-filling, shares not renormalised."""

    def reference(good: GoodRound) -> Expected:
        shares = water_filled(good.counts / float(good.counts.sum()), max_share)
        delta = np.zeros(good.deltas.shape[1])
        for share, row in zip(shares, good.deltas, strict=True):
            delta = delta + share * clip(row, clip_norm)
        return Expected(delta, shares / shares.sum())

    return reference


# ----------------------------------------------------------------- the strategies


@dataclass(frozen=True)
class FuzzCase:
    """A strategy under fuzzing and what its rounds must satisfy.

    Attributes
    ----------
    make_strategy : Callable[[], ScreenedFedAvg | CentralDP]
        A fresh strategy (each round is a first round).
    reference : Reference | None
        Brute-force rule; ``None`` (noisy DP) checks only that the model is finite.
    tolerance : float
        Relative to the largest expected value of an array (final models are
        float32: a few ulps absorb float64 summation order).
    rejects_huge_minority : bool
        The norm detector must reject huge rows whenever they are fewer than half of
        the good rows (robust z-score of the norms; Iglewicz & Hoaglin, 1993).
    """

    make_strategy: Callable[[], ScreenedFedAvg | CentralDP]
    reference: Reference | None
    tolerance: float = 1e-6
    rejects_huge_minority: bool = False


FUZZED: dict[str, FuzzCase] = {
    "ScreenedFedAvg": FuzzCase(ScreenedFedAvg, fedavg_reference),
    "Median": FuzzCase(Median, median_reference),
    "RobustRuleFedAvg(CoordinateMedian)": FuzzCase(
        lambda: RobustRuleFedAvg(rule=aggregators.CoordinateMedian()),
        median_reference,
    ),
    "TrimmedMean": FuzzCase(lambda: TrimmedMean(beta=0.2), trimmed_mean_reference(0.2)),
    "Krum": FuzzCase(
        lambda: Krum(num_malicious_nodes=1), multikrum_reference(f=1, m=1)
    ),
    "MultiKrum": FuzzCase(
        lambda: MultiKrum(num_malicious_nodes=1, num_nodes_to_select=2),
        multikrum_reference(f=1, m=2),
    ),
    "Bulyan": FuzzCase(lambda: Bulyan(num_malicious_nodes=1), bulyan_reference(f=1)),
    # Run to convergence, so that the fixed point, not the stopping rule, is tested.
    "GeometricMedian": FuzzCase(
        lambda: GeometricMedian(nu=1e-6, max_iterations=10_000, tolerance=0.0),
        geometric_median_reference(nu=1e-6),
    ),
    "CenteredClipping": FuzzCase(
        lambda: CenteredClipping(tau=1.0, iterations=2),
        centered_clipping_reference(tau=1.0, iterations=2),
    ),
    "TrustedFedAvg": FuzzCase(
        lambda: TrustedFedAvg(sketch_seed=0),
        trusted_robust_reference(example_cap=2.0, fraction=0.3),
        rejects_huge_minority=True,
    ),
    "TrustedFedAvg(robust_rule=RobustStage)": FuzzCase(
        lambda: TrustedFedAvg(robust_rule=RobustStage(0.3), sketch_seed=0),
        trusted_robust_reference(example_cap=2.0, fraction=0.3, certified=False),
        rejects_huge_minority=True,
    ),
    "TrustedFedAvg(robust_rule=mean)": FuzzCase(
        lambda: TrustedFedAvg(robust_rule="mean", sketch_seed=0),
        trusted_reference(example_cap=2.0, bound_ratio=2.0, rule="mean"),
        rejects_huge_minority=True,
    ),
    "MultiKrum, f from byzantine_fraction": FuzzCase(
        MultiKrum, multikrum_from_fraction_reference
    ),
    "RobustRuleFedAvg(CoordinateMedian, NNM)": FuzzCase(
        lambda: RobustRuleFedAvg(
            rule=aggregators.CoordinateMedian(),
            preaggregator=NearestNeighbourMixing(),
        ),
        nnm_median_reference,
    ),
    "TrustedMedianFedAvg": FuzzCase(
        TrustedMedianFedAvg,
        trusted_reference(example_cap=2.0, bound_ratio=2.0, rule="median"),
        rejects_huge_minority=True,
    ),
    "DetectorsOnlyFedAvg": FuzzCase(
        DetectorsOnlyFedAvg,
        trusted_reference(example_cap=None, bound_ratio=2.0, rule="mean"),
        rejects_huge_minority=True,
    ),
    "CentralDP(ScreenedFedAvg), no noise": FuzzCase(
        lambda: CentralDP(
            ScreenedFedAvg(), noise_multiplier=0.0, clip_norm=0.3, max_share=0.4
        ),
        central_dp_reference(clip_norm=0.3, max_share=0.4),
    ),
    "CentralDP(TrustedFedAvg), noisy": FuzzCase(
        lambda: CentralDP(
            TrustedFedAvg(sketch_seed=0),
            noise_multiplier=1.0,
            clip_norm=0.3,
            max_share=0.4,
            seed=7,
        ),
        None,
    ),
}


# ------------------------------------------------------------- building replies


def perturbed(seed: int, scale: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    model = {name: value.copy() for name, value in REFERENCE.items()}
    for name in ("dense.weight", "dense.bias"):
        noise = scale * rng.standard_normal(model[name].shape)
        model[name] = (model[name] + noise).astype(np.float32)
    model["steps"] = np.array(3 + seed % 5, dtype=np.int64)
    return model


def scale_of(kind: str) -> float:
    return HUGE_SCALE if kind == "huge" else 0.1


def identity_of(kind: str, node_id: int) -> str:
    """The identity a reply states (an error reply states none: Flower's node id)."""
    if kind == "error":
        return f"node-{node_id}"
    return "peer-1" if kind == DUPLICATE else f"peer-{node_id}"


def build_reply(kind: str, examples: int, seed: int, node_id: int) -> Message:
    """One reply of the given kind from node ``node_id``."""
    identity = identity_of(kind, node_id)
    model = perturbed(seed, scale_of(kind))
    count: float = examples
    metrics = {"loss": float(seed % 7)}
    if kind == "nan":
        model["dense.weight"][seed % 2, seed % 4] = np.nan
    elif kind == "inf":
        model["dense.bias"][seed % 2] = -np.inf
    elif kind == "wrong_shape":
        model["dense.weight"] = model["dense.weight"].reshape(4, 2)
    elif kind == "wrong_dtype":
        model["dense.bias"] = model["dense.bias"].astype(np.float64)
    elif kind == "missing_array":
        del model["dense.bias"]
    elif kind == "extra_array":
        model["hidden"] = np.zeros(3, dtype=np.float32)
    elif kind == "zero_examples":
        count = 0
    elif kind == "negative_examples":
        count = -examples
    elif kind == "fractional_examples":
        count = examples + 0.5
    elif kind == "nan_examples":
        count = float("nan")
    elif kind == "error":
        return make_error_reply(node_id, "fuzzed failure")
    reply = make_train_reply(model, count, node_id, identity, metrics)
    records = dict(reply.content.items())
    if kind == "no_array_record":
        del records[ARRAYS_KEY]
    elif kind == "two_array_records":
        records["copy"] = arrays_to_record(model)
    elif kind == "no_metric_record":
        del records[METRICS_KEY]
    elif kind == "undecodable":
        arrays = dict(arrays_to_record(model).items())
        arrays["dense.bias"] = Array("float32", (2,), "numpy.ndarray", b"\x93NUMPY?")
        records[ARRAYS_KEY] = ArrayRecord(arrays)
    else:
        return reply
    return make_reply(RecordDict(records), node_id)


Spec = list[tuple[str, int, int]]
"""Per reply: kind, claimed examples, seed."""

round_specs = st.lists(
    st.tuples(
        st.sampled_from((*WELL_FORMED, DUPLICATE, *MALFORMED)),
        st.integers(min_value=1, max_value=10_000),
        st.integers(min_value=0, max_value=2**31),
    ),
    min_size=1,
    max_size=12,
)


def good_rows(spec: Spec) -> list[int]:
    """Positions of the replies that must be aggregated: well-formed, and of the
    valid replies of their identity the one with the smallest update digest (the
    first of equal ones)."""
    kept: dict[str, tuple[str, int]] = {}
    for index, (kind, _, seed) in enumerate(spec):
        if kind in MALFORMED:
            continue
        identity = identity_of(kind, index + 1)
        candidate = (update_sha256(perturbed(seed, scale_of(kind))), index)
        kept[identity] = min(kept.get(identity, candidate), candidate)
    return sorted(index for _, index in kept.values())


# ---------------------------------------------------------------------- checks


def array_bytes(replies: list[Message]) -> list[dict[str, dict[str, bytes]]]:
    """Everything an in-place change to a reply's arrays would alter."""
    return [
        {
            key: {name: array.data for name, array in record.items()}
            for key, record in reply.content.array_records.items()
        }
        if reply.has_content()
        else {}
        for reply in replies
    ]


def run_round(
    case: FuzzCase, replies: list[Message]
) -> tuple[dict[str, np.ndarray] | None, MetricRecord | None, RoundReport]:
    store = InMemoryStore()
    strategy = case.make_strategy()
    # A wrapper reads through to the strategy it holds, but writes stay its own.
    screened = strategy.strategy if isinstance(strategy, CentralDP) else strategy
    screened.recorder = store
    strategy.set_reference(REFERENCE)
    arrays, metrics = strategy.aggregate_train(1, replies)
    (report,) = store.rounds
    model = None if arrays is None else {k: a.numpy() for k, a in arrays.items()}
    return model, metrics, report


def good_round(spec: Spec, rows: list[int], report: RoundReport) -> GoodRound:
    """The good replies' deltas, rebuilt from their seeds (not read from replies)."""
    origin = np.concatenate(
        [value.astype(np.float64).ravel() for value in REFERENCE.values()]
    )
    deltas = np.array(
        [
            np.concatenate(
                [
                    value.astype(np.float64).ravel()
                    for value in perturbed(
                        spec[row][2], scale_of(spec[row][0])
                    ).values()
                ]
            )
            - origin
            for row in rows
        ]
    ).reshape(len(rows), origin.size)
    counts = np.array([spec[row][1] for row in rows], dtype=np.int64)
    verdicts = tuple(report.contributions[row].verdict for row in rows)
    return GoodRound(deltas, counts, verdicts)


def assert_model(
    model: dict[str, np.ndarray], delta: np.ndarray, tolerance: float
) -> None:
    """``model`` is reference + ``delta`` (float arrays within ``tolerance`` relative
    to the array's largest value, integer arrays a nearest integer)."""
    offset = 0
    assert list(model) == list(REFERENCE)
    for name, like in REFERENCE.items():
        values = like.astype(np.float64).ravel() + delta[offset : offset + like.size]
        values = values.reshape(like.shape)
        offset += like.size
        result = model[name]
        assert result.dtype == like.dtype and result.shape == like.shape, name
        scale = max(1.0, float(np.max(np.abs(values))))
        if like.dtype.kind == "i":
            assert np.all(np.abs(result - values) <= 0.5 + tolerance * scale), name
        else:
            np.testing.assert_allclose(
                result, values, rtol=tolerance, atol=tolerance * scale, err_msg=name
            )


def check_round(case: FuzzCase, spec: Spec) -> None:
    replies = [
        build_reply(kind, examples, seed, node_id=index + 1)
        for index, (kind, examples, seed) in enumerate(spec)
    ]
    before = array_bytes(replies)
    model, metrics, report = run_round(case, replies)
    assert array_bytes(replies) == before, "a reply was mutated"

    # Every reply reported, in order, under its identity; the ones that must not
    # count are rejected with a reason.
    rows = good_rows(spec)
    contributions = report.contributions
    assert [c.identity for c in contributions] == [
        identity_of(kind, index + 1) for index, (kind, _, _) in enumerate(spec)
    ]
    for index, contribution in enumerate(contributions):
        if index not in rows:
            assert contribution.verdict is Verdict.REJECTED, spec[index][0]
            assert contribution.weight == 0.0 and contribution.reason

    # The round of the good replies alone: the bad ones changed nothing at all.
    alone_model, alone_metrics, alone_report = run_round(
        case, [replies[row] for row in rows]
    )
    assert alone_report.contributions == tuple(contributions[row] for row in rows)
    assert alone_report.aggregate_sha256 == report.aggregate_sha256
    assert (model is None) == (alone_model is None)
    if model is not None and alone_model is not None:
        for name, value in model.items():
            assert value.tobytes() == alone_model[name].tobytes(), name
        assert dict(metrics or {}) == dict(alone_metrics or {})
    if not rows:
        assert model is None and metrics is None
        return

    good = good_round(spec, rows, report)
    if case.rejects_huge_minority:
        huge = [spec[row][0] == "huge" for row in rows]
        if 2 * sum(huge) < len(rows):
            for row, is_huge in zip(rows, huge, strict=True):
                if is_huge:
                    assert contributions[row].verdict is Verdict.REJECTED
    if case.reference is None:
        if model is not None:
            assert all(np.all(np.isfinite(value)) for value in model.values())
            assert abs(sum(c.weight for c in contributions) - 1.0) < 1e-9
        return

    expected = case.reference(good)
    if expected is None:
        assert model is None and metrics is None
        assert report.aggregate_sha256 is None
        assert all(contributions[row].weight == 0.0 for row in rows)
        return
    assert model is not None and metrics is not None
    assert_model(model, expected.delta, case.tolerance)
    for row, weight in zip(rows, expected.weights, strict=True):
        contribution = contributions[row]
        assert contribution.weight == pytest.approx(weight, rel=1e-6, abs=1e-9)
        # A rejected row has no weight; an accepted one may have none too, when the
        # robust stage filters it out.
        assert contribution.verdict is not Verdict.REJECTED or weight == 0.0
    assert abs(sum(c.weight for c in contributions) - 1.0) < 1e-9


@pytest.mark.parametrize(
    "max_examples",
    [
        DEFAULT_EXAMPLES,
        # 10,000 rounds take minutes on a loaded machine: above setup.cfg's 600 s.
        pytest.param(
            SLOW_EXAMPLES, marks=[pytest.mark.slow, pytest.mark.timeout(3600)]
        ),
    ],
)
@pytest.mark.parametrize("name", sorted(FUZZED))
def test_malformed_replies_never_abort_and_good_ones_aggregate(
    name: str, max_examples: int
) -> None:
    case = FUZZED[name]

    @settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=max_examples <= 1_000,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(spec=round_specs)
    def fuzz(spec: Spec) -> None:
        rounds.append(len(spec))
        check_round(case, spec)

    rounds: list[int] = []
    fuzz()
    # Hypothesis may stop early (e.g. an exhausted search space): prove it did not.
    assert len(rounds) >= max_examples
    print(f"{name}: {len(rounds)} rounds, {sum(rounds)} replies")


def test_every_exported_strategy_is_fuzzed() -> None:
    """Each strategy class in ``strategies.__all__`` (and the DP wrapper) has a case."""
    fuzzed = [case.make_strategy() for case in FUZZED.values()]
    exported = [
        value
        for value in (getattr(strategies, name) for name in strategies.__all__)
        if isinstance(value, type)
        and (issubclass(value, ScreenedFedAvg) or value is CentralDP)
    ]
    assert CentralDP in exported
    for cls in exported:
        if cls is CentralDP:
            assert any(isinstance(strategy, CentralDP) for strategy in fuzzed)
        else:
            assert any(type(strategy) is cls for strategy in fuzzed), cls.__name__


def test_generator_covers_every_kind() -> None:
    """Each kind builds, and validation rejects exactly the malformed ones."""
    for kind in (*WELL_FORMED, *MALFORMED):
        store = InMemoryStore()
        strategy = ScreenedFedAvg(recorder=store)
        strategy.set_reference(REFERENCE)
        strategy.aggregate_train(1, [build_reply(kind, 5, 11, node_id=1)])
        (contribution,) = store.rounds[0].contributions
        assert (contribution.verdict is Verdict.REJECTED) == (kind in MALFORMED), kind


def test_second_reply_of_an_identity_is_rejected() -> None:
    """Of the valid replies naming one identity, the smallest update digest counts,
    whichever arrived first; the others are rejected as duplicates."""
    spec: Spec = [("good", 5, 1), (DUPLICATE, 5, 2), ("nan", 5, 3), (DUPLICATE, 5, 4)]
    digests = {i: update_sha256(perturbed(spec[i][2], 0.1)) for i in (0, 1, 3)}
    kept = min(digests, key=digests.__getitem__)
    assert good_rows(spec) == [kept]
    assert good_rows([("nan", 5, 1), (DUPLICATE, 5, 2), (DUPLICATE, 5, 3)]) == [
        min((1, 2), key=lambda i: update_sha256(perturbed(i + 1, 0.1)))
    ]
    replies = [
        build_reply(kind, n, seed, i + 1) for i, (kind, n, seed) in enumerate(spec)
    ]
    for arrival in (replies, replies[::-1]):
        store = InMemoryStore()
        strategy = ScreenedFedAvg(recorder=store)
        strategy.set_reference(REFERENCE)
        strategy.aggregate_train(1, arrival)
        by_node = {c.node_id: c for c in store.rounds[0].contributions}
        for index in range(len(spec)):
            contribution = by_node[index + 1]
            if index == kept:
                assert contribution.verdict is Verdict.ACCEPTED
            else:
                assert contribution.verdict is Verdict.REJECTED
                if index in digests:
                    assert "duplicate identity" in contribution.reason


def test_metric_record_kind_is_checked_separately() -> None:
    """A reply whose only MetricRecord lacks the count is malformed too."""
    reply = make_reply(
        RecordDict(
            {
                ARRAYS_KEY: arrays_to_record(perturbed(1, 0.1)),
                METRICS_KEY: MetricRecord({"loss": 1.0}),
            }
        ),
        node_id=4,
    )
    store = InMemoryStore()
    strategy = ScreenedFedAvg(recorder=store)
    strategy.set_reference(REFERENCE)
    assert strategy.aggregate_train(1, [reply]) == (None, None)
    assert "missing metric" in store.rounds[0].contributions[0].reason


# --------------------------------------------- regressions the fuzzing turned up


def test_one_huge_reply_does_not_drag_the_geometric_median() -> None:
    """Two equal updates and a third at 1e30: the median is the pair.

    Falsifying example of the fuzz test: Weiszfeld started from the mean and stopped
    on a relative change of the objective, which the far update dominates, so the
    "median" was left 1e14 away from the pair (1e24 with the default settings).
    """
    spec: Spec = [("good", 1, 0), ("good", 1, 0), ("huge", 1, 0)]
    replies = [
        build_reply(kind, n, seed, i + 1) for i, (kind, n, seed) in enumerate(spec)
    ]
    model, _, _ = run_round(FuzzCase(GeometricMedian, None), replies)
    assert model is not None
    for name, value in perturbed(0, 0.1).items():
        np.testing.assert_allclose(model[name], value, atol=1e-5)


def test_one_huge_reply_does_not_get_honest_replies_rejected() -> None:
    """One reply of norm 1e10 among eight honest ones: only it is rejected.

    The detectors' geometric-median centre had the same flaw as the rule: it stopped
    several units towards the far row (honest norms: 0.3), every honest residual then
    pointed away from it, and :class:`~strategies.detection.Collusion` rejected all
    eight honest rows.
    """
    rng = np.random.default_rng(0)
    common = 0.1 * rng.standard_normal(10)
    deltas = [common + 0.05 * rng.standard_normal(10) for _ in range(8)]
    deltas.append(1e10 * rng.standard_normal(10))
    replies = []
    for node, delta in enumerate(deltas, start=1):
        model = dict(REFERENCE)  # the integer step counter stays as it is
        model["dense.weight"] = (
            model["dense.weight"] + delta[:8].reshape(2, 4)
        ).astype(np.float32)
        model["dense.bias"] = (model["dense.bias"] + delta[8:]).astype(np.float32)
        replies.append(make_train_reply(model, 10, node, f"peer-{node}"))
    _, _, report = run_round(
        FuzzCase(lambda: TrustedFedAvg(sketch_seed=0), None), replies
    )
    verdicts = [contribution.verdict for contribution in report.contributions]
    assert verdicts[-1] is Verdict.REJECTED
    assert Verdict.REJECTED not in verdicts[:-1], [
        c.reason for c in report.contributions
    ]


def test_a_spurious_decoder_error_does_not_reject_a_valid_reply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CPython 3.11's AST recursion check misfires when threads parse at once.

    The fuzz test saw a valid reply rejected as "cannot be decoded": ``np.load``
    parses the ``.npy`` header with ``ast.literal_eval``, which raised ``SystemError:
    AST constructor recursion depth mismatch`` (python/cpython#106905) while another
    reply was decoded on another thread. Here the first decode of every array fails
    that way; the replies must still be accepted, and a real decoding error still
    rejected.
    """
    spec: Spec = [("good", 5, 1), ("good", 7, 2), ("undecodable", 5, 3)]
    replies = [
        build_reply(kind, n, seed, i + 1) for i, (kind, n, seed) in enumerate(spec)
    ]
    sent = {
        id(array)
        for reply in replies
        for record in reply.content.array_records.values()
        for array in record.values()
    }
    decode = Array.numpy

    def misfiring(array: Array) -> np.ndarray:
        if id(array) in sent:
            sent.discard(id(array))
            raise SystemError("AST constructor recursion depth mismatch (before=48)")
        return decode(array)

    monkeypatch.setattr(Array, "numpy", misfiring)
    _, _, report = run_round(FUZZED["ScreenedFedAvg"], replies)
    verdicts = [contribution.verdict for contribution in report.contributions]
    assert verdicts == [Verdict.ACCEPTED, Verdict.ACCEPTED, Verdict.REJECTED]
    assert "cannot be decoded (ValueError" in report.contributions[2].reason
