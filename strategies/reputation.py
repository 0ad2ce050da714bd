"""Reputation of persistent identities: arithmetic, tiers, bans and Sybil damping.

State is :class:`strategies.records.ReputationState`; it lives in any
:class:`strategies.records.ReputationStore` (the SQLite ledger in a run,
:class:`strategies.records.InMemoryStore` by default). Everything here is a pure
function of a :class:`ReputationPolicy`, except :class:`ReputationBook`, which only
reads and writes the store.

Per round, for an identity that sent a valid reply judged by the detectors:

.. math:: r \\leftarrow \\begin{cases}
          (1 - \\alpha_+) r + \\alpha_+ & \\text{accepted} \\\\
          \\mathrm{clip}_{[0, 1]}\\big((1 - \\alpha) \\min(r, r_0) + \\alpha q
          - \\pi\\,[\\text{rejected}]\\big) & \\text{otherwise}
          \\end{cases}

with quality ``q ∈ [0, 1]`` (``downweighted_quality`` down-weighted, 0 rejected),
gain rate ``α_+`` (``gain_rate``, slow), loss rate ``α`` (``ema_rate``), initial score
``r_0`` and rejection penalty ``π``. Losses are fast and gains slow: one flagged
reply forfeits everything earned above ``r_0`` at once, so a sleeper that farmed a
high tier and then turns is back on probation after the round it is caught in
(and in that round already weighs what its detector factor and the robust stage
allow). The arithmetic is the exponentially weighted
trust of the reputation systems surveyed by Jøsang, Ismail & Boyd ("A survey of
trust and reputation systems for online service provision", Decision Support
Systems, 2007), as used for FL by Kang et al. ("Incentive Mechanism for Reliable
Federated Learning: A Joint Optimization Approach to Combining Reputation and
Contract Theory", IEEE IoT Journal, 2019). An absent identity's score above
``initial_score`` decays towards it by ``absence_decay`` per round; one below stays
(hiding must not repair a bad name). A score under ``ban_threshold`` after a flagged
reply bans the identity for ``ban_rounds`` rounds.

Aggregation weight of row ``i`` (before normalisation):

.. math:: w_i = \\min(n_i, \\gamma\\,\\mathrm{med}_j n_j) \\cdot m_{\\mathrm{tier}(r_i)}
          \\cdot f_i

with claimed examples ``n_i`` capped at ``γ`` (``example_cap_ratio``) times the
median claim, tier multiplier ``m`` and detector factor ``f_i``. Identities with fewer
than ``probation_rounds`` accepted rounds or a score under ``graduation_score`` are on
probation (earned, not served: at ``gain_rate`` 0.05 a newcomer needs 5 clean
rounds to reach 0.6): together they get at most ``probation_share`` of the total
weight whenever an established identity contributes, so a swarm of fresh Sybils
cannot outvote a few known clients (Douceur, "The Sybil Attack", IPTPS 2002, shows
identities cannot be made costly without a trusted party; bounding their joint
influence is what remains). Graduating does not lift that bound from a *wave*: the
identities first seen in one round after the founding window (the
``founding_rounds`` rounds from the oldest identity present) form a cohort, and each
cohort keeps at most ``probation_share`` of the weight whenever older identities
contribute, however long it behaves. The price: honest identities that join
together late share that cap too (one late joiner alone rarely reaches it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from strategies.records import (
    InMemoryStore,
    ReputationState,
    ReputationStore,
    RoundRecorder,
    RoundReport,
    Tier,
    Transactional,
    Verdict,
)


def _default_tier_thresholds() -> dict[Tier, float]:
    return {Tier.BRONZE: 0.0, Tier.SILVER: 0.55, Tier.GOLD: 0.75, Tier.PLATINUM: 0.9}


def _default_tier_multipliers() -> dict[Tier, float]:
    return {Tier.BRONZE: 0.5, Tier.SILVER: 1.0, Tier.GOLD: 1.25, Tier.PLATINUM: 1.5}


TIER_ORDER = (Tier.BRONZE, Tier.SILVER, Tier.GOLD, Tier.PLATINUM)
"""Tiers from lowest to highest."""


@dataclass(frozen=True)
class ReputationPolicy:
    """Every knob of the reputation arithmetic.

    Attributes
    ----------
    initial_score : float
        Score of a newcomer (Bronze with the default thresholds).
    ema_rate : float
        ``α``: weight of this round's quality in the new score after a down-weighted
        or rejected reply (losses).
    gain_rate : float
        ``α_+``: how fast an accepted reply raises the score (gains, slow).
    rejection_penalty : float
        ``π``: extra drop when the reply was rejected. A rejection is strong
        evidence and an acceptance weak (an attacker is accepted whenever its
        update happens to look benign), so ``π`` must beat the EMA's recovery: an
        identity rejected every other round settles at the fixed point
        ``r* = ((1 − α)α − π) / (1 − (1 − α)²)`` of its rejected rounds, which is
        0.167 (never banned) with ``π = 0.1`` and negative (banned) with 0.15.
        Sign-flippers on real rounds were rejected exactly every other round
        (``benchmarks/calibrate_trusted.py``).
    downweighted_quality : float
        Quality of a down-weighted reply (accepted is 1, rejected is 0).
    absence_decay : float
        Per absent round, how far a score above ``initial_score`` falls towards it.
    probation_rounds : int
        Accepted rounds an identity needs (besides ``graduation_score``) to stop
        being a newcomer.
    graduation_score : float
        Score an identity must have earned to leave probation.
    founding_rounds : int
        Identities first seen within this many rounds of the oldest identity present
        are founders; later ones belong to a capped cohort (by first round).
    probation_share : float
        Largest joint weight share of identities on probation (when an established
        identity contributes).
    tier_thresholds : Mapping[Tier, float]
        Lowest score of each tier; must increase Bronze < Silver < Gold < Platinum.
    tier_multipliers : Mapping[Tier, float]
        Weight multiplier of each tier.
    ban_threshold : float
        A score below this after a down-weighted or rejected reply bans the
        identity.
    ban_rounds : int
        Length of a ban: banned at round ``t`` means ignored until round
        ``t + ban_rounds`` (exclusive).
    example_cap_ratio : float | None
        Claimed example counts are capped at this multiple of the round's median
        claim (``None``: no cap). Counts are unverifiable; inflating them is the
        cheapest attack on FedAvg weights.
    """

    initial_score: float = 0.5
    ema_rate: float = 0.2
    gain_rate: float = 0.05
    rejection_penalty: float = 0.15
    downweighted_quality: float = 0.5
    absence_decay: float = 0.01
    probation_rounds: int = 3
    graduation_score: float = 0.6
    founding_rounds: int = 3
    probation_share: float = 0.2
    tier_thresholds: Mapping[Tier, float] = field(
        default_factory=_default_tier_thresholds
    )
    tier_multipliers: Mapping[Tier, float] = field(
        default_factory=_default_tier_multipliers
    )
    ban_threshold: float = 0.15
    ban_rounds: int = 10
    example_cap_ratio: float | None = 2.0

    def __post_init__(self) -> None:
        for name in (
            "initial_score",
            "ema_rate",
            "gain_rate",
            "downweighted_quality",
            "graduation_score",
        ):
            _require_unit(name, getattr(self, name))
        for name in ("rejection_penalty", "absence_decay", "ban_threshold"):
            _require_unit(name, getattr(self, name))
        if not 0.0 < self.probation_share <= 1.0:
            raise ValueError(
                f"probation_share must lie in (0, 1], got {self.probation_share}"
            )
        if self.probation_rounds < 0 or self.ban_rounds < 1:
            raise ValueError(
                "probation_rounds must be ≥ 0 and ban_rounds ≥ 1, got "
                f"{self.probation_rounds} and {self.ban_rounds}"
            )
        if self.founding_rounds < 1:
            raise ValueError(f"founding_rounds must be ≥ 1, got {self.founding_rounds}")
        if set(self.tier_thresholds) != set(Tier) or set(self.tier_multipliers) != set(
            Tier
        ):
            raise ValueError("tier_thresholds and tier_multipliers need every Tier")
        bounds = [self.tier_thresholds[tier] for tier in TIER_ORDER]
        if bounds[0] != 0.0 or any(np.diff(bounds) <= 0.0):
            raise ValueError(
                "tier thresholds must start at 0 for Bronze and increase strictly "
                f"Bronze < Silver < Gold < Platinum, got {bounds}"
            )
        if any(not m >= 0.0 for m in self.tier_multipliers.values()):
            raise ValueError("tier multipliers must be non-negative")
        if self.example_cap_ratio is not None and not self.example_cap_ratio >= 1.0:
            raise ValueError(
                f"example_cap_ratio must be ≥ 1 or None, got {self.example_cap_ratio}"
            )

    def quality_of(self, verdict: Verdict) -> float:
        """Quality ``q`` of a reply with ``verdict``."""
        return {
            Verdict.ACCEPTED: 1.0,
            Verdict.DOWNWEIGHTED: self.downweighted_quality,
            Verdict.REJECTED: 0.0,
        }[verdict]


def _require_unit(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")


# --------------------------------------------------------------------------------------
# Pure state arithmetic
# --------------------------------------------------------------------------------------


def tier_for(score: float, policy: ReputationPolicy) -> Tier:
    """Highest tier whose threshold ``score`` reaches."""
    reached = [tier for tier in TIER_ORDER if score >= policy.tier_thresholds[tier]]
    return reached[-1] if reached else Tier.BRONZE


def is_banned(state: ReputationState | None, server_round: int) -> bool:
    """Whether ``state`` is banned at ``server_round``."""
    return state is not None and server_round < state.banned_until


def on_probation(state: ReputationState | None, policy: ReputationPolicy) -> bool:
    """Newcomer: fewer than ``probation_rounds`` accepted rounds, or a score under
    ``graduation_score``.

    Counted in accepted rounds, not rounds taken part in: an identity cannot serve
    its probation by sending garbage; and the score must be earned (gains are slow,
    one flagged reply drops it to ``initial_score``), so an identity caught once is
    a newcomer again.
    """
    return (
        state is None
        or state.rounds_accepted < policy.probation_rounds
        or state.score < policy.graduation_score
    )


def new_state(
    identity: str, server_round: int, policy: ReputationPolicy
) -> ReputationState:
    """State of an identity seen for the first time."""
    return ReputationState(
        identity=identity,
        score=policy.initial_score,
        tier=tier_for(policy.initial_score, policy),
        first_round=server_round,
        last_round=server_round,
    )


def updated_reputation(
    state: ReputationState | None,
    identity: str,
    verdict: Verdict,
    quality: float,
    server_round: int,
    policy: ReputationPolicy,
) -> ReputationState:
    """The state after one judged reply (see the module docstring for the formula).

    Parameters
    ----------
    state : ReputationState | None
        Current state, ``None`` for a newcomer (starts at ``initial_score``).
    identity : str
        Whose reply.
    verdict : Verdict
        What the detectors decided.
    quality : float
        ``q ∈ [0, 1]`` (usually :meth:`ReputationPolicy.quality_of`).
    server_round : int
        The round of the reply.
    policy : ReputationPolicy
        The knobs.

    Returns
    -------
    ReputationState
        New state; banned until ``server_round + ban_rounds`` if the score fell
        below ``ban_threshold``.
    """
    _require_unit("quality", quality)
    current = state if state is not None else new_state(identity, server_round, policy)
    if current.identity != identity:
        raise ValueError(f"state of {current.identity!r} given for {identity!r}")
    rejected = verdict is Verdict.REJECTED
    if verdict is Verdict.ACCEPTED:
        score = (1.0 - policy.gain_rate) * current.score + policy.gain_rate * quality
    else:
        # A flagged reply forfeits what was earned above the newcomer's score.
        kept = min(current.score, policy.initial_score)
        score = (1.0 - policy.ema_rate) * kept + policy.ema_rate * quality
    score = float(
        np.clip(score - (policy.rejection_penalty if rejected else 0.0), 0, 1)
    )
    banned_until = current.banned_until
    # Only a flagged reply bans: an identity back from a ban rebuilds its score
    # slowly from below the threshold instead of being banned again for good.
    if score < policy.ban_threshold and verdict is not Verdict.ACCEPTED:
        banned_until = server_round + policy.ban_rounds
    return current.evolve(
        score=score,
        tier=tier_for(score, policy),
        last_round=server_round,
        rounds_participated=current.rounds_participated + 1,
        rounds_accepted=current.rounds_accepted + (0 if rejected else 1),
        rounds_rejected=current.rounds_rejected + (1 if rejected else 0),
        banned_until=banned_until,
    )


def decayed_reputation(
    state: ReputationState, policy: ReputationPolicy
) -> ReputationState:
    """The state after a round without a judged reply from its identity.

    ``r ← max(initial, r − absence_decay)`` when ``r > initial``; unchanged otherwise.
    """
    if state.score <= policy.initial_score:
        return state
    score = max(policy.initial_score, state.score - policy.absence_decay)
    return state.evolve(score=score, tier=tier_for(score, policy))


# --------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------


def capped_examples(num_examples: np.ndarray, cap_ratio: float | None) -> np.ndarray:
    """Claimed example counts capped at ``cap_ratio`` × their median (float64)."""
    counts = np.asarray(num_examples, dtype=np.float64)
    if counts.ndim != 1 or np.any(counts < 0):
        raise ValueError("example counts must be a 1-D array of non-negatives")
    if cap_ratio is None or counts.size == 0:
        return counts
    return np.minimum(counts, cap_ratio * float(np.median(counts)))


def cap_group_share(
    weights: np.ndarray, members: np.ndarray, share: float
) -> np.ndarray:
    """Scale the weights of ``members`` so their joint share is at most ``share``.

    If ``W_p`` (members) and ``W_e`` (the rest, ``> 0``) give ``W_p / (W_p + W_e) >
    share``, members are multiplied by ``s = share · W_e / ((1 − share) W_p)``, which
    makes their share exactly ``share``; relative weights inside each group are kept.
    When the rest weighs nothing (e.g. the first round: everybody is new) there is
    nobody to protect and the weights are returned unchanged.

    Parameters
    ----------
    weights : np.ndarray
        ``(n,)`` non-negative.
    members : np.ndarray
        ``(n,)`` bool, the capped group.
    share : float
        Largest joint share, in ``(0, 1]``.

    Returns
    -------
    np.ndarray
        ``(n,)`` new weights (not normalised).
    """
    capped = np.array(weights, dtype=np.float64)
    members = np.asarray(members, dtype=bool)
    group = float(capped[members].sum())
    rest = float(capped[~members].sum())
    if rest <= 0.0 or group <= 0.0 or share >= 1.0 or group <= share * (group + rest):
        return capped
    capped[members] *= share * rest / ((1.0 - share) * group)
    return capped


def reputation_weights(
    num_examples: np.ndarray,
    states: Sequence[ReputationState | None],
    factors: np.ndarray,
    policy: ReputationPolicy,
) -> np.ndarray:
    """Normalised aggregation weights (module docstring), 0 where ``factors`` is 0.

    Parameters
    ----------
    num_examples : np.ndarray
        ``(n,)`` claimed example counts.
    states : Sequence[ReputationState | None]
        Each row's reputation (``None``: newcomer).
    factors : np.ndarray
        ``(n,)`` detector multipliers in ``[0, 1]`` (0 for rejected rows).
    policy : ReputationPolicy
        Tiers, multipliers, probation and example cap.

    Returns
    -------
    np.ndarray
        ``(n,)`` weights summing to 1, or all zero when every row has weight 0.
    """
    factors = np.asarray(factors, dtype=np.float64)
    if len(states) != factors.shape[0] or factors.shape != np.shape(num_examples):
        raise ValueError("num_examples, states and factors need one entry per row")
    multipliers = np.array(
        [
            policy.tier_multipliers[
                state.tier
                if state is not None
                else tier_for(policy.initial_score, policy)
            ]
            for state in states
        ]
    )
    # The example cap's median is over the rows still in play: rejected rows must not
    # drag it (e.g. many tiny claims from rejected Sybils).
    counts = np.zeros(factors.shape[0])
    used = factors > 0.0
    counts[used] = capped_examples(
        np.asarray(num_examples)[used], policy.example_cap_ratio
    )
    raw = counts * multipliers * factors
    raw = cap_newcomers(raw, states, policy)
    total = float(raw.sum())
    return raw / total if total > 0.0 else raw


def late_cohorts(
    states: Sequence[ReputationState | None], policy: ReputationPolicy
) -> np.ndarray:
    """``(n,)`` the first round of each row's cohort, or 0 for founders.

    Founders: identities first seen within ``founding_rounds`` of the oldest present
    one (and rows without a state, which probation covers).
    """
    firsts = [state.first_round for state in states if state is not None]
    cohorts = np.zeros(len(states), dtype=np.int64)
    if not firsts:
        return cohorts
    founded_by = min(firsts) + policy.founding_rounds
    for row, state in enumerate(states):
        if state is not None and state.first_round >= founded_by:
            cohorts[row] = state.first_round
    return cohorts


def cap_newcomers(
    weights: np.ndarray,
    states: Sequence[ReputationState | None],
    policy: ReputationPolicy,
) -> np.ndarray:
    """Probation rows jointly, and each late cohort, capped at ``probation_share``.

    Each cap only scales its group down (:func:`cap_group_share`), so applying the
    cohorts' after probation's never lifts a group above its cap.
    """
    newcomers = np.array([on_probation(state, policy) for state in states], dtype=bool)
    capped = cap_group_share(weights, newcomers, policy.probation_share)
    cohorts = late_cohorts(states, policy)
    for cohort in np.unique(cohorts[cohorts > 0]):
        capped = cap_group_share(capped, cohorts == cohort, policy.probation_share)
    return capped


# --------------------------------------------------------------------------------------
# Store access
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Judgement:
    """The reputation-relevant part of one judged reply."""

    identity: str
    verdict: Verdict
    banned: bool = False
    """The reply was ignored because its identity is banned (no further change)."""


class ReputationBook:
    """Reads reputations from a store and writes one round's changes back.

    Parameters
    ----------
    policy : ReputationPolicy
        The arithmetic.
    store : ReputationStore | None
        Where states live (default: a new :class:`InMemoryStore`). It may or may
        not be the round recorder too (the SQLite ledger is both): nothing here
        depends on which.
    """

    def __init__(
        self,
        policy: ReputationPolicy | None = None,
        store: ReputationStore | None = None,
    ) -> None:
        self.policy = policy if policy is not None else ReputationPolicy()
        self.store: ReputationStore = store if store is not None else InMemoryStore()

    def states(self, identities: Iterable[str]) -> list[ReputationState | None]:
        """Current state of each identity (``None`` if never seen)."""
        return [self.store.get_reputation(identity) for identity in identities]

    def next_states(
        self, server_round: int, judgements: Sequence[Judgement], count_accepted: bool
    ) -> list[ReputationState]:
        """States after ``server_round`` for judged identities and absent ones.

        Parameters
        ----------
        server_round : int
            The finished round.
        judgements : Sequence[Judgement]
            One per judged (valid) reply.
        count_accepted : bool
            ``False`` when the round was not aggregated: rejections still count,
            acceptances neither reward nor punish (the server failed, not them).

        Returns
        -------
        list[ReputationState]
            Every state that changed, judged identities first.
        """
        changed: list[ReputationState] = []
        present = {judgement.identity for judgement in judgements}
        for judgement in judgements:
            state = self.store.get_reputation(judgement.identity)
            if judgement.banned or judgement.verdict is Verdict.SKIPPED:
                continue
            if judgement.verdict is not Verdict.REJECTED and not count_accepted:
                continue
            changed.append(
                updated_reputation(
                    state,
                    judgement.identity,
                    judgement.verdict,
                    self.policy.quality_of(judgement.verdict),
                    server_round,
                    self.policy,
                )
            )
        for state in self.store.all_reputations():
            if state.identity in present:
                continue
            decayed = decayed_reputation(state, self.policy)
            if decayed != state:
                changed.append(decayed)
        return changed

    def judgements(self, report: RoundReport) -> list[Judgement]:
        """What ``report`` says about each reply that reached the rule.

        Replies rejected by validation never reached it (they change nobody's
        reputation: a malformed or replayed reply may not even come from its
        identity); a banned identity's reply is marked so it changes nothing either.
        The store is read before :meth:`commit`, so bans are those the rule saw.
        """
        return [
            Judgement(
                contribution.identity,
                contribution.verdict,
                is_banned(
                    self.store.get_reputation(contribution.identity),
                    report.server_round,
                ),
            )
            for contribution in report.contributions
            if contribution.passed_validation
        ]

    def commit(
        self,
        report: RoundReport,
        states: Sequence[ReputationState],
        recorder: RoundRecorder | None,
    ) -> None:
        """Persist ``states``, then hand ``report`` and them to ``recorder``.

        The store is written first, so a recorder that reads reputations sees the
        new ones. A recorder that persists them too (the SQLite ledger keeps them
        in the round's block) writes the same states again, which changes nothing:
        whether store and recorder are one object does not matter. Both writes run
        inside the :class:`~strategies.records.Transactional` scopes the store and
        the recorder offer, so where both are one ledger a crash leaves the round's
        reputations and its block together or neither (the scopes are re-entrant:
        entering the same ledger twice joins one transaction).
        """
        with contextlib.ExitStack() as scope:
            for part in (self.store, recorder):
                if isinstance(part, Transactional):
                    scope.enter_context(part.transaction())
            self.store.put_reputations(states)
            if recorder is not None:
                recorder.record_round(report, states)
