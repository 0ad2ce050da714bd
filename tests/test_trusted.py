"""TrustedFedAvg: attacks at 30 % of 20 clients, reputation across rounds, the ledger.

Honest deltas are a shared, slowly drifting direction plus a persistent per-client
offset (non-IID) plus fresh noise; attackers follow the published formulas (as in
``flp2p.attacks``). The checks are on outcomes that hold whatever the detectors'
inner numbers: attackers lose (almost) all weight, the aggregate stays within a small
angle of the honest weighted mean, and honest clients are (almost) never rejected.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest
from helpers_messages import make_train_reply

from strategies import aggregators
from strategies.base import AggregationOutcome, UpdateBatch, batch_contributions
from strategies.detection import DetectorPanel, FreeRider, NormOutlier
from strategies.records import (
    InMemoryStore,
    ReputationState,
    RoundReport,
    Tier,
    Verdict,
)
from strategies.reputation import ReputationPolicy
from strategies.trusted import (
    DetectorsOnlyFedAvg,
    TrustedFedAvg,
    TrustedMedianFedAvg,
    norm_bound_factors,
)

CLIENTS = 20
MALICIOUS = 6  # 30 %
WIDTH = 3000


class Federation:
    """Synthetic rounds of honest deltas with the first MALICIOUS rows replaced."""

    def __init__(self, seed: int, noise: float = 2.0) -> None:
        self.rng = np.random.default_rng(seed)
        direction = self.rng.standard_normal(WIDTH)
        self.direction = direction / np.linalg.norm(direction)
        offsets = self.rng.standard_normal((CLIENTS, WIDTH))
        scale = self.rng.uniform(0.2, 1.0, (CLIENTS, 1))
        self.offsets = offsets * scale / np.linalg.norm(offsets, axis=1, keepdims=True)
        self.noise = noise / np.sqrt(WIDTH)
        self.examples = self.rng.integers(100, 600, CLIENTS)
        self.sent: dict[int, np.ndarray] = {}

    def honest(self) -> np.ndarray:
        drift = 0.3 * self.rng.standard_normal(WIDTH) / np.sqrt(WIDTH)
        self.direction = self.direction + drift
        self.direction /= np.linalg.norm(self.direction)
        fresh = self.noise * self.rng.standard_normal((CLIENTS, WIDTH))
        return self.direction + self.offsets + fresh

    def round(self, attack: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(deltas, claimed examples, honest weighted mean) of one round."""
        honest = self.honest()
        deltas = honest.copy()
        claims = self.examples.copy()
        benign = honest[:MALICIOUS]  # what the colluders would have sent
        for row in range(MALICIOUS):
            deltas[row], claims[row] = self.poison(attack, row, honest, benign)
        for row in range(MALICIOUS):
            self.sent[row] = deltas[row].copy()
        weights = self.examples[MALICIOUS:] / self.examples[MALICIOUS:].sum()
        return deltas, claims, weights @ honest[MALICIOUS:]

    def poison(
        self, attack: str, row: int, honest: np.ndarray, benign: np.ndarray
    ) -> tuple[np.ndarray, int]:
        claim = int(self.examples[row])
        z_alie = 0.674  # Baruch et al.: Φ⁻¹((n − s)/n), s = ⌊n/2 + 1⌋ − f = 5, n = 20
        crafted: dict[str, Callable[[], np.ndarray]] = {
            "none": lambda: honest[row],
            "sign_flip": lambda: -honest[row],
            "gaussian": lambda: self.rng.normal(0.0, 0.1, WIDTH),
            "scaling": lambda: 10.0 * (-self.direction + self.offsets[row]),
            "alie": lambda: benign.mean(axis=0) - z_alie * benign.std(axis=0),
            "ipm": lambda: -0.5 * benign.mean(axis=0),
            "label_flip": lambda: -0.5 * self.direction + self.offsets[row],
            "free_rider_zero": lambda: self.rng.normal(0.0, 1e-4, WIDTH),
            "free_rider_stale": lambda: self.sent.get(row, honest[row]),
            "sybil": lambda: -benign.mean(axis=0),
        }
        if attack == "sybil":
            claim *= 3
        return crafted[attack](), claim


def batch_of(
    deltas: np.ndarray, claims: np.ndarray, server_round: int, shift: int = 0
) -> UpdateBatch:
    """A batch whose row ``i`` comes from ``client-{(i + shift) % n}``."""
    frozen = deltas if not deltas.flags.writeable else np.array(deltas)
    frozen.setflags(write=False)
    rows = len(deltas)
    return UpdateBatch(
        identities=tuple(f"client-{(row + shift) % rows}" for row in range(rows)),
        node_ids=tuple(range(rows)),
        num_examples=np.asarray(claims, dtype=np.int64),
        deltas=frozen,
        digests=tuple(f"{server_round}-{row}" for row in range(rows)),
        metrics=({},) * rows,
        reference={},
    )


def aggregated_report(
    server_round: int, batch: UpdateBatch, outcome: AggregationOutcome
) -> RoundReport:
    """The report of a round driven through the hook by hand (one way: hook →
    report → record_round, as ``aggregate_train`` does)."""
    return RoundReport(
        server_round, tuple(batch_contributions(batch, outcome)), "aggregated"
    )


def run_rounds(
    strategy: TrustedFedAvg, attack: str, rounds: int, seed: int
) -> list[tuple[AggregationOutcome, np.ndarray]]:
    federation = Federation(seed)
    results = []
    for server_round in range(1, rounds + 1):
        deltas, claims, honest_mean = federation.round(attack)
        batch = batch_of(deltas, claims, server_round)
        outcome = strategy.aggregate_updates(server_round, batch)
        strategy.record_round(aggregated_report(server_round, batch, outcome))
        results.append((outcome, honest_mean))
    return results


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


ATTACKS = [
    "sign_flip",
    "gaussian",
    "scaling",
    "alie",
    "ipm",
    "label_flip",
    "free_rider_zero",
    "free_rider_stale",
    "sybil",
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_attackers_lose_their_weight_and_the_aggregate_stays_honest(
    attack: str,
) -> None:
    for seed in range(2):
        results = run_rounds(TrustedFedAvg(), attack, rounds=3, seed=seed)
        # A stale replay needs a previous round to be recognised as one.
        judged = results[1:] if attack == "free_rider_stale" else results
        for outcome, honest_mean in judged:
            assert outcome.weights[:MALICIOUS].sum() <= 0.05, outcome.reasons
            assert all(v is not Verdict.ACCEPTED for v in outcome.verdicts[:MALICIOUS])
            assert cosine(outcome.delta, honest_mean) > 0.95
            honest_rejected = sum(
                v is Verdict.REJECTED for v in outcome.verdicts[MALICIOUS:]
            )
            assert honest_rejected <= 1


@pytest.mark.parametrize("attack", ["sign_flip", "alie", "sybil", "free_rider_stale"])
def test_sampled_geometry_still_catches_attacks(attack: str) -> None:
    """With fewer sampled coordinates than parameters (the large-model path)."""
    strategy = TrustedFedAvg(sketch_coordinates=2048, sketch_seed=1)
    assert strategy.history.coordinates(WIDTH).shape == (2048,)
    for outcome, honest_mean in run_rounds(strategy, attack, rounds=3, seed=5)[1:]:
        assert outcome.weights[:MALICIOUS].sum() <= 0.05, outcome.reasons
        assert cosine(outcome.delta, honest_mean) > 0.95


def test_reasons_name_the_detector_and_its_value() -> None:
    outcome, _ = run_rounds(TrustedFedAvg(), "sybil", rounds=1, seed=0)[0]
    assert "collusion 1 ≥ 0.99" in outcome.reasons[0]
    assert set(outcome.scores[0]) == {
        "norm",
        "cosine",
        "opposition",
        "krum",
        "collusion",
        "free_rider",
        "history",
    }


def test_plain_fedavg_would_have_been_poisoned() -> None:
    """The attacks above are real: the unscreened weighted mean fails them."""
    deltas, claims, honest_mean = Federation(0).round("sybil")
    poisoned = (claims / claims.sum()) @ deltas
    assert cosine(poisoned, honest_mean) < 0.5


def test_false_positive_rate_without_attack_is_small() -> None:
    lowered = judged = 0
    for seed in range(4):
        for outcome, honest_mean in run_rounds(
            TrustedFedAvg(), "none", rounds=4, seed=seed
        ):
            judged += len(outcome.verdicts)
            lowered += sum(v is not Verdict.ACCEPTED for v in outcome.verdicts)
            assert cosine(outcome.delta, honest_mean) > 0.9
    assert lowered / judged <= 0.02


def test_norm_bound_hand_case() -> None:
    norms = np.array([1.0, 2.0, 3.0, 100.0, 50.0])
    used = np.array([True, True, True, True, False])
    # median of used norms [1, 2, 3, 100] = 2.5 → bound 5 → factor 5/100 for row 3
    np.testing.assert_allclose(
        norm_bound_factors(norms, used, 2.0), [1.0, 1.0, 1.0, 0.05, 0.1]
    )


def test_default_aggregate_is_the_weighted_mean_of_accepted_rows() -> None:
    strategy = TrustedFedAvg(norm_bound_ratio=None)
    federation = Federation(3)
    deltas, claims, _ = federation.round("sign_flip")
    outcome = strategy.aggregate_updates(1, batch_of(deltas, claims, 1))
    np.testing.assert_allclose(outcome.delta, outcome.weights @ deltas, atol=1e-12)
    assert outcome.weights.sum() == pytest.approx(1.0)


def test_median_variant_uses_the_coordinate_median_of_accepted_rows() -> None:
    strategy = TrustedMedianFedAvg()
    deltas, claims, _ = Federation(4).round("sign_flip")
    outcome = strategy.aggregate_updates(1, batch_of(deltas, claims, 1))
    used = outcome.weights > 0
    np.testing.assert_allclose(outcome.delta, np.median(deltas[used], axis=0))
    np.testing.assert_allclose(outcome.weights[used], 1.0 / used.sum())


def test_robust_rule_instances_and_names() -> None:
    deltas, claims, _ = Federation(5).round("none")
    rule = aggregators.TrimmedMean(beta=0.1)
    outcome = TrustedFedAvg(robust_rule=rule).aggregate_updates(
        1, batch_of(deltas, claims, 1)
    )
    used = outcome.weights > 0
    np.testing.assert_allclose(outcome.delta, rule(deltas[used]))
    with pytest.raises(ValueError, match="unknown robust_rule"):
        TrustedFedAvg(robust_rule="krum-ish")
    with pytest.raises(ValueError, match="norm_bound_ratio"):
        TrustedFedAvg(norm_bound_ratio=0.5)


# ------------------------------------------------------------- Flower messages

REFERENCE = {
    "w": np.zeros((10, 30), dtype=np.float64),
    "b": np.zeros(30, dtype=np.float64),
}
FLAT = 330


def replies_for(deltas: np.ndarray, claims: np.ndarray, identities: list[str]) -> list:
    replies = []
    for row, (delta, claim, identity) in enumerate(
        zip(deltas, claims, identities, strict=True)
    ):
        arrays = {"w": delta[:300].reshape(10, 30), "b": delta[300:]}
        replies.append(
            make_train_reply(arrays, int(claim), node_id=100 + row, identity=identity)
        )
    return replies


def message_round(
    strategy: TrustedFedAvg,
    server_round: int,
    rng: np.random.Generator,
    direction: np.ndarray,
    flipped: int,
) -> None:
    deltas = direction + 0.5 * rng.standard_normal((10, FLAT)) / np.sqrt(FLAT)
    deltas[:flipped] *= -1.0
    identities = [f"peer-{row}" for row in range(10)]
    strategy.set_reference(REFERENCE)
    strategy.aggregate_train(
        server_round, replies_for(deltas, np.full(10, 50), identities)
    )


def test_end_to_end_reputation_persists_and_recorder_sees_everything() -> None:
    store = InMemoryStore()
    rng = np.random.default_rng(7)
    direction = rng.standard_normal(FLAT)
    direction /= np.linalg.norm(direction)
    strategy = TrustedFedAvg(recorder=store)
    assert strategy.book.store is store  # the recorder doubles as the store
    for server_round in (1, 2, 3):
        message_round(strategy, server_round, rng, direction, flipped=2)
    assert [report.server_round for report in store.rounds] == [1, 2, 3]
    for report in store.rounds:
        assert len(report.contributions) == 10
        assert report.aggregate_sha256 is not None
        for contribution in report.contributions:
            assert "cosine" in contribution.scores
        flipped = [
            c for c in report.contributions if c.identity in {"peer-0", "peer-1"}
        ]
        assert all(c.verdict is Verdict.REJECTED and c.weight == 0 for c in flipped)
        assert sum(c.weight for c in report.contributions) == pytest.approx(1.0)
    honest = store.get_reputation("peer-5")
    attacker = store.get_reputation("peer-0")
    assert honest is not None and attacker is not None
    # Gains are slow: 0.5 → 0.525 → 0.54875 → 0.5713125
    assert honest.score == pytest.approx(0.5713125)
    assert honest.rounds_accepted == 3
    assert attacker.score < 0.15 and attacker.banned_until > 3

    # A new strategy over the same store (a restart) knows the attacker is banned.
    restarted = TrustedFedAvg(recorder=store)
    message_round(restarted, 4, rng, direction, flipped=0)
    latest = {c.identity: c for c in store.rounds[-1].contributions}
    assert latest["peer-0"].verdict is Verdict.REJECTED
    assert latest["peer-0"].reason == f"banned until round {attacker.banned_until}"
    assert latest["peer-1"].reason.startswith("banned until round")
    # The honest peers hold all the weight; the robust stage (f = ⌊0.3 · 8⌋ = 2)
    # keeps a total CAF weight ≥ n − 2f, so at least 4 of them weigh something.
    honest_weights = [latest[f"peer-{i}"].weight for i in range(2, 10)]
    assert sum(honest_weights) == pytest.approx(1.0)
    assert sum(weight > 0 for weight in honest_weights) >= 4


def test_ban_expires_after_ban_rounds() -> None:
    policy = ReputationPolicy(ban_rounds=2)
    store = InMemoryStore()
    strategy = TrustedFedAvg(policy=policy, recorder=store)
    rng = np.random.default_rng(8)
    direction = rng.standard_normal(FLAT)
    direction /= np.linalg.norm(direction)
    message_round(strategy, 1, rng, direction, flipped=1)
    message_round(strategy, 2, rng, direction, flipped=1)  # 0.3 → 0.14: banned
    state = store.get_reputation("peer-0")
    assert state is not None and state.banned_until == 4
    message_round(strategy, 3, rng, direction, flipped=0)
    assert store.rounds[-1].contributions[0].reason == "banned until round 4"
    message_round(strategy, 4, rng, direction, flipped=0)  # judged again, honest now
    back = store.rounds[-1].contributions[0]
    assert back.verdict is not Verdict.REJECTED and back.weight > 0


def test_round_where_everything_is_rejected_reports_the_rejections() -> None:
    store = InMemoryStore()
    strategy = TrustedFedAvg(recorder=store)
    stale = np.ones(FLAT)
    strategy.set_reference(REFERENCE)
    identities = [f"peer-{row}" for row in range(4)]
    replies = replies_for(np.tile(stale, (4, 1)), np.full(4, 10), identities)
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is None and metrics is None
    report = store.rounds[-1]
    assert report.aggregate_sha256 is None
    assert all(c.verdict is Verdict.REJECTED for c in report.contributions)
    assert all("collusion" in c.reason for c in report.contributions)
    for identity in identities:
        state = store.get_reputation(identity)
        # newcomer 0.5, rejected: 0.8 · 0.5 − 0.15
        assert state is not None and state.score == pytest.approx(0.25)


def test_detectors_only_variant_hands_no_reputations() -> None:
    class Capturing:
        def __init__(self) -> None:
            self.calls: list[tuple[RoundReport, list[ReputationState]]] = []

        def record_round(
            self, report: RoundReport, reputations: Sequence[ReputationState]
        ) -> None:
            self.calls.append((report, list(reputations)))

    recorder = Capturing()
    strategy = DetectorsOnlyFedAvg(recorder=recorder)
    rng = np.random.default_rng(9)
    direction = rng.standard_normal(FLAT)
    direction /= np.linalg.norm(direction)
    message_round(strategy, 1, rng, direction, flipped=2)
    report, reputations = recorder.calls[0]
    assert reputations == []
    assert sum(c.verdict is Verdict.REJECTED for c in report.contributions) == 2
    assert strategy.reputations() == []


def test_established_clients_reach_higher_tiers() -> None:
    store = InMemoryStore()
    strategy = TrustedFedAvg(recorder=store)
    rng = np.random.default_rng(10)
    direction = rng.standard_normal(FLAT)
    direction /= np.linalg.norm(direction)
    for server_round in range(1, 9):
        message_round(strategy, server_round, rng, direction, flipped=0)
    tiers = {state.tier for state in store.all_reputations()}
    # 8 accepted rounds from 0.5 at gain rate 0.05: 1 − 0.5·0.95⁸ ≈ 0.668 → Silver
    # (Platinum, 0.9, takes 32: tiers are earned slowly).
    assert tiers == {Tier.SILVER}
    scores = [state.score for state in store.all_reputations()]
    assert scores == pytest.approx([1 - 0.5 * 0.95**8] * len(scores))


def test_heterogeneous_sign_flippers_that_matter_are_rejected_then_banned() -> None:
    """Non-IID honest clients (as measured on digits, Dirichlet α = 0.5).

    Honest deltas: a weak shared direction plus a persistent client-specific one
    three times longer, so that honest cosines to the consensus spread widely and a
    flipped update looks like one more honest outlier to a z-score. The flips that
    matter, those of clients agreeing with the honest mean, must lose all weight and
    end banned; the aggregate must keep the honest direction.
    """
    rng = np.random.default_rng(7)
    shared = rng.standard_normal(WIDTH)
    shared *= 0.3 / np.linalg.norm(shared)
    own = rng.standard_normal((CLIENTS, WIDTH))
    own *= rng.uniform(0.2, 0.7, (CLIENTS, 1)) / np.linalg.norm(
        own, axis=1, keepdims=True
    )
    strategy = TrustedFedAvg()
    claims = np.full(CLIENTS, 100)
    for server_round in range(1, 5):
        # Fresh noise of norm 0.2: real honest updates change between rounds.
        fresh = 0.2 * rng.standard_normal((CLIENTS, WIDTH)) / np.sqrt(WIDTH)
        honest = shared + own + fresh
        honest_mean = honest[MALICIOUS:].mean(axis=0)
        agreement = np.array([cosine(row, honest_mean) for row in honest[:MALICIOUS]])
        deltas = honest.copy()
        deltas[:MALICIOUS] = -honest[:MALICIOUS]
        batch = batch_of(deltas, claims, server_round)
        outcome = strategy.aggregate_updates(server_round, batch)
        strategy.record_round(aggregated_report(server_round, batch, outcome))
        harmful = agreement >= 0.6
        assert harmful.any()
        assert np.all(outcome.weights[:MALICIOUS][harmful] == 0.0), outcome.reasons
        assert cosine(outcome.delta, honest_mean) > 0.9
        honest_lowered = sum(
            v is not Verdict.ACCEPTED for v in outcome.verdicts[MALICIOUS:]
        )
        assert honest_lowered <= 1, outcome.reasons
    banned = [
        state
        for state in strategy.reputations()
        if state.identity in {f"client-{row}" for row in np.flatnonzero(harmful)}
    ]
    assert banned and all(state.banned_until > 4 for state in banned)


def test_detectors_are_chosen_from_conf_and_default_to_todays_panel() -> None:
    """conf/strategy/trusted.yaml lists the panel with Hydra ``_target_`` entries;
    built once by build_strategy, it is exactly the default panel."""
    from flp2p.config import RunSettings, build_strategy, compose

    settings = RunSettings.from_config(
        compose(["strategy=trusted", "attack=none", "privacy=none"])
    )
    built = build_strategy(settings)
    assert isinstance(built, TrustedFedAvg)
    assert built.panel == DetectorPanel()
    # A changed threshold and a shorter list, as a run would override them.
    settings = RunSettings.from_config(
        compose(
            [
                "strategy=trusted",
                "attack=none",
                "privacy=none",
                "strategy.detectors=[{_target_: strategies.detection.NormOutlier,"
                " reject_at: 8.0}]",
            ]
        )
    )
    assert build_strategy(settings).panel.detectors == (NormOutlier(reject_at=8.0),)


def test_detectors_parameter_replaces_the_panel() -> None:
    chosen = (NormOutlier(reject_at=8.0), FreeRider())
    strategy = TrustedFedAvg(detectors=list(chosen))
    assert strategy.panel == DetectorPanel(chosen)
    assert DetectorsOnlyFedAvg(detectors=chosen).panel.detectors == chosen
    assert TrustedMedianFedAvg(detectors=chosen).panel.detectors == chosen
    with pytest.raises(ValueError, match="not both"):
        TrustedFedAvg(detectors=chosen, panel=DetectorPanel())
    with pytest.raises(TypeError, match="Detector objects"):
        TrustedFedAvg(detectors=["norm"])  # type: ignore[list-item]
