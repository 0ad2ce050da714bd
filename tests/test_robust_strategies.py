"""The never-abort base strategy and the robust rules built on it.

Expected values are computed independently (plain numpy on the client models), not
copied from the implementation.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import FedAvg, FedMedian
from flwr.serverapp.strategy.multikrum import compute_distances
from helpers_messages import (
    array_record,
    make_error_reply,
    make_evaluate_reply,
    make_reply,
    make_train_reply,
)

from strategies import aggregators
from strategies.base import (
    AggregationOutcome,
    InsufficientReplies,
    ScreenedFedAvg,
    UpdateBatch,
    flatten_arrays,
    unflatten_vector,
    weighted_metric_average,
)
from strategies.bulyan import Bulyan
from strategies.centered_clipping import CenteredClipping
from strategies.geometric_median import GeometricMedian
from strategies.krum import Krum, MultiKrum
from strategies.median import Median
from strategies.preaggregation import NearestNeighbourMixing
from strategies.records import (
    ARRAYS_KEY,
    InMemoryStore,
    RoundReport,
    Verdict,
    update_sha256,
)
from strategies.robust_rule import (
    AcceptEveryRow,
    RobustRuleFedAvg,
    RoundRule,
    with_fraction,
)
from strategies.trimmed_mean import TrimmedMean

RNG_SEED = 20240607
REFERENCE: dict[str, np.ndarray] = {
    "layer.weight": np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(3, 4),
    "layer.bias": np.array([0.5, -0.25, 0.125], dtype=np.float32),
    "bn.num_batches_tracked": np.array(10, dtype=np.int64),
}


def shifted_model(
    rng: np.random.Generator, scale: float = 0.1
) -> dict[str, np.ndarray]:
    """A client model near the reference (float arrays perturbed, counter + 1)."""
    return {
        "layer.weight": (
            REFERENCE["layer.weight"] + scale * rng.standard_normal((3, 4))
        ).astype(np.float32),
        "layer.bias": (REFERENCE["layer.bias"] + scale * rng.standard_normal(3)).astype(
            np.float32
        ),
        "bn.num_batches_tracked": np.array(11, dtype=np.int64),
    }


class FakeGrid:
    """Just enough of a Grid for ``configure_train``'s node sampling."""

    def get_node_ids(self) -> list[int]:
        return [101, 102, 103]


def configured(strategy: ScreenedFedAvg, server_round: int = 1) -> list[Message]:
    """Run ``configure_train`` with the reference model, as ``start()`` would."""
    return list(
        strategy.configure_train(
            server_round,
            array_record(REFERENCE),
            ConfigRecord(),
            cast(Grid, FakeGrid()),
        )
    )


def good_replies(
    count: int, seed: int = RNG_SEED
) -> tuple[list[Message], list[dict[str, np.ndarray]], list[int]]:
    rng = np.random.default_rng(seed)
    models = [shifted_model(rng) for _ in range(count)]
    examples = [int(n) for n in rng.integers(1, 100, size=count)]
    replies = [
        make_train_reply(
            model,
            n,
            node_id=index + 1,
            identity=f"peer-{index}",
            metrics={"loss": float(index)},
        )
        for index, (model, n) in enumerate(zip(models, examples, strict=True))
    ]
    return replies, models, examples


def malformed_replies() -> list[Message]:
    """Three kinds Flower's FedAvg cannot survive or filter."""
    rng = np.random.default_rng(7)
    missing_bias = {k: v for k, v in shifted_model(rng).items() if k != "layer.bias"}
    with_nan = shifted_model(rng)
    with_nan["layer.weight"][0, 0] = np.nan
    return [
        make_train_reply(missing_bias, 10, node_id=91, identity="bad-keys"),
        make_train_reply(with_nan, 10, node_id=92, identity="bad-nan"),
        make_train_reply(shifted_model(rng), 0, node_id=93, identity="bad-count"),
    ]


def weighted_mean_model(
    models: list[dict[str, np.ndarray]], examples: list[int]
) -> dict[str, np.ndarray]:
    """Reference FedAvg in float64, per array, cast back to the reference dtype."""
    weights = np.asarray(examples, dtype=np.float64) / sum(examples)
    result = {}
    for name, like in REFERENCE.items():
        stacked = np.stack([model[name].astype(np.float64) for model in models])
        mean = np.tensordot(weights, stacked, axes=1)
        result[name] = (np.rint(mean) if like.dtype.kind == "i" else mean).astype(
            like.dtype
        )
    return result


def as_numpy(record: ArrayRecord | None) -> dict[str, np.ndarray]:
    assert record is not None
    return {name: array.numpy() for name, array in record.items()}


# ============================================================ base: ScreenedFedAvg


def test_flatten_then_unflatten_round_trips_shapes_and_dtypes() -> None:
    vector = flatten_arrays(REFERENCE)
    assert vector.dtype == np.float64
    assert vector.shape == (12 + 3 + 1,)
    restored = unflatten_vector(vector, REFERENCE)
    assert list(restored) == list(REFERENCE)
    for name, expected in REFERENCE.items():
        assert restored[name].dtype == expected.dtype
        np.testing.assert_array_equal(restored[name], expected)


def test_unflatten_rounds_integer_arrays_and_checks_length() -> None:
    template = {"count": np.array([0, 0], dtype=np.int64)}
    np.testing.assert_array_equal(
        unflatten_vector(np.array([2.6, -1.6]), template)["count"], [3, -2]
    )
    with pytest.raises(ValueError, match="template needs"):
        unflatten_vector(np.zeros(3), template)


def test_weighted_metric_average_by_hand() -> None:
    metrics = [{"loss": 1.0, "acc": 0.5}, {"loss": 3.0}, {"loss": 100.0}]
    # Third reply has weight 0: it must not count. acc only reported by the first.
    assert weighted_metric_average(metrics, [1.0, 3.0, 0.0]) == {
        "loss": (1.0 * 1 + 3.0 * 3) / 4,
        "acc": 0.5,
    }


def test_five_good_three_malformed_aggregates_exactly_the_good_ones() -> None:
    replies, models, examples = good_replies(5)
    bad = malformed_replies()
    mixed = [
        replies[0],
        bad[0],
        replies[1],
        replies[2],
        bad[1],
        replies[3],
        bad[2],
        replies[4],
        make_error_reply(94, "client crashed"),
    ]
    store = InMemoryStore()
    strategy = ScreenedFedAvg(recorder=store)
    configured(strategy)

    arrays, metrics = strategy.aggregate_train(1, mixed)

    expected = weighted_mean_model(models, examples)
    result = as_numpy(arrays)
    for name, value in expected.items():
        assert result[name].dtype == value.dtype
        np.testing.assert_allclose(result[name], value, rtol=1e-6, atol=1e-7)
    assert metrics is not None
    expected_loss = sum(i * n for i, n in enumerate(examples)) / sum(examples)
    assert metrics["loss"] == pytest.approx(expected_loss)

    (report,) = store.rounds
    assert report.server_round == 1
    assert report.aggregate_sha256 == update_sha256(result)
    rejected = {
        c.identity: c.reason
        for c in report.contributions
        if c.verdict is Verdict.REJECTED
    }
    assert rejected == {
        "bad-keys": "missing arrays ['layer.bias']",
        "bad-nan": "array 'layer.weight' contains NaN or Inf",
        "bad-count": "metric 'num-examples' must be positive, got 0",
        "node-94": "error reply: client crashed",
    }
    accepted = report.accepted
    assert [c.identity for c in accepted] == [f"peer-{i}" for i in range(5)]
    np.testing.assert_allclose(
        [c.weight for c in accepted], np.asarray(examples) / sum(examples)
    )
    assert [c.num_examples for c in accepted] == examples
    assert all(
        c.weight == 0.0 and c.num_examples == 0
        for c in report.contributions
        if c.verdict is Verdict.REJECTED
    )


def test_flower_fedavg_aborts_on_the_same_replies() -> None:
    replies, _, _ = good_replies(5)
    mixed = replies + malformed_replies()
    with pytest.raises(InconsistentMessageReplies):
        FedAvg().aggregate_train(1, mixed)


def test_flower_fedavg_is_poisoned_by_one_nan_reply() -> None:
    replies, _, _ = good_replies(5)
    nan_model = shifted_model(np.random.default_rng(1))
    nan_model["layer.weight"][1, 2] = np.nan
    # Same metric keys as the good replies, so Flower's consistency check passes.
    with_nan = make_train_reply(nan_model, 10, 60, "nan-peer", {"loss": 0.0})
    flower, _ = FedAvg().aggregate_train(1, [*replies, with_nan])
    assert np.isnan(as_numpy(flower)["layer.weight"]).any()

    strategy = ScreenedFedAvg()
    configured(strategy)
    ours, _ = strategy.aggregate_train(1, [*replies, with_nan])
    assert np.isfinite(as_numpy(ours)["layer.weight"]).all()


def test_no_valid_reply_keeps_the_model_and_still_reports() -> None:
    store = InMemoryStore()
    strategy = ScreenedFedAvg(recorder=store)
    configured(strategy)

    assert strategy.aggregate_train(3, malformed_replies()) == (None, None)
    (report,) = store.rounds
    assert report.server_round == 3
    assert report.aggregate_sha256 is None
    assert [c.verdict for c in report.contributions] == [Verdict.REJECTED] * 3


def test_duplicate_identity_counts_once() -> None:
    replies, models, examples = good_replies(2)
    rng = np.random.default_rng(3)
    # Of two replies under one identity the one with the smaller update digest
    # stays (canonical, whatever the arrival order): make the impostor's larger.
    impostor_model = shifted_model(rng, scale=5.0)
    while update_sha256(impostor_model) < update_sha256(models[0]):
        impostor_model = shifted_model(rng, scale=5.0)
    impostor = make_train_reply(impostor_model, 1000, node_id=50, identity="peer-0")

    for arrival in ([*replies, impostor], [impostor, *replies]):
        store = InMemoryStore()
        strategy = ScreenedFedAvg(recorder=store)
        configured(strategy)

        arrays, _ = strategy.aggregate_train(1, arrival)

        expected = weighted_mean_model(models, examples)
        np.testing.assert_allclose(
            as_numpy(arrays)["layer.weight"], expected["layer.weight"], rtol=1e-6
        )
        rejected = [
            (c.node_id, c.verdict, c.reason)
            for c in store.rounds[0].contributions
            if c.verdict is Verdict.REJECTED
        ]
        assert rejected == [(50, Verdict.REJECTED, "duplicate identity in this round")]


class NeedsThreeReplies(ScreenedFedAvg):
    def aggregate_updates(
        self, server_round: int, batch: UpdateBatch
    ) -> AggregationOutcome:
        if batch.size < 3:
            raise InsufficientReplies(f"need 3 valid replies, got {batch.size}")
        return super().aggregate_updates(server_round, batch)


class BrokenRule(ScreenedFedAvg):
    def aggregate_updates(
        self, server_round: int, batch: UpdateBatch
    ) -> AggregationOutcome:
        raise ZeroDivisionError("bug in a rule")


@pytest.mark.parametrize(
    ("strategy_class", "reason"),
    [
        (NeedsThreeReplies, "round not aggregated: need 3 valid replies, got 2"),
        (BrokenRule, "round not aggregated: aggregation failed (ZeroDivisionError"),
    ],
)
def test_failing_rule_skips_the_round_without_blaming_clients(
    strategy_class: type[ScreenedFedAvg], reason: str
) -> None:
    store = InMemoryStore()
    strategy = strategy_class(recorder=store)
    configured(strategy)

    assert strategy.aggregate_train(1, good_replies(2)[0]) == (None, None)
    contributions = store.rounds[0].contributions
    assert [c.verdict for c in contributions] == [Verdict.SKIPPED] * 2
    assert all(c.weight == 0.0 and c.reason.startswith(reason) for c in contributions)
    assert store.rounds[0].aggregate_sha256 is None


def test_overflowing_aggregate_keeps_the_previous_model() -> None:
    huge = {name: value.copy() for name, value in REFERENCE.items()}
    huge["layer.weight"] = np.full((3, 4), 3.0e38, dtype=np.float32)
    replies = [make_train_reply(huge, 1, 1, "a"), make_train_reply(huge, 1, 2, "b")]

    class DoubleStep(ScreenedFedAvg):
        def aggregate_updates(
            self, server_round: int, batch: UpdateBatch
        ) -> AggregationOutcome:
            weights = batch.example_weights()
            return AggregationOutcome.accept_all(2.0 * weights @ batch.deltas, weights)

    strategy = DoubleStep()
    configured(strategy)
    assert strategy.aggregate_train(1, replies) == (None, None)


def test_aggregate_train_without_reference_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="configure_train"):
        ScreenedFedAvg().aggregate_train(1, good_replies(2)[0])


def test_configure_train_still_sends_the_model_and_remembers_it() -> None:
    strategy = ScreenedFedAvg()
    messages = configured(strategy, server_round=4)
    assert {m.metadata.dst_node_id for m in messages} == {101, 102, 103}
    assert strategy.reference is not None
    assert list(strategy.reference) == list(REFERENCE)
    sent = as_numpy(cast(ArrayRecord, messages[0].content[ARRAYS_KEY]))
    np.testing.assert_array_equal(sent["layer.bias"], REFERENCE["layer.bias"])


def test_int_counter_follows_the_clients() -> None:
    replies, _, _ = good_replies(3)
    strategy = ScreenedFedAvg()
    configured(strategy)
    arrays, _ = strategy.aggregate_train(1, replies)
    counter = as_numpy(arrays)["bn.num_batches_tracked"]
    assert counter.dtype == np.int64
    assert int(counter) == 11


def test_custom_metric_function_receives_only_accepted_contents() -> None:
    seen: list[list[RecordDict]] = []

    def count_replies(contents: list[RecordDict], key: str) -> MetricRecord:
        seen.append(contents)
        return MetricRecord({"replies": len(contents)})

    replies, _, _ = good_replies(3)
    strategy = ScreenedFedAvg(train_metrics_aggr_fn=count_replies)
    configured(strategy)
    _, metrics = strategy.aggregate_train(1, [*replies, *malformed_replies()])
    assert metrics is not None
    assert metrics["replies"] == 3
    assert seen[0] == [reply.content for reply in replies]


def test_aggregate_evaluate_drops_malformed_replies() -> None:
    replies = [
        make_evaluate_reply(10, 1, {"accuracy": 0.9}),
        make_evaluate_reply(30, 2, {"accuracy": 0.5}),
        make_evaluate_reply(0, 3, {"accuracy": 0.0}),
        make_error_reply(4),
        make_reply(RecordDict({"a": MetricRecord({"accuracy": 1.0})}), 5),
    ]
    with pytest.raises(InconsistentMessageReplies):
        FedAvg().aggregate_evaluate(1, replies)

    metrics = ScreenedFedAvg().aggregate_evaluate(1, replies)
    assert metrics is not None
    assert metrics["accuracy"] == pytest.approx((0.9 * 10 + 0.5 * 30) / 40)
    assert ScreenedFedAvg().aggregate_evaluate(1, replies[2:]) is None


def snapshot_arrays(replies: list[Message]) -> list[dict[str, bytes]]:
    return [
        {
            name: array.data
            for name, array in cast(ArrayRecord, reply.content[ARRAYS_KEY]).items()
        }
        for reply in replies
    ]


def test_flower_fedmedian_empties_the_replies_and_ours_does_not() -> None:
    replies, _, _ = good_replies(3)
    FedMedian().aggregate_train(1, replies)
    assert all(len(reply.content[ARRAYS_KEY]) == 0 for reply in replies)

    replies, _, _ = good_replies(3)
    before = copy.deepcopy(snapshot_arrays(replies))
    strategy = ScreenedFedAvg()
    configured(strategy)
    strategy.aggregate_train(1, replies)
    assert snapshot_arrays(replies) == before


def test_outcome_rejects_inconsistent_hook_results() -> None:
    with pytest.raises(ValueError, match="sum to"):
        AggregationOutcome.accept_all(np.zeros(2), np.array([0.5, 0.6]))
    with pytest.raises(ValueError, match="non-negative"):
        AggregationOutcome.accept_all(np.zeros(2), np.array([1.5, -0.5]))
    with pytest.raises(ValueError, match="out of range"):
        AggregationOutcome.select(np.zeros(2), 3, [3], "not selected")


def test_record_round_is_the_override_point() -> None:
    reports: list[RoundReport] = []

    class Recording(ScreenedFedAvg):
        def record_round(self, report: RoundReport) -> None:
            reports.append(report)

    strategy = Recording()
    configured(strategy)
    strategy.aggregate_train(2, good_replies(2)[0])
    assert [r.server_round for r in reports] == [2]


# ================================================================= robust rules


def byzantine_round(
    honest: int = 9, seed: int = 5
) -> tuple[list[Message], np.ndarray, list[str]]:
    """``honest`` good replies, two far-away (well-formed) attackers, two malformed.

    Returns the replies, the well-formed rows' float64 deltas computed here (not by
    base.py) and the identities of the well-formed rows in reply order.
    """
    rng = np.random.default_rng(seed)
    models = [shifted_model(rng) for _ in range(honest)]
    for _ in range(2):
        attacker = shifted_model(rng)
        attacker["layer.weight"] = attacker["layer.weight"] - np.float32(50.0)
        models.append(attacker)
    replies = [
        make_train_reply(model, 10 + index, index + 1, f"peer-{index:02d}")
        for index, model in enumerate(models)
    ]
    replies += malformed_replies()[:2]
    origin = np.concatenate([v.astype(np.float64).ravel() for v in REFERENCE.values()])
    deltas = np.stack(
        [
            np.concatenate([v.astype(np.float64).ravel() for v in model.values()])
            - origin
            for model in models
        ]
    )
    return replies, deltas, [f"peer-{index:02d}" for index in range(len(models))]


def model_from_delta(delta: np.ndarray) -> dict[str, np.ndarray]:
    """Reference + delta, cast per array (independent of base.unflatten_vector)."""
    result, offset = {}, 0
    for name, like in REFERENCE.items():
        values = like.astype(np.float64).ravel() + delta[offset : offset + like.size]
        if like.dtype.kind == "i":
            values = np.rint(values)
        result[name] = values.astype(like.dtype).reshape(like.shape)
        offset += like.size
    return result


def run_round(
    strategy: ScreenedFedAvg, replies: list[Message]
) -> tuple[ArrayRecord | None, RoundReport]:
    store = InMemoryStore()
    strategy.recorder = store
    configured(strategy)
    arrays, _ = strategy.aggregate_train(1, replies)
    return arrays, store.rounds[0]


RULES: dict[
    str, tuple[Callable[[], ScreenedFedAvg], Callable[[np.ndarray], np.ndarray]]
]
RULES = {
    "median": (Median, lambda x: np.median(x, axis=0)),
    "trimmed_mean": (
        lambda: TrimmedMean(beta=0.2),
        aggregators.TrimmedMean(0.2),
    ),
    "krum": (lambda: Krum(num_malicious_nodes=2), aggregators.Krum(f=2)),
    "multikrum": (
        lambda: MultiKrum(num_malicious_nodes=2, num_nodes_to_select=4),
        aggregators.MultiKrum(f=2, m=4),
    ),
    "bulyan": (lambda: Bulyan(num_malicious_nodes=2), aggregators.Bulyan(f=2)),
    "geometric_median": (GeometricMedian, aggregators.GeometricMedian()),
    "centered_clipping": (
        lambda: CenteredClipping(tau=1.0, iterations=3),
        aggregators.CenteredClipping(tau=1.0, iterations=3),
    ),
}


@pytest.mark.parametrize("name", sorted(RULES))
def test_rule_equals_pure_rule_on_valid_deltas(name: str) -> None:
    make_strategy, pure_rule = RULES[name]
    replies, deltas, identities = byzantine_round()
    before = copy.deepcopy(snapshot_arrays(replies[:-2]))

    arrays, report = run_round(make_strategy(), replies)

    expected = model_from_delta(pure_rule(deltas))
    result = as_numpy(arrays)
    for array_name, value in expected.items():
        assert result[array_name].dtype == value.dtype
        np.testing.assert_allclose(result[array_name], value, rtol=1e-6, atol=1e-7)
    # The attackers moved layer.weight by -50; no robust rule lets that through.
    np.testing.assert_allclose(
        result["layer.weight"], REFERENCE["layer.weight"], atol=1.0
    )
    assert snapshot_arrays(replies[:-2]) == before, "a robust rule mutated a reply"
    assert [c.identity for c in report.contributions[:-2]] == identities
    assert [c.verdict for c in report.contributions[-2:]] == [Verdict.REJECTED] * 2
    assert sum(c.weight for c in report.contributions) == pytest.approx(1.0)


def brute_force_krum_scores(deltas: np.ndarray, f: int) -> list[float]:
    """Blanchard et al. (2017) score, by explicit loops."""
    n = len(deltas)
    scores = []
    for i in range(n):
        distances = sorted(
            float(np.sum((deltas[i] - deltas[j]) ** 2)) for j in range(n) if j != i
        )
        scores.append(sum(distances[: n - f - 2]))
    return scores


@pytest.mark.parametrize(("m", "name"), [(1, "Krum"), (4, "Multi-Krum")])
def test_krum_selection_matches_brute_force(m: int, name: str) -> None:
    replies, deltas, identities = byzantine_round()
    strategy = (
        Krum(num_malicious_nodes=2)
        if m == 1
        else MultiKrum(num_malicious_nodes=2, num_nodes_to_select=m)
    )
    arrays, report = run_round(strategy, replies)

    scores = brute_force_krum_scores(deltas, f=2)
    chosen = sorted(np.argsort(scores, kind="stable")[:m])
    well_formed = report.contributions[: len(identities)]
    assert [i for i, c in enumerate(well_formed) if c.weight > 0] == chosen
    for contribution, score in zip(well_formed, scores, strict=True):
        assert contribution.scores["krum_score"] == pytest.approx(score, rel=1e-12)
        if contribution.weight == 0.0:
            assert contribution.verdict is Verdict.REJECTED
            assert contribution.reason == f"not selected by {name}"
        else:
            assert contribution.weight == pytest.approx(1 / m)
    assert not set(chosen) & {9, 10}, "an attacker was selected"
    if m == 1:
        winner = as_numpy(arrays)
        sent = cast(ArrayRecord, replies[chosen[0]].content[ARRAYS_KEY])
        for array_name, array in sent.items():
            np.testing.assert_array_equal(winner[array_name], array.numpy())


def test_flower_krum_distances_cancel_where_ours_are_exact() -> None:
    """Flower's float32 Gram identity loses every digit for close, large models."""
    rng = np.random.default_rng(0)
    size = 2000
    honest = [np.float32(1000.0) + rng.normal(0, 1e-3, size) for _ in range(6)]
    attacker = np.float32(1000.05) + rng.normal(0, 1e-3, size)
    models = [m.astype(np.float32) for m in [*honest, attacker]]
    exact = np.array(
        [
            [np.sum((a.astype(float) - b.astype(float)) ** 2) for b in models]
            for a in models
        ]
    )
    flower = compute_distances([ArrayRecord([m]) for m in models])
    assert np.abs(flower - exact).max() > 100 * exact.max()
    ours = aggregators.pairwise_squared_distances(np.stack(models))
    np.testing.assert_allclose(ours, exact, rtol=1e-12)


def test_median_and_trimmed_mean_by_hand() -> None:
    reference = {"w": np.zeros(2, dtype=np.float64)}
    rows = [[1.0, 10.0], [2.0, -4.0], [3.0, 0.0], [100.0, 1.0], [-7.0, 2.0]]
    replies = [
        make_train_reply({"w": np.array(row)}, 1, i + 1, f"p{i}")
        for i, row in enumerate(rows)
    ]
    for strategy, expected in [
        (Median(), [2.0, 1.0]),  # sorted columns: -7 1 2 3 100 | -4 0 1 2 10
        (TrimmedMean(beta=0.2), [2.0, 1.0]),  # mean(1,2,3) and mean(0,1,2)
        (TrimmedMean(beta=0.0), [99.0 / 5, 9.0 / 5]),
    ]:
        strategy.set_reference(reference)
        arrays, _ = strategy.aggregate_train(1, replies)
        np.testing.assert_allclose(as_numpy(arrays)["w"], expected, rtol=1e-15)


@pytest.mark.parametrize(
    ("strategy", "reason"),
    [
        (
            Krum(num_malicious_nodes=2),
            "Krum with f=2, m=1 needs 7 valid replies, got 5",
        ),
        (
            MultiKrum(num_malicious_nodes=0, num_nodes_to_select=6),
            "Multi-Krum with f=0, m=6 needs 6 valid replies, got 5",
        ),
        (Bulyan(num_malicious_nodes=1), "Bulyan with f=1 needs 7 valid replies, got 5"),
    ],
)
def test_too_few_replies_skip_the_round(strategy: ScreenedFedAvg, reason: str) -> None:
    arrays, report = run_round(strategy, good_replies(5)[0])
    assert arrays is None
    assert report.aggregate_sha256 is None
    assert {c.reason for c in report.contributions} == {
        f"round not aggregated: {reason}"
    }


@pytest.mark.parametrize(
    "build",
    [
        lambda: TrimmedMean(beta=0.5),
        lambda: Krum(num_malicious_nodes=-1),
        lambda: MultiKrum(num_nodes_to_select=0),
        lambda: Bulyan(num_malicious_nodes=1.5),  # type: ignore[arg-type]
        lambda: GeometricMedian(nu=0.0),
        lambda: CenteredClipping(tau=0.0),
    ],
)
def test_bad_parameters_fail_at_construction(
    build: Callable[[], ScreenedFedAvg],
) -> None:
    with pytest.raises(ValueError, match="must"):
        build()


def test_geometric_median_weights_far_rows_less() -> None:
    replies, _, _ = byzantine_round()
    _, report = run_round(GeometricMedian(), replies)
    weights = [c.weight for c in report.contributions[:11]]
    distances = [
        c.scores["distance_to_geometric_median"] for c in report.contributions[:11]
    ]
    assert max(weights[9:]) < min(weights[:9]) / 10
    assert min(distances[9:]) > 10 * max(distances[:9])


def test_centered_clipping_starts_from_last_round() -> None:
    replies, deltas, _ = byzantine_round()
    strategy = CenteredClipping(tau=1.0, iterations=1)
    run_round(strategy, replies)
    first = aggregators.CenteredClipping(tau=1.0)(deltas)
    assert strategy.center is not None
    np.testing.assert_array_equal(strategy.center, first)

    arrays, _ = run_round(strategy, replies)
    second = aggregators.CenteredClipping(tau=1.0, center=first)(deltas)
    expected = model_from_delta(second)
    np.testing.assert_allclose(
        as_numpy(arrays)["layer.weight"], expected["layer.weight"], rtol=1e-6
    )


def test_example_serverapp_imports_and_builds() -> None:
    path = Path(__file__).parents[1] / "examples" / "robust_serverapp.py"
    spec = importlib.util.spec_from_file_location("robust_serverapp_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert isinstance(module.app, ServerApp)
    assert isinstance(module.Median(), ScreenedFedAvg)


def test_any_rule_becomes_a_strategy_through_the_adapter() -> None:
    """A pure rule with no strategy class of its own: every row accepted with 1/n."""
    replies, deltas, identities = byzantine_round()
    arrays, report = run_round(
        RobustRuleFedAvg(rule=aggregators.TrimmedMean(0.1)), replies
    )
    expected = model_from_delta(aggregators.TrimmedMean(0.1)(deltas))
    result = as_numpy(arrays)
    for array_name, value in expected.items():
        np.testing.assert_allclose(result[array_name], value, rtol=1e-6, atol=1e-7)
    valid = report.contributions[: len(identities)]
    assert [c.verdict for c in valid] == [Verdict.ACCEPTED] * len(identities)
    assert [c.weight for c in valid] == pytest.approx([1 / len(identities)] * 11)


def test_preaggregator_runs_before_the_rule() -> None:
    """``rule ∘ pre-aggregator``: the rule sees what the pre-aggregator returns."""
    seen: list[tuple[int, int]] = []

    def halve_and_pair(
        deltas: np.ndarray, weights: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        # Averages of consecutive pairs (bucketing with buckets of two).
        pairs = deltas.shape[0] // 2
        mixed = deltas[: 2 * pairs].reshape(pairs, 2, -1).mean(axis=1)
        seen.append((deltas.shape[0], pairs))
        return mixed, np.full(pairs, 1.0 / pairs)

    replies, deltas, identities = byzantine_round(honest=9)  # 11 well-formed rows
    strategy = RobustRuleFedAvg(
        rule=aggregators.CoordinateMedian(), preaggregator=halve_and_pair
    )
    arrays, report = run_round(strategy, replies)
    assert seen == [(11, 5)]
    buckets = deltas[:10].reshape(5, 2, -1).mean(axis=1)
    expected = model_from_delta(np.median(buckets, axis=0))
    for array_name, value in expected.items():
        np.testing.assert_allclose(
            as_numpy(arrays)[array_name], value, rtol=1e-6, atol=1e-7
        )
    # Rows mixed beyond telling apart: each reported accepted with its share.
    valid = report.contributions[: len(identities)]
    assert all(c.verdict is Verdict.ACCEPTED for c in valid)
    assert sum(c.weight for c in valid) == pytest.approx(1.0)


def test_identity_preaggregator_keeps_the_rules_row_decisions() -> None:
    replies = byzantine_round()[0]
    plain = run_round(Krum(num_malicious_nodes=2), replies)[1]
    piped = Krum(num_malicious_nodes=2)
    piped.preaggregator = lambda deltas, weights: (deltas, weights)
    report = run_round(piped, replies)[1]
    assert [c.verdict for c in report.contributions] == [
        c.verdict for c in plain.contributions
    ]
    assert [c.scores for c in report.contributions] == [
        c.scores for c in plain.contributions
    ]


def test_named_rules_are_configurations_of_the_adapter() -> None:
    for strategy in (
        Median(),
        TrimmedMean(),
        Krum(),
        MultiKrum(),
        Bulyan(),
        GeometricMedian(),
        CenteredClipping(),
    ):
        assert isinstance(strategy, RobustRuleFedAvg)
        assert isinstance(strategy.rule, RoundRule)


def test_a_round_not_aggregated_keeps_the_rules_rejections() -> None:
    """The hook's outcome is complete: when its aggregate cannot be applied, rows
    it rejected stay rejected with their reason; the others are skipped."""
    huge = {name: value.copy() for name, value in REFERENCE.items()}
    huge["layer.weight"] = np.full((3, 4), 3.0e38, dtype=np.float32)
    replies = [make_train_reply(huge, 1, 1, "a"), make_train_reply(huge, 1, 2, "b")]

    class RejectsSecondOverflows(ScreenedFedAvg):
        def aggregate_updates(
            self, server_round: int, batch: UpdateBatch
        ) -> AggregationOutcome:
            return AggregationOutcome(
                2.0 * batch.deltas[0],
                np.array([1.0, 0.0]),
                (Verdict.ACCEPTED, Verdict.REJECTED),
                ("", "too far"),
                ({"far": 0.0}, {"far": 9.0}),
            )

    store = InMemoryStore()
    strategy = RejectsSecondOverflows(recorder=store)
    configured(strategy)
    assert strategy.aggregate_train(1, replies) == (None, None)
    first, second = store.rounds[0].contributions
    assert first.verdict is Verdict.SKIPPED and first.weight == 0.0
    assert (
        first.reason
        == "round not aggregated: the aggregate overflows the model's dtype"
    )
    assert second.verdict is Verdict.REJECTED and second.reason == "too far"
    assert second.scores == {"far": 9.0}


def test_a_rule_is_registered_by_one_config_entry() -> None:
    """``_target_: strategies.RobustRuleFedAvg`` with a nested rule ``_target_`` is
    all a new rule needs in conf/strategy (build_strategy instantiates both)."""
    from flp2p.config import RunSettings, build_strategy, compose

    settings = RunSettings.from_config(
        compose(
            [
                "strategy=median",
                "attack=none",
                "strategy._target_=strategies.RobustRuleFedAvg",
                "+strategy.rule={_target_: strategies.aggregators.TrimmedMean,"
                " beta: 0.1}",
            ]
        )
    )
    strategy = build_strategy(settings)
    assert type(strategy) is RobustRuleFedAvg
    assert strategy.rule.describe() == "TrimmedMean, every row accepted"
    assert strategy.rule == AcceptEveryRow(aggregators.TrimmedMean(0.1))


# ------------------------------------------- f from byzantine_fraction (issue 14)


@pytest.mark.parametrize(
    ("build", "accepted", "needle"),
    [
        # n = 10: f = ⌊0.3 · 10⌋ = 3 (Krum's bound allows 3), m = n − f = 7.
        (MultiKrum, 7, "Multi-Krum, f = ⌊0.3 · n⌋"),
        (Krum, 1, "Krum, f = ⌊0.3 · n⌋"),
        # Bulyan's bound n ≥ 4f + 3 caps f at 1: θ = n − 2f = 8 rows selected.
        (Bulyan, 8, "capped by Bulyan's n ≥ 4f + 3"),
    ],
)
def test_default_f_comes_from_the_fraction_and_the_round(
    build: Callable[[], ScreenedFedAvg], accepted: int, needle: str
) -> None:
    strategy = build()
    assert needle in strategy.rule.describe()  # type: ignore[attr-defined]
    _, report = run_round(strategy, good_replies(10)[0])
    verdicts = [c.verdict for c in report.contributions]
    assert verdicts.count(Verdict.ACCEPTED) == accepted


def test_default_multikrum_is_not_plain_krum() -> None:
    arrays, report = run_round(MultiKrum(), good_replies(10)[0])
    assert arrays is not None
    assert sum(c.weight > 0 for c in report.contributions) == 7


def test_preaggregator_f_comes_from_the_fraction() -> None:
    mixing = with_fraction(NearestNeighbourMixing(), 0.3, 10)
    assert mixing == NearestNeighbourMixing(f=3)
    # capped for a strict honest majority: ⌊0.45 · 4⌋ = 1 ≤ (4 − 1) // 2
    assert with_fraction(NearestNeighbourMixing(), 0.45, 4).f == 1  # type: ignore[attr-defined]
    replies = good_replies(10)[0]
    from_fraction, _ = run_round(
        RobustRuleFedAvg(
            aggregators.CoordinateMedian(), preaggregator=NearestNeighbourMixing()
        ),
        replies,
    )
    fixed, _ = run_round(
        RobustRuleFedAvg(
            aggregators.CoordinateMedian(),
            preaggregator=NearestNeighbourMixing(f=3),
            byzantine_fraction=None,
        ),
        replies,
    )
    unmixed, _ = run_round(
        RobustRuleFedAvg(
            aggregators.CoordinateMedian(),
            preaggregator=NearestNeighbourMixing(),
            byzantine_fraction=None,
        ),
        replies,
    )
    assert from_fraction is not None and fixed is not None and unmixed is not None
    assert from_fraction.object_id == fixed.object_id
    assert from_fraction.object_id != unmixed.object_id
