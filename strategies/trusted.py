"""TrustedFedAvg: FedAvg for peers that do not trust each other.

Per round, on the replies that passed validation (:class:`~strategies.base.
ScreenedFedAvg`):

1. replies of banned identities are rejected ("banned until round N");
2. the detectors of :mod:`strategies.detection` score every delta and decide
   accepted / down-weighted / rejected, each reason naming detector and value;
3. weights = claimed examples (capped) × tier multiplier × detector factor, with the
   identities on probation capped to a joint share (:mod:`strategies.reputation`);
   in front of the robust stage the detector factor counts only as accepted or
   rejected (a down-weight verdict still lowers the identity's reputation);
4. the aggregate does not trust steps 1–3: the accepted rows go through the robust
   stage of :mod:`strategies.robust_stage` (the certified filter with
   ``f = ⌊β n⌋`` of the ``n`` accepted rows, ``β = byzantine_fraction``: the plain
   mean when the rows' spread needs no filtering, CAF's filter until it does not
   otherwise), whose worst-case bound holds whichever ``f`` of them are Byzantine;
   the former NNM ∘ CAF stage is ``robust_rule: {_target_:
   strategies.robust_stage.RobustStage}``; the weights of step 3 only re-weight
   inside it: no row gets more than ``reputation_ceiling`` × its robust weight
   (:func:`~strategies.robust_stage.weights_within_bound`), and newcomers and late
   cohorts keep their caps. When the certified filter vouches for a strict subset
   of the rows (it dropped some), a down-weight verdict on a vouched row stands only
   if the detectors, run again on the vouched rows alone, confirm it: the first
   look's centres and scales included the dropped rows, which an adaptive attacker
   uses to push honest outliers over a threshold and so cost them reputation.
   A reply the detectors kept that the stage gives no weight keeps its verdict
   and has the reason :data:`LEFT_OUT`, so the ledger says it did not count.
   Alternatives (``robust_rule``): the norm-bounded mean of
   before (``"mean"``: each row bounded to ``norm_bound_ratio`` × the median
   accepted norm, Sun, Kairouz, Suresh & McMahan, "Can You Really Backdoor Federated
   Learning?", 2019), or a rule of :mod:`strategies.aggregators`;
5. reputations are updated from the verdicts and, with the
   :class:`~strategies.records.RoundReport`, handed to the recorder through
   ``recorder.record_round(report, reputations)``. That is the only way verdicts,
   scores and weights leave the strategy.

Cost: one sweep over the deltas for the exact norms and the robust stage's
pairwise distances over every coordinate (a centred Gram matrix, ``n² d / 2``
multiply-adds in BLAS ``syrk``,
:func:`~strategies.aggregators.squared_norms_and_distances`; everything after them
is ``n × n``), a copy of 32 blocks of 1 024 coordinates per row (Gram matrix and
history, see :mod:`strategies.detection`) and one weighted sum (the aggregate).
The distances dominate for large ``n``: ``O(n² d)`` against the weighted mean's
``O(n d)``. Measured side by side with Flower's ``FedAvg`` in
``benchmarks/aggregation_speed.py`` (row "TrustedFedAvg (default pipeline)").
"""

from __future__ import annotations

from collections.abc import Sequence
from logging import INFO
from typing import Unpack

import numpy as np
from flwr.supercore import log

from strategies import aggregators
from strategies.base import (
    AggregationOutcome,
    ScreenedFedAvg,
    ScreenedFedAvgOptions,
    UpdateBatch,
)
from strategies.delta_matrix import DeltaMatrix, Deltas
from strategies.detection import (
    SKETCH_COORDINATES,
    DetectionContext,
    Detector,
    DetectorPanel,
    Screening,
    UpdateHistory,
)
from strategies.records import (
    ReputationState,
    ReputationStore,
    RoundReport,
    Verdict,
)
from strategies.reputation import (
    ReputationBook,
    ReputationPolicy,
    cap_newcomers,
    is_banned,
    reputation_weights,
)
from strategies.robust_stage import (
    CertifiedStage,
    RobustStage,
    Stage,
    weights_within_bound,
)

ROBUST_MODES = ("robust", "mean")
"""The two ``robust_rule`` values that are not a rule but a mode of this strategy:
the default robust stage and the norm-bounded mean. Any other rule is an
:class:`~strategies.aggregators.AggregationRule` object, which a config gives as
``robust_rule: {_target_: strategies.aggregators.CoordinateMedian}`` (the one
registry idiom: no table of rule names here)."""


LEFT_OUT = "weight 0: left out by the robust stage"
"""Reason of a reply the detectors kept and the robust stage gave no weight. Its
verdict stays the detectors' (reputation reads verdicts, and the stage may leave
out an honest outlier), so without this the ledger would call it plainly
accepted while it did not count."""


def name_left_out(
    verdicts: Sequence[Verdict], reasons: Sequence[str], weights: np.ndarray
) -> tuple[str, ...]:
    """``reasons`` with :data:`LEFT_OUT` on every row kept by the detectors (accepted
    or down-weighted) whose final weight is 0."""
    kept = (Verdict.ACCEPTED, Verdict.DOWNWEIGHTED)
    return tuple(
        (f"{reason}; {LEFT_OUT}" if reason else LEFT_OUT)
        if verdict in kept and weight == 0.0
        else reason
        for verdict, reason, weight in zip(verdicts, reasons, weights, strict=True)
    )


def norm_bound_factors(norms: np.ndarray, used: np.ndarray, ratio: float) -> np.ndarray:
    """``min(1, τ / ‖x_i‖)`` with ``τ = ratio · median of the used rows' norms``.

    Multiplying a row by its factor bounds its norm by ``τ`` (Sun et al., 2019); the
    median of the rows that enter the aggregate cannot be inflated by a minority.
    Rows of norm 0 get factor 1.
    """
    if not np.any(used):
        return np.ones_like(norms)
    bound = ratio * float(np.median(norms[used]))
    if bound <= 0.0:
        return np.ones_like(norms)
    return bound / np.maximum(norms, bound)


def example_weights_with_factors(
    num_examples: np.ndarray, factors: np.ndarray
) -> np.ndarray:
    """``n_i f_i / Σ_j n_j f_j`` (all zero when nothing is left)."""
    raw = np.asarray(num_examples, dtype=np.float64) * factors
    total = float(raw.sum())
    return raw / total if total > 0.0 else raw


# pylint: disable=too-many-instance-attributes
class TrustedFedAvg(ScreenedFedAvg):
    """Detectors + reputation + a certified robust stage (the flp2p strategy).

    Implementation based on FedAvg (McMahan et al., AISTATS 2017,
    https://arxiv.org/abs/1602.05629) with the screening of
    :mod:`strategies.detection`, the reputation of :mod:`strategies.reputation` and
    norm bounding (Sun et al., 2019, https://arxiv.org/abs/1911.07963).

    Parameters
    ----------
    detectors : Sequence[Detector] | None (default: None)
        The detectors to run, thresholds as their fields (e.g.
        ``[NormOutlier(reject_at=8.0), FreeRider()]``); ``None`` for the default
        panel (:func:`strategies.detection.default_detectors`).
    panel : DetectorPanel | None (default: None)
        Detectors with a non-default ``downweight_factor``; give ``detectors`` or
        ``panel``, not both.
    policy : ReputationPolicy | None (default: None)
        Reputation knobs; ``None`` for the defaults.
    store : ReputationStore | None (default: None)
        Where reputations persist; ``None`` uses the recorder when it is also a
        store (the SQLite ledger), else a fresh in-memory store.
    use_detectors : bool (default: True)
        ``False`` accepts every valid reply (reputation and norm bound still apply).
    use_reputation : bool (default: True)
        ``False`` weights by example count × detector factor only, never bans, and
        hands the recorder no reputations.
    robust_rule : str | Stage | aggregators.AggregationRule (default: "robust")
        ``"robust"``: the robust stage (:class:`~strategies.robust_stage.
        CertifiedStage` with ``byzantine_fraction``) with reputation inside its
        bound. A stage object (``CertifiedStage`` with another ``threshold``, or
        the former :class:`~strategies.robust_stage.RobustStage`, NNM ∘ CAF) is run
        the same way, with its own ``byzantine_fraction``. ``"mean"``: norm-bounded
        weighted mean of the accepted rows (no worst-case bound). A rule instance
        (from a config: a nested ``_target_``) aggregates the accepted rows instead
        (with the weights if the rule supports them, else uniformly).
    byzantine_fraction : float (default: 0.3)
        ``β``: assumed Byzantine fraction among the valid replies of a round
        (``"robust"`` only; ``0 ≤ β < ½``); all of them may be among the rows that
        reach the robust stage.
    reputation_ceiling : float | None (default: None)
        ``"robust"`` only: the most reputation may raise a row above its robust
        weight, ``≥ 1``; ``None`` for ``1 / (1 − β)``, as if the stage had dropped a
        ``β`` share of its weight, which its bound already tolerates.
    norm_bound_ratio : float | None (default: 2.0)
        ``"mean"`` only: rows longer than this × the median accepted norm are scaled
        down to it; ``None`` disables the bound.
    sketch_coordinates : int (default: 32768)
        Coordinates of each delta sampled for pairwise geometry and history
        (:mod:`strategies.detection`); models up to this size are treated exactly.
    exact_geometry : bool (default: False)
        Gram matrix over every coordinate: exact for any size, ``O(n² d)``.
    sketch_seed : int | None (default: None)
        Seed of the sampled coordinates; ``None`` draws one from the OS, so that
        clients cannot know which coordinates are watched.
    **options
        Every argument of :class:`~strategies.base.ScreenedFedAvg`.
    """

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        detectors: Sequence[Detector] | None = None,
        panel: DetectorPanel | None = None,
        policy: ReputationPolicy | None = None,
        store: ReputationStore | None = None,
        use_detectors: bool = True,
        use_reputation: bool = True,
        robust_rule: str | Stage | aggregators.AggregationRule = "robust",
        norm_bound_ratio: float | None = 2.0,
        byzantine_fraction: float = 0.3,
        reputation_ceiling: float | None = None,
        sketch_coordinates: int = SKETCH_COORDINATES,
        exact_geometry: bool = False,
        sketch_seed: int | None = None,
        **options: Unpack[ScreenedFedAvgOptions],
    ) -> None:
        super().__init__(**options)
        if norm_bound_ratio is not None and not norm_bound_ratio >= 1.0:
            raise ValueError(
                f"norm_bound_ratio must be ≥ 1 or None, got {norm_bound_ratio}"
            )
        if sketch_coordinates < 1:
            raise ValueError(
                f"sketch_coordinates must be ≥ 1, got {sketch_coordinates}"
            )
        self.panel = _panel(detectors, panel)
        self.use_detectors = use_detectors
        self.use_reputation = use_reputation
        self.stage: Stage | None = None
        if isinstance(robust_rule, CertifiedStage | RobustStage):
            self.stage = robust_rule
        elif robust_rule == "robust":
            self.stage = CertifiedStage(byzantine_fraction)
        ceiling = (
            1.0 / (1.0 - byzantine_fraction)
            if reputation_ceiling is None
            else reputation_ceiling
        )
        if not ceiling >= 1.0:
            raise ValueError(f"reputation_ceiling must be ≥ 1, got {ceiling}")
        self.reputation_ceiling = ceiling
        self.rule = None
        if self.stage is None:
            assert not isinstance(robust_rule, CertifiedStage | RobustStage)
            self.rule = _resolve_rule(robust_rule)
        self.norm_bound_ratio = norm_bound_ratio
        if store is None and isinstance(self.recorder, ReputationStore):
            store = self.recorder
        self.book = ReputationBook(policy, store)
        self.exact_geometry = exact_geometry
        if sketch_seed is None:
            sketch_seed = int(np.random.SeedSequence().generate_state(1)[0])
        self.history = UpdateHistory(
            max_coordinates=sketch_coordinates, seed=sketch_seed
        )

    @property
    def policy(self) -> ReputationPolicy:
        """The reputation policy."""
        return self.book.policy

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        names = ", ".join(detector.name for detector in self.panel.detectors)
        log(INFO, "\t├──> TrustedFedAvg settings:")
        log(INFO, "\t│\t├── Detectors: %s", names if self.use_detectors else "off")
        log(INFO, "\t│\t├── Reputation: %s", "on" if self.use_reputation else "off")
        if self.stage is not None:
            rule = (
                f"{self.stage.describe()}; reputation ≤ "
                f"{self.reputation_ceiling:.3g} × robust weight"
            )
        elif self.rule is None:
            rule = "norm-bounded mean"
        else:
            rule = type(self.rule).__name__
        log(INFO, "\t│\t└── Aggregation: %s", rule)
        super().summary()

    # ------------------------------------------------------------------ the hook

    def aggregate_updates(
        self, server_round: int, batch: UpdateBatch
    ) -> AggregationOutcome:
        """Ban check → detectors → weights → aggregate (see the module docstring)."""
        states = (
            self.book.states(batch.identities)
            if self.use_reputation
            else [None] * batch.size
        )
        banned = np.array([is_banned(state, server_round) for state in states], bool)
        # The robust stage needs every pairwise distance and the detectors the exact
        # norms: one sweep over the deltas gives both.
        norms, distances = None, None
        if self.stage is not None:
            squared_norms, distances = aggregators.squared_norms_and_distances(
                aggregators.as_update_matrix(batch.deltas)
            )
            norms = np.sqrt(squared_norms)
        context = DetectionContext.build(
            batch.deltas, batch.identities, self.history, self.exact_geometry, norms
        )
        screening = (
            self.panel.screen(batch.deltas, context)
            if self.use_detectors
            else _accept_all(batch.size)
        )
        verdicts, reasons = _with_bans(screening, states, banned)
        factors = np.where(banned, 0.0, screening.factors)
        if self.use_reputation:
            weights = reputation_weights(
                batch.num_examples, states, factors, self.policy
            )
        else:
            weights = example_weights_with_factors(batch.num_examples, factors)

        # The detectors' past before this round joins it: a second look at some rows
        # (below) must see what the first one saw.
        past = self.history
        kept = ~banned
        remembered = context.sketches if bool(kept.all()) else context.sketches[kept]
        self.history = self.history.remember(
            [
                identity
                for identity, keep in zip(batch.identities, kept, strict=True)
                if keep
            ],
            remembered,
            batch.deltas.shape[1],
            server_round,
        )
        if not np.any(weights > 0.0):
            # Every row rejected or banned: nothing to aggregate, every verdict kept.
            delta = np.zeros(batch.deltas.shape[1])
            return AggregationOutcome(
                delta, weights, verdicts, reasons, screening.scores
            )
        if self.stage is not None:
            # The stage's filter supersedes the detectors' soft opinion: a
            # down-weight verdict acts through reputation, not as a tilt here. An
            # adaptive attacker drags the detectors' centre until honest outliers
            # fall in the down-weight band (cosine 3.6–4.2 ≥ 3.5 at f = 6 in
            # benchmarks/robust_updates.py), and tilting against them inside the
            # stage cost 0.07–0.09 of relative error after the attackers were gone.
            kept_factors = np.where(factors > 0.0, 1.0, 0.0)
            preference = (
                reputation_weights(
                    batch.num_examples, states, kept_factors, self.policy
                )
                if self.use_reputation
                else example_weights_with_factors(batch.num_examples, kept_factors)
            )
            delta, weights, vouched = self._robust_aggregate(
                batch.deltas, preference, states, distances
            )
            if vouched is not None:
                verdicts, reasons = self._confirm_down_weights(
                    batch, verdicts, reasons, vouched, past, norms
                )
            reasons = name_left_out(verdicts, reasons, weights)
        else:
            delta, weights = self._aggregate(batch.deltas, weights, context)
        return AggregationOutcome(delta, weights, verdicts, reasons, screening.scores)

    def _robust_aggregate(
        self,
        deltas: Deltas,
        weights: np.ndarray,
        states: Sequence[ReputationState | None],
        distances: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Robust stage on the rows in play; reputation re-weights inside its bound.

        ``distances`` are the pairwise squared distances of all rows of ``deltas``
        (:func:`~strategies.aggregators.squared_norms_and_distances`; computed here
        when not given). The certified filter runs on the rows in play with ``f``
        of all the valid replies and its scales read from all of them
        (:meth:`~strategies.robust_stage.CertifiedStage.certify_survivors`): rows
        the detectors dropped may have been honest. The former stage (NNM ∘ CAF)
        takes ``f`` from the rows in play.

        Returns the aggregate, the final weights (shares summing to 1; the aggregate
        is a shorter step than their weighted mean when the bounds cannot carry a
        whole one) and, when the certified filter vouched for a strict subset of
        the rows in play, that subset as a mask over every row (else ``None``).
        """
        assert self.stage is not None
        used = np.flatnonzero(weights > 0.0)
        rows = deltas[used]
        if distances is None:
            distances = aggregators.pairwise_squared_distances(deltas)
        vouched = None
        if isinstance(self.stage, CertifiedStage):
            certification = self.stage.certify_survivors(distances, used)
            robust = certification.weights
            if certification.vouched is not None and not certification.vouched.all():
                vouched = np.zeros(weights.shape[0], dtype=bool)
                vouched[used[certification.vouched]] = True
        else:
            robust = self.stage.weights(distances[np.ix_(used, used)])
        inside = weights_within_bound(robust, weights[used], self.reputation_ceiling)
        if self.use_reputation:
            # The water-filling may lift newcomers with everyone else: cap them
            # again, and refill only as far as every row's ceiling allows.
            inside = cap_newcomers(inside, [states[int(i)] for i in used], self.policy)
            live = inside > 0.0
            room = np.min(self.reputation_ceiling * robust[live] / inside[live])
            inside = inside * min(1.0 / float(inside.sum()), float(room))
        # When the capped newcomers and the ceilings cannot carry a whole step
        # together, the aggregate takes a shorter one rather than break a bound or
        # lose the round; the outcome reports the shares, as central DP does.
        final = np.zeros_like(weights)
        final[used] = inside / float(inside.sum())
        return aggregators.weighted_sum(rows, inside), final, vouched

    def _confirm_down_weights(
        self,
        batch: UpdateBatch,
        verdicts: tuple[Verdict, ...],
        reasons: tuple[str, ...],
        vouched: np.ndarray,
        past: UpdateHistory,
        norms: np.ndarray | None,
    ) -> tuple[tuple[Verdict, ...], tuple[str, ...]]:
        """A down-weight verdict on a row the certified filter vouched for stands only
        if the detectors, run again on the vouched rows alone, flag it too.

        The first screening's centres, medians and MADs include the rows the filter
        then showed to lie outside the honest spread; an adaptive attacker drags them
        until honest outliers cross a down-weight threshold (cosine 3.6–4.2 ≥ 3.5 at
        f = 6 in ``benchmarks/robust_updates.py``). In front of the stage such a
        verdict changes no weight, but it costs reputation, and the lower tier then
        tilts the next rounds against those honest rows (0.05–0.07 of relative
        error). Among the vouched rows the detectors see the population their
        thresholds were calibrated on. Only confirmation is asked: the second look
        neither flags nor rejects a row the first accepted (its rows are already in
        this round's aggregate, with the certificate's bound).
        """
        rows = np.flatnonzero(vouched)
        flagged = [
            int(row) for row in rows if verdicts[int(row)] is Verdict.DOWNWEIGHTED
        ]
        if not flagged:
            return verdicts, reasons
        identities = [batch.identities[int(row)] for row in rows]
        subset = batch.deltas[rows]
        context = DetectionContext.build(
            subset,
            identities,
            past,
            self.exact_geometry,
            None if norms is None else norms[rows],
        )
        second = self.panel.screen(subset, context)
        position = {int(row): index for index, row in enumerate(rows)}
        confirmed_verdicts, confirmed_reasons = list(verdicts), list(reasons)
        for row in flagged:
            if second.verdicts[position[row]] is Verdict.ACCEPTED:
                confirmed_verdicts[row] = Verdict.ACCEPTED
                confirmed_reasons[row] = (
                    f"{reasons[row]} among all {len(verdicts)} rows, not confirmed "
                    f"among the {rows.size} the certified filter kept"
                )
        return tuple(confirmed_verdicts), tuple(confirmed_reasons)

    def _aggregate(
        self, deltas: DeltaMatrix, weights: np.ndarray, context: DetectionContext
    ) -> tuple[np.ndarray, np.ndarray]:
        """The aggregate delta and the weights reported for it."""
        used = weights > 0.0
        if self.rule is None:
            coefficients = weights
            if self.norm_bound_ratio is not None:
                factors = norm_bound_factors(
                    context.geometry.norms, used, self.norm_bound_ratio
                )
                coefficients = weights * factors
            # Rejected rows have coefficient 0: one weighted sum over all rows
            # (which skips them) is cheaper than copying the accepted ones out.
            return aggregators.weighted_sum(deltas, coefficients), weights
        rows = deltas if bool(used.all()) else deltas[used]
        if self.rule.supports_weights:
            return self.rule(rows, weights[used]), weights
        uniform = used / float(used.sum())
        return self.rule(rows), uniform

    # ---------------------------------------------------------------- the ledger

    def record_round(self, report: RoundReport) -> None:
        """Update reputations from the round's report, then hand both on."""
        if not self.use_reputation:
            if self.recorder is not None:
                self.recorder.record_round(report, [])
            return
        states = self.book.next_states(
            report.server_round,
            self.book.judgements(report),
            report.aggregate_sha256 is not None,
        )
        self.book.commit(report, states, self.recorder)

    def reputations(self) -> list[ReputationState]:
        """Every reputation in the store (for reports and tests)."""
        return self.book.store.all_reputations()


class DetectorsOnlyFedAvg(TrustedFedAvg):
    """:class:`TrustedFedAvg` without reputation: detectors + norm-bounded mean."""

    def __init__(
        self,
        detectors: Sequence[Detector] | None = None,
        panel: DetectorPanel | None = None,
        robust_rule: str | aggregators.AggregationRule = "mean",
        norm_bound_ratio: float | None = 2.0,
        byzantine_fraction: float = 0.3,
        **options: Unpack[ScreenedFedAvgOptions],
    ) -> None:
        super().__init__(
            detectors=detectors,
            panel=panel,
            use_reputation=False,
            robust_rule=robust_rule,
            norm_bound_ratio=norm_bound_ratio,
            byzantine_fraction=byzantine_fraction,
            **options,
        )


class TrustedMedianFedAvg(TrustedFedAvg):
    """:class:`TrustedFedAvg` aggregating the accepted rows by coordinate median."""

    def __init__(
        self,
        detectors: Sequence[Detector] | None = None,
        panel: DetectorPanel | None = None,
        policy: ReputationPolicy | None = None,
        store: ReputationStore | None = None,
        **options: Unpack[ScreenedFedAvgOptions],
    ) -> None:
        super().__init__(
            detectors=detectors,
            panel=panel,
            policy=policy,
            store=store,
            robust_rule=aggregators.CoordinateMedian(),
            **options,
        )


# ------------------------------------------------------------------------ helpers


def _panel(
    detectors: Sequence[Detector] | None, panel: DetectorPanel | None
) -> DetectorPanel:
    if detectors is not None and panel is not None:
        raise ValueError("give detectors or panel, not both")
    if panel is not None:
        return panel
    if detectors is None:
        return DetectorPanel()
    for detector in detectors:
        if not isinstance(detector, Detector):
            raise TypeError(
                f"detectors must be Detector objects, got {type(detector).__name__}"
            )
    return DetectorPanel(tuple(detectors))


def _resolve_rule(
    rule: str | aggregators.AggregationRule,
) -> aggregators.AggregationRule | None:
    if not isinstance(rule, str):
        return rule
    if rule == "mean":
        return None
    raise ValueError(
        f"unknown robust_rule {rule!r}: give one of {', '.join(ROBUST_MODES)} or a "
        "rule, e.g. robust_rule: {_target_: strategies.aggregators.CoordinateMedian}"
    )


def _accept_all(rows: int) -> Screening:
    return Screening(
        scores=({},) * rows,
        verdicts=(Verdict.ACCEPTED,) * rows,
        reasons=("",) * rows,
        factors=np.ones(rows),
    )


def _with_bans(
    screening: Screening,
    states: Sequence[ReputationState | None],
    banned: np.ndarray,
) -> tuple[tuple[Verdict, ...], tuple[str, ...]]:
    verdicts = list(screening.verdicts)
    reasons = list(screening.reasons)
    for row, state in enumerate(states):
        if banned[row] and state is not None:
            verdicts[row] = Verdict.REJECTED
            reasons[row] = f"banned until round {state.banned_until}"
    return tuple(verdicts), tuple(reasons)
