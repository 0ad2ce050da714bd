"""User-level central differential privacy: DP-FedAvg at a trusted aggregator.

Each accepted update is clipped to L2 norm ``C`` (fixed, or adapted towards a quantile
of the update norms as in Andrew et al. 2021), the clipped updates are combined with
weights whose shares are capped at ``w_max``, and Gaussian noise calibrated to the
sensitivity of that weighted mean is added (McMahan et al. 2018, "Learning
Differentially Private Recurrent Language Models"). ε(δ) across rounds comes from
Opacus' RDP accountant with the client sampling rate.

Sensitivity of the weighted mean
--------------------------------
With shares ``w_i ≥ 0``, ``Σ w_i = 1``, ``w_i ≤ w_max`` and ``‖x_i‖ ≤ C``:

* replacing client ``j``'s update changes ``A = Σ w_i x_i`` by
  ``w_j ‖x_j − x_j'‖ ≤ 2 w_max C``;
* removing client ``j`` (the other shares renormalised) gives
  ``A − A' = w_j (x_j − A')`` and, ``A'`` being a convex combination of clipped
  updates, ``‖A − A'‖ ≤ 2 w_max C``.

So ``S = 2 · w_max · C`` and the noise is ``N(0, (z · S)² I)`` with noise multiplier
``z``. Uncapped reputation weights would let one heavily weighted client dominate the
aggregate and the noise would have to grow with its share: capping is what keeps
``S`` small and known in advance.

What is claimed
---------------
The weights (claimed example counts, reputation) are treated as public inputs, not
as the protected data, and the anomaly filter's accept/reject decisions depend on
the updates themselves: those decisions are *not* privatised here. The guarantee is
therefore for the released aggregate given the set of accepted clients; see the
privacy section of the README for what that does and does not cover.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from logging import INFO
from typing import Any, overload

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.supercore import log

from strategies.aggregators import weighted_sum
from strategies.base import AggregationOutcome, ScreenedFedAvg, UpdateBatch
from strategies.delta_matrix import DeltaMatrix, Deltas
from strategies.wrapping import StrategyWrapper


@overload
def clip_rows(
    deltas: DeltaMatrix, clip_norm: float
) -> tuple[DeltaMatrix, np.ndarray]: ...


@overload
def clip_rows(
    deltas: np.ndarray, clip_norm: float
) -> tuple[np.ndarray, np.ndarray]: ...


def clip_rows(deltas: Deltas, clip_norm: float) -> tuple[Deltas, np.ndarray]:
    """Scale each row to L2 norm at most ``clip_norm``: x · min(1, C / ‖x‖).

    Returns the clipped rows and the original norms (the input is not modified). A
    :class:`~strategies.delta_matrix.DeltaMatrix` is clipped lazily (its rows
    scaled when read), so no clipped copy of the batch is ever held.
    """
    if clip_norm <= 0:
        raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
    if isinstance(deltas, DeltaMatrix):
        norms = deltas.row_norms()
    else:
        norms = np.linalg.norm(deltas, axis=1)
    scale = np.minimum(1.0, clip_norm / np.maximum(norms, np.finfo(np.float64).tiny))
    if isinstance(deltas, DeltaMatrix):
        return deltas.scaled(scale), norms
    return deltas * scale[:, None], norms


def cap_shares(weights: np.ndarray, max_share: float) -> np.ndarray:
    """Renormalise non-negative ``weights`` to sum 1 with no share above ``max_share``.

    Water-filling: capped entries sit at ``max_share`` and the rest keep their
    proportions. When ``k`` positive entries cannot carry the total
    (``k · max_share < 1``), every positive entry gets ``max_share`` and the shares
    sum to less than 1 — the aggregate shrinks rather than the cap being broken.
    """
    if not 0 < max_share <= 1:
        raise ValueError(f"max_share must lie in (0, 1], got {max_share}")
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite and non-negative")
    positive = w > 0
    if positive.sum() * max_share <= 1.0:
        return np.where(positive, max_share, 0.0)
    shares = w / w.sum()
    capped = np.zeros_like(shares, dtype=bool)
    while True:
        free_mass = 1.0 - max_share * capped.sum()
        free = ~capped & positive
        shares = np.where(capped, max_share, shares)
        shares[free] = w[free] / w[free].sum() * free_mass
        over = free & (shares > max_share)
        if not over.any():
            return shares
        capped |= over


def weighted_mean_sensitivity(max_share: float, clip_norm: float) -> float:
    """L2 sensitivity of a capped-share weighted mean of clipped updates: 2·w_max·C."""
    return 2.0 * max_share * clip_norm


@dataclass
class AdaptiveClipNorm:
    """Quantile-tracking clip norm (Andrew, Thakkar, McMahan & Ramaswamy 2021).

    After each round ``C ← C · exp(−η (b̃ − γ))``, where ``b̃`` is the noisy fraction
    of updates whose norm was at most ``C`` (noise std ``count_noise / n``) and ``γ``
    the target quantile: ``C`` grows while fewer than ``γ`` of the updates fit.
    """

    clip_norm: float
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise: float = 0.0

    def update(self, norms: np.ndarray, rng: np.random.Generator) -> float:
        """Move ``clip_norm`` after a round with these update norms; return it."""
        if len(norms) == 0:
            return self.clip_norm
        below = float(np.sum(norms <= self.clip_norm))
        noisy = (below + rng.normal(0.0, self.count_noise)) / len(norms)
        self.clip_norm *= math.exp(-self.learning_rate * (noisy - self.target_quantile))
        return self.clip_norm


@dataclass
class CentralPrivacyAccountant:
    """ε(δ) of the released aggregates over rounds (Opacus RDP accountant).

    Each round is one Gaussian mechanism with noise multiplier ``z`` on a client
    sample drawn with rate ``sample_rate`` (Flower's ``fraction_train``).
    """

    noise_multiplier: float
    sample_rate: float
    delta: float
    mechanism: str = "rdp"
    accountant: Any = field(init=False)

    def __post_init__(self) -> None:
        # Opacus (and the torch.distributed it pulls in) costs seconds to import:
        # only strategies that use DP pay for it.
        from opacus.accountants.registry import create_accountant

        self.accountant = create_accountant(self.mechanism)

    def step(self) -> None:
        """Account for one released aggregate."""
        self.accountant.step(
            noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate
        )

    @property
    def epsilon(self) -> float:
        """ε spent so far at ``delta`` (0 before the first round)."""
        if not self.accountant.history:
            return 0.0
        return float(self.accountant.get_epsilon(delta=self.delta))


def combined_noise_multiplier(update_noise: float, count_noise: float) -> float:
    """z of the one Gaussian mechanism a round releases with adaptive clipping.

    The round releases the noisy aggregate (multiplier ``update_noise``) and the noisy
    count of updates within the clip norm (std ``count_noise``, sensitivity 1); RDP
    adds over the two, ``α / 2z²`` each, so together they are one Gaussian with
    ``z = (z_Δ⁻² + σ_b⁻²)^(-1/2)`` (Andrew et al. 2021, Theorem 1).
    """
    if update_noise == 0.0 or count_noise == 0.0:
        return 0.0
    return float((update_noise**-2 + count_noise**-2) ** -0.5)


def update_noise_multiplier_for(total_noise: float, count_noise: float) -> float:
    """The aggregate's z that, with the count's noise, spends a total ``total_noise``.

    Raises
    ------
    ValueError
        If ``count_noise`` is not above ``total_noise`` (the count alone would spend
        more than the whole budget).
    """
    if count_noise <= total_noise:
        raise ValueError(
            f"clip_count_noise {count_noise:g} must exceed the planned noise "
            f"multiplier {total_noise:g} (the count alone would spend the budget)"
        )
    return float((total_noise**-2 - count_noise**-2) ** -0.5)


def noise_multiplier_for(
    target_epsilon: float, delta: float, sample_rate: float, rounds: int
) -> float:
    """The z that spends ``target_epsilon`` over ``rounds`` rounds (RDP)."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=rounds,
            accountant="rdp",
        )
    )


class CentralDP(StrategyWrapper):
    """Makes a :class:`ScreenedFedAvg` strategy user-level private by holding it.

    ``CentralDP(TrustedFedAvg(...), noise_multiplier=1.0)``, as Flower's
    ``DifferentialPrivacyServerSideFixedClipping(strategy, ...)`` holds its strategy.
    The held strategy still validates, decides verdicts and weights — on the
    *clipped* updates — and reports the round; this wrapper replaces its combination
    by the capped-share weighted mean plus calibrated Gaussian noise (see the module
    docstring for the sensitivity). Everything else (sampling, evaluation, the
    recorder, reputations) is the held strategy's, readable through this object.

    Parameters
    ----------
    strategy : ScreenedFedAvg
        The strategy made private (not already a :class:`CentralDP`).
    noise_multiplier : float
        ``z``: noise std divided by the sensitivity.
    clip_norm : float
        Initial (or fixed) L2 clip norm ``C``.
    max_share : float
        ``w_max``: the largest share one client may have in the aggregate.
    delta : float
        δ of the reported ε(δ).
    adaptive_clipping : bool
        Track the ``target_quantile`` of update norms (Andrew et al. 2021).
    target_quantile, clip_learning_rate, clip_count_noise : float
        Parameters of :class:`AdaptiveClipNorm`. With adaptive clipping the clip norm
        is released too, so ``clip_count_noise`` must be positive and the accountant
        counts both noises (:func:`combined_noise_multiplier`).
    seed : int | None
        Seed of the noise (``None``: fresh OS entropy, what a deployment wants).
    """

    strategy: ScreenedFedAvg

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        strategy: ScreenedFedAvg,
        noise_multiplier: float = 1.0,
        clip_norm: float = 1.0,
        max_share: float = 0.1,
        delta: float = 1e-5,
        adaptive_clipping: bool = False,
        target_quantile: float = 0.5,
        clip_learning_rate: float = 0.2,
        clip_count_noise: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if not isinstance(strategy, ScreenedFedAvg):
            raise TypeError(
                "CentralDP holds an flp2p strategy (a ScreenedFedAvg), not "
                f"{type(strategy).__name__}"
            )
        super().__init__(strategy)
        if noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be ≥ 0, got {noise_multiplier}")
        if not 0 < max_share <= 1:
            raise ValueError(f"max_share must lie in (0, 1], got {max_share}")
        if adaptive_clipping and clip_count_noise <= 0:
            # A noiseless count would publish each round's clip norm unaccounted.
            raise ValueError(
                "adaptive clipping needs clip_count_noise > 0 (the clip norm it "
                "releases must be private too)"
            )
        self.noise_multiplier = noise_multiplier
        self.max_share = max_share
        self.clipping = AdaptiveClipNorm(
            clip_norm,
            target_quantile,
            clip_learning_rate if adaptive_clipping else 0.0,
            clip_count_noise,
        )
        self.privacy_accountant = CentralPrivacyAccountant(
            combined_noise_multiplier(noise_multiplier, clip_count_noise)
            if adaptive_clipping
            else noise_multiplier,
            min(1.0, strategy.fraction_train),
            delta,
        )
        self.rng = np.random.default_rng(seed)
        self.last_sensitivity = 0.0

    @property
    def epsilon(self) -> float:
        """ε(δ) spent by the aggregates released so far."""
        return self.privacy_accountant.epsilon

    @property
    def delta(self) -> float:
        """δ of :attr:`epsilon`."""
        return self.privacy_accountant.delta

    def summary(self) -> None:
        """Log the DP settings, then the held strategy's summary."""
        log(INFO, "\t├──> Central DP (user level):")
        log(INFO, "\t│\t├── Noise multiplier: %g", self.noise_multiplier)
        log(INFO, "\t│\t├── Clip norm: %g", self.clipping.clip_norm)
        log(INFO, "\t│\t└── Largest share: %g", self.max_share)
        super().summary()

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The held strategy's round with :meth:`aggregate_updates` as its rule."""
        return self.strategy.aggregate_train_with(
            server_round, replies, self.aggregate_updates
        )

    def aggregate_updates(
        self, server_round: int, batch: UpdateBatch
    ) -> AggregationOutcome:
        """Clip, let the held rule judge, combine with capped shares, add noise.

        A round in which the rule uses nobody releases nothing: no noise is drawn,
        no privacy is spent, and the rule's verdicts are returned as they are.
        """
        clip_norm = self.clipping.clip_norm
        clipped, norms = clip_rows(batch.deltas, clip_norm)
        judged = self.strategy.aggregate_updates(
            server_round, replace(batch, deltas=clipped)
        )
        if not np.any(judged.weights > 0.0):
            return judged
        shares = cap_shares(judged.weights, self.max_share)
        sensitivity = weighted_mean_sensitivity(self.max_share, clip_norm)
        noise = self.rng.normal(
            0.0, self.noise_multiplier * sensitivity, size=clipped.shape[1]
        )
        self.privacy_accountant.step()
        self.clipping.update(norms, self.rng)
        self.last_sensitivity = sensitivity
        # Shares may sum below 1 when few clients remain (see cap_shares); the
        # outcome reports them normalised, the aggregate keeps the shrinkage.
        total = float(shares.sum())
        return AggregationOutcome(
            delta=weighted_sum(clipped, shares) + noise,
            weights=shares / total if total > 0 else shares,
            verdicts=judged.verdicts,
            reasons=judged.reasons,
            scores=tuple(
                {**scores, "update-norm": float(norm)}
                for scores, norm in zip(judged.scores, norms, strict=True)
            ),
        )
