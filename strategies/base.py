"""FedAvg that screens every reply and never lets one abort the run.

:class:`ScreenedFedAvg` keeps Flower's ``FedAvg`` interface (every constructor argument,
``start()``, sampling, configuration) and replaces what happens to the replies:

1. each reply is validated on its own (:func:`strategies.validation.validate_reply`)
   against the global model that ``configure_train`` sent; a bad reply becomes a
   rejected :class:`~strategies.records.Contribution` with its reason, never an
   exception (Flower's ``FedAvg`` raises ``InconsistentMessageReplies`` instead);
2. the valid replies become an :class:`UpdateBatch` of flat float64 *deltas*
   (client model − global model), a :class:`~strategies.delta_matrix.DeltaMatrix`
   over the replies' own bytes (read in column blocks, never copied whole), rows
   sorted by identity (:func:`canonical_key`), so that a round is reproducible from
   its replies whatever order they came in;
3. the hook :meth:`ScreenedFedAvg.aggregate_updates` turns the batch into an
   :class:`AggregationOutcome` (aggregate delta, weights, verdicts, reasons, scores);
   here it is the example-weighted mean of McMahan et al. (2017), robust rules and the
   reputation strategy override it;
4. the new global model is reference + delta, cast back to each array's dtype;
   when the rule used nobody, raised, or the aggregate overflows, the previous model
   stays and :func:`not_aggregated` completes the outcome (the rule's rejections
   kept, every other row ``skipped``): nothing is overwritten after the hook;
5. one :class:`~strategies.records.RoundReport` built from that outcome goes to
   :meth:`ScreenedFedAvg.record_round`, the only way the round leaves the strategy.

References
----------
McMahan, B., Moore, E., Ramage, D., Hampson, S., & Agüera y Arcas, B. (2017).
Communication-Efficient Learning of Deep Networks from Decentralized Data. AISTATS.
https://arxiv.org/abs/1602.05629
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from logging import ERROR, INFO, WARNING
from typing import TypedDict

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from strategies.aggregators import weighted_sum
from strategies.delta_matrix import DeltaMatrix
from strategies.records import (
    NUM_EXAMPLES_KEY,
    Contribution,
    ReplyAuthenticator,
    RoundRecorder,
    RoundReport,
    Verdict,
    update_sha256,
)
from strategies.validation import (
    RejectedReply,
    ValidReply,
    validate_evaluate_reply,
    validate_reply,
)

MetricsAggregationFn = Callable[[list[RecordDict], str], MetricRecord]
"""Flower's signature for ``train_metrics_aggr_fn`` / ``evaluate_metrics_aggr_fn``."""

_WORKER_THREADS = min(8, os.cpu_count() or 1)

WEIGHT_SUM_TOLERANCE = 1e-9
"""How far the weights of an :class:`AggregationOutcome` may sum from 1."""


class ScreenedFedAvgOptions(TypedDict, total=False):
    """Keyword arguments of :class:`ScreenedFedAvg`, for subclasses' ``**options``.

    A rule's constructor takes its own parameters explicitly and passes the rest on
    typed: ``def __init__(self, beta: float = 0.2,
    **options: Unpack[ScreenedFedAvgOptions])``.
    """

    fraction_train: float
    fraction_evaluate: float
    min_train_nodes: int
    min_evaluate_nodes: int
    min_available_nodes: int
    weighted_by_key: str
    arrayrecord_key: str
    configrecord_key: str
    train_metrics_aggr_fn: MetricsAggregationFn | None
    evaluate_metrics_aggr_fn: MetricsAggregationFn | None
    recorder: RoundRecorder | None
    authenticator: ReplyAuthenticator | None


class InsufficientReplies(Exception):
    """Raised by an aggregation hook when too few valid replies arrived for its rule.

    :class:`ScreenedFedAvg` catches it, keeps the previous global model and reports
    the round as not aggregated; the run goes on.
    """


@dataclass(frozen=True)
class UpdateBatch:
    """The valid replies of one round, as rows of flat float64 deltas.

    Attributes
    ----------
    identities : tuple[str, ...]
        Persistent identity of each row's sender.
    node_ids : tuple[int, ...]
        Flower node id of each row's sender.
    num_examples : np.ndarray
        ``(n,)`` int64, the example count each sender *claimed* (unverified).
    deltas : DeltaMatrix
        ``(n, d)`` float64, read-only: client model − global model, arrays
        concatenated in the reference's key order (:func:`flatten_arrays`). Lazy:
        values are computed per column block from the replies' arrays (an
        ``np.ndarray`` given here is wrapped with :meth:`DeltaMatrix.of`).
    digests : tuple[str, ...]
        :func:`strategies.records.update_sha256` of each reply's arrays.
    metrics : tuple[Mapping[str, float], ...]
        Finite scalar metrics each sender reported.
    reference : Mapping[str, np.ndarray]
        The global model the deltas are relative to.
    """

    identities: tuple[str, ...]
    node_ids: tuple[int, ...]
    num_examples: np.ndarray
    deltas: DeltaMatrix
    digests: tuple[str, ...]
    metrics: tuple[Mapping[str, float], ...]
    reference: Mapping[str, np.ndarray] = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.deltas, DeltaMatrix):
            # Frozen: the one place the field is set after __init__.
            object.__setattr__(self, "deltas", DeltaMatrix.of(self.deltas))
        rows = len(self.identities)
        if self.deltas.ndim != 2 or self.deltas.shape[0] != rows:
            raise ValueError(
                f"deltas must have shape ({rows}, d), got {self.deltas.shape}"
            )
        lengths = {
            len(self.node_ids),
            len(self.num_examples),
            len(self.digests),
            len(self.metrics),
        }
        if lengths != {rows}:
            raise ValueError("every per-row field of an UpdateBatch needs one entry")

    @property
    def size(self) -> int:
        """Number of rows (valid replies)."""
        return len(self.identities)

    def example_weights(self) -> np.ndarray:
        """Claimed example counts normalised to sum to 1 (FedAvg's weights)."""
        return example_weights(self.num_examples)


@dataclass(frozen=True)
class AggregationOutcome:
    """What an aggregation hook decided about one :class:`UpdateBatch`.

    Attributes
    ----------
    delta : np.ndarray
        ``(d,)`` float64 aggregate delta; the new global model is reference + delta.
    weights : np.ndarray
        ``(n,)`` share of each row in the aggregate: non-negative, summing to 1 over
        the rows used (0 for rows left out). All zero means nothing was used; the
        strategy then keeps the previous global model, and the recorder still sees
        every row's verdict, reason and scores (see :func:`not_aggregated`).
    verdicts : tuple[Verdict, ...]
        Per row.
    reasons : tuple[str, ...]
        Per row, empty for a plain acceptance.
    scores : tuple[Mapping[str, float], ...]
        Per row, detector name → anomaly score.
    """

    delta: np.ndarray
    weights: np.ndarray
    verdicts: tuple[Verdict, ...]
    reasons: tuple[str, ...]
    scores: tuple[Mapping[str, float], ...]

    def __post_init__(self) -> None:
        rows = len(self.weights)
        if self.delta.ndim != 1:
            raise ValueError(f"delta must be 1-D, got shape {self.delta.shape}")
        if {len(self.verdicts), len(self.reasons), len(self.scores)} != {rows}:
            raise ValueError("verdicts, reasons and scores need one entry per weight")
        if not np.all(np.isfinite(self.weights)) or np.any(self.weights < 0):
            raise ValueError("weights must be finite and non-negative")
        total = float(np.sum(self.weights))
        if total != 0.0 and abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
            raise ValueError(f"weights sum to {total}, expected 1 (or 0: none used)")

    @classmethod
    def accept_all(
        cls,
        delta: np.ndarray,
        weights: np.ndarray,
        scores: Sequence[Mapping[str, float]] | None = None,
    ) -> AggregationOutcome:
        """Every row accepted with the given weights (and scores), no reasons."""
        rows = len(weights)
        return cls(
            delta=np.asarray(delta, dtype=np.float64),
            weights=np.asarray(weights, dtype=np.float64),
            verdicts=(Verdict.ACCEPTED,) * rows,
            reasons=("",) * rows,
            scores=tuple(scores) if scores is not None else ({},) * rows,
        )

    @classmethod
    def select(
        cls,
        delta: np.ndarray,
        rows: int,
        selected: Sequence[int] | np.ndarray,
        reason_unselected: str,
        scores: Sequence[Mapping[str, float]] | None = None,
    ) -> AggregationOutcome:
        """Rows in ``selected`` accepted with equal weight, the others rejected.

        For selection rules (Krum, MultiKrum, Bulyan) whose aggregate is built only
        from the chosen rows.
        """
        chosen = sorted(set(int(index) for index in selected))
        if not chosen or chosen[0] < 0 or chosen[-1] >= rows:
            raise ValueError(f"selected rows {chosen} out of range for {rows} rows")
        weights = np.zeros(rows)
        weights[chosen] = 1.0 / len(chosen)
        in_selection = weights > 0.0
        return cls(
            delta=np.asarray(delta, dtype=np.float64),
            weights=weights,
            verdicts=tuple(
                Verdict.ACCEPTED if kept else Verdict.REJECTED for kept in in_selection
            ),
            reasons=tuple("" if kept else reason_unselected for kept in in_selection),
            scores=tuple(scores) if scores is not None else ({},) * rows,
        )


AggregationHook = Callable[[int, UpdateBatch], AggregationOutcome]
"""An aggregation rule over one round's batch: :meth:`ScreenedFedAvg.aggregate_updates`
and what wrappers put in its place."""


def example_weights(num_examples: np.ndarray | Sequence[int]) -> np.ndarray:
    """FedAvg weights: example counts divided by their sum (McMahan et al., 2017).

    Parameters
    ----------
    num_examples : np.ndarray | Sequence[int]
        Positive example counts.

    Returns
    -------
    np.ndarray
        float64 weights summing to 1.
    """
    counts = np.asarray(num_examples, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0 or np.any(counts <= 0):
        raise ValueError("example counts must be a non-empty 1-D array of positives")
    return counts / counts.sum()


def uniform_weights(rows: int) -> np.ndarray:
    """Equal weights ``1 / rows``: the share of each row in a rule that ignores
    the (unverifiable) example counts, such as the coordinate-wise median."""
    if rows < 1:
        raise ValueError(f"need at least one row, got {rows}")
    return np.full(rows, 1.0 / rows)


def flatten_arrays(
    arrays: Mapping[str, np.ndarray], order: Sequence[str] | None = None
) -> np.ndarray:
    """Concatenate named arrays into one float64 vector.

    Parameters
    ----------
    arrays : Mapping[str, np.ndarray]
        Named arrays of any shape and numeric dtype.
    order : Sequence[str] | None
        Names in concatenation order; defaults to the mapping's order.

    Returns
    -------
    np.ndarray
        ``(sum of sizes,)`` float64 (a new array; the inputs are not touched).
    """
    names = list(arrays) if order is None else list(order)
    pieces = [np.asarray(arrays[name]) for name in names]
    # Cast straight into the result: a float64 copy per array, then a
    # concatenation, was two passes and two allocations of the whole model.
    flat = np.empty(sum(piece.size for piece in pieces))
    offset = 0
    for piece in pieces:
        flat[offset : offset + piece.size] = piece.reshape(-1)
        offset += piece.size
    return flat


def unflatten_vector(
    vector: np.ndarray, template: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Split a flat vector back into arrays shaped and typed like ``template``.

    Inverse of :func:`flatten_arrays` with ``order=list(template)``. Integer arrays
    (e.g. BatchNorm's ``num_batches_tracked``) are rounded, not truncated.

    Parameters
    ----------
    vector : np.ndarray
        ``(sum of template sizes,)`` values.
    template : Mapping[str, np.ndarray]
        Names, shapes and dtypes of the result, in order.

    Returns
    -------
    dict[str, np.ndarray]
        Name → new array with the template's shape and dtype.
    """
    sizes = [int(np.asarray(array).size) for array in template.values()]
    if vector.shape != (sum(sizes),):
        raise ValueError(
            f"vector has shape {vector.shape}, the template needs ({sum(sizes)},)"
        )
    result: dict[str, np.ndarray] = {}
    offset = 0
    for (name, array), size in zip(template.items(), sizes, strict=True):
        like = np.asarray(array)
        piece = vector[offset : offset + size].reshape(like.shape)
        if like.dtype.kind in "biu":
            piece = np.rint(piece)
        # np.rint turns 0-d arrays into scalars; asarray keeps them arrays.
        result[name] = np.asarray(piece, dtype=like.dtype)
        offset += size
    return result


def weighted_metric_average(
    metrics: Sequence[Mapping[str, float]], weights: Sequence[float]
) -> dict[str, float]:
    """Weighted average of each metric over the replies that report it.

    A metric missing from some replies is averaged over the others with their
    weights renormalised, so one client's extra metric is not shrunk towards 0.

    Parameters
    ----------
    metrics : Sequence[Mapping[str, float]]
        Per reply, metric name → value.
    weights : Sequence[float]
        Non-negative weight of each reply.

    Returns
    -------
    dict[str, float]
        Metric name → weighted average (names no positively weighted reply reports
        are absent).
    """
    totals: dict[str, float] = {}
    mass: dict[str, float] = {}
    for reported, weight in zip(metrics, weights, strict=True):
        if weight <= 0.0:
            continue
        for name, value in reported.items():
            totals[name] = totals.get(name, 0.0) + weight * value
            mass[name] = mass.get(name, 0.0) + weight
    return {name: float(totals[name] / mass[name]) for name in totals}


# pylint: disable=too-many-instance-attributes
class ScreenedFedAvg(FedAvg):
    """Federated Averaging that validates each reply and never aborts a run.

    Implementation based on https://arxiv.org/abs/1602.05629 (FedAvg), with every
    reply validated on its own (:mod:`strategies.validation`) instead of Flower's
    all-or-nothing consistency check. Subclasses change the aggregation rule by
    overriding :meth:`aggregate_updates` and the bookkeeping by overriding
    :meth:`record_round`.

    Parameters
    ----------
    fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes, \
min_available_nodes, weighted_by_key, arrayrecord_key, configrecord_key, \
train_metrics_aggr_fn, evaluate_metrics_aggr_fn
        As in :class:`flwr.serverapp.strategy.FedAvg`. A custom metrics function
        receives only the contents of the accepted (train) or valid (evaluate)
        replies; the default is a finite-value weighted average.
    recorder : RoundRecorder | None (default: None)
        Receives each round's :class:`~strategies.records.RoundReport`.
    authenticator : ReplyAuthenticator | None (default: None)
        Peer mode: checks each reply's signature over its update digest; replies
        that fail are rejected. ``None`` (simulation) skips authentication.
    """

    # pylint: disable=too-many-arguments,too-many-positional-arguments
    def __init__(
        self,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        weighted_by_key: str = NUM_EXAMPLES_KEY,
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        train_metrics_aggr_fn: MetricsAggregationFn | None = None,
        evaluate_metrics_aggr_fn: MetricsAggregationFn | None = None,
        recorder: RoundRecorder | None = None,
        authenticator: ReplyAuthenticator | None = None,
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key,
            configrecord_key=configrecord_key,
            train_metrics_aggr_fn=train_metrics_aggr_fn,
            evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
        )
        self.custom_train_metrics_aggr_fn = train_metrics_aggr_fn
        self.custom_evaluate_metrics_aggr_fn = evaluate_metrics_aggr_fn
        self.recorder = recorder
        self.authenticator = authenticator
        self.reference: dict[str, np.ndarray] | None = None
        """Global model sent by the last ``configure_train`` (validation reference)."""

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> Screening:")
        log(INFO, "\t│\t├── Aggregation: %s", type(self).__name__)
        log(INFO, "\t│\t├── Authentication: %s", self.authenticator is not None)
        recorder = type(self.recorder).__name__ if self.recorder else "none"
        log(INFO, "\t│\t└── Recorder: %s", recorder)
        super().summary()

    # ------------------------------------------------------------------ training

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember ``arrays`` as this round's reference, then configure as FedAvg."""
        self.set_reference(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def set_reference(self, arrays: ArrayRecord | Mapping[str, np.ndarray]) -> None:
        """Set the global model replies are validated against and deltas taken from.

        ``configure_train`` calls this; call it directly only when driving
        :meth:`aggregate_train` by hand (tests, custom loops).
        """
        reference: dict[str, np.ndarray] = {}
        for name, value in arrays.items():
            array = value.numpy() if isinstance(value, Array) else np.array(value)
            array.setflags(write=False)
            reference[name] = array
        self.reference = reference

    def aggregate_train(
        self,
        server_round: int,
        replies: Iterable[Message],
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate, aggregate with :meth:`aggregate_updates`, report the round.

        Never raises because of a reply. Returns ``(None, None)`` (the previous
        global model stays) when no reply is valid or the rule cannot aggregate.
        """
        return self.aggregate_train_with(server_round, replies, self.aggregate_updates)

    def aggregate_train_with(
        self,
        server_round: int,
        replies: Iterable[Message],
        hook: AggregationHook,
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """:meth:`aggregate_train` with ``hook`` in place of :meth:`aggregate_updates`.

        The seam for wrappers that hold a strategy (:class:`strategies.central_dp.
        CentralDP` privatises this strategy's own hook): validation, reporting and
        the new global model stay this strategy's.
        """
        if self.reference is None:
            raise RuntimeError(
                "aggregate_train needs the global model of this round: call "
                "configure_train (or set_reference) first"
            )
        reference = self.reference
        replies = list(replies)

        def judge(reply: Message) -> ValidReply | RejectedReply:
            return validate_reply(
                reply,
                reference,
                server_round,
                self.authenticator,
                weighted_by_key=self.weighted_by_key,
            )

        # Decoding and hashing (SHA-256 of every update, for signatures and the
        # ledger) release the GIL, so replies are checked on all cores at once.
        with ThreadPoolExecutor(max_workers=_WORKER_THREADS) as pool:
            screened = list(pool.map(judge, replies))
        # The batch is built in canonical order: the aggregate must not depend on
        # when replies arrived, so that an auditor re-running the round gets the
        # same bits. The report keeps the arrival order.
        order = sorted(range(len(replies)), key=lambda i: canonical_key(screened[i]))
        canonical = reject_duplicate_identities([screened[i] for i in order])
        judged = list(screened)
        for position, index in enumerate(order):
            judged[index] = canonical[position]
        valid = [reply for reply in canonical if isinstance(reply, ValidReply)]
        rejected = [reply for reply in judged if isinstance(reply, RejectedReply)]
        log(
            INFO,
            "aggregate_train: %d valid replies, %d rejected",
            len(valid),
            len(rejected),
        )
        for reply in rejected:
            log(INFO, "\t> Rejected %s: %s", reply.identity, reply.reason)

        if not valid:
            self._finish_round(server_round, judged, {}, None)
            return None, None

        origin = flatten_arrays(reference)  # once: the deltas' origin, the new base
        batch = self._make_batch(valid, reference, origin)
        decided, failure = _run_hook(hook, server_round, batch)
        new_arrays: dict[str, np.ndarray] | None = None
        if decided is not None and not failure:
            new_vector = origin + decided.delta
            new_arrays = unflatten_vector(new_vector, reference)
            if not all(np.all(np.isfinite(a)) for a in new_arrays.values()):
                failure = "the aggregate overflows the model's dtype"
                new_arrays = None
        if decided is None or new_arrays is None:
            log(WARNING, "aggregate_train: round not aggregated (%s)", failure)
            outcome = not_aggregated(batch, decided, failure)
        else:
            outcome = decided

        contributions = {
            id(reply): contribution
            for reply, contribution in zip(
                valid, batch_contributions(batch, outcome), strict=True
            )
        }
        digest = None if new_arrays is None else update_sha256(new_arrays)
        self._finish_round(server_round, judged, contributions, digest)
        if new_arrays is None:
            return None, None
        return (
            ArrayRecord({name: Array(value) for name, value in new_arrays.items()}),
            self._train_metrics([replies[i] for i in order], canonical, outcome, batch),
        )

    def aggregate_updates(
        self, server_round: int, batch: UpdateBatch
    ) -> AggregationOutcome:
        """The aggregation rule: override to change it (the one hook).

        Receives only valid replies (``batch.size >= 1``) as float64 deltas and
        returns the aggregate delta with one weight, verdict, reason and score dict
        per row: the complete outcome, nothing is kept for later. All-zero weights
        (e.g. every row rejected) are allowed: the round is then not aggregated and
        the verdicts reach the report as they are. May raise
        :class:`InsufficientReplies` to skip the round (every row ``skipped``). This
        default is FedAvg: every row accepted, weighted by its claimed example count.

        Parameters
        ----------
        server_round : int
            Current round.
        batch : UpdateBatch
            The round's valid replies.

        Returns
        -------
        AggregationOutcome
            Aggregate delta and per-row decisions.
        """
        weights = batch.example_weights()
        return AggregationOutcome.accept_all(
            weighted_sum(batch.deltas, weights), weights
        )

    def record_round(self, report: RoundReport) -> None:
        """Hand the finished round to the recorder (override to update reputations).

        Called once per training round, also when nothing was aggregated.
        """
        if self.recorder is not None:
            self.recorder.record_round(report, [])

    # ---------------------------------------------------------------- evaluation

    def aggregate_evaluate(
        self,
        server_round: int,
        replies: Iterable[Message],
    ) -> MetricRecord | None:
        """Weighted average of valid evaluation replies; malformed ones are dropped."""
        replies = list(replies)
        kept_metrics: list[Mapping[str, float]] = []
        kept_counts: list[float] = []
        kept_contents: list[RecordDict] = []
        for reply in replies:
            judged = validate_evaluate_reply(
                reply, weighted_by_key=self.weighted_by_key
            )
            if isinstance(judged, RejectedReply):
                log(
                    INFO,
                    "\t> Dropped evaluation of %s: %s",
                    judged.identity,
                    judged.reason,
                )
                continue
            kept_metrics.append(judged.metrics)
            kept_counts.append(float(judged.num_examples))
            kept_contents.append(reply.content)
        log(
            INFO,
            "aggregate_evaluate: %d valid replies, %d dropped",
            len(kept_contents),
            len(replies) - len(kept_contents),
        )
        if not kept_contents:
            return None
        if self.custom_evaluate_metrics_aggr_fn is not None:
            return self.custom_evaluate_metrics_aggr_fn(
                kept_contents, self.weighted_by_key
            )
        return _metric_record(weighted_metric_average(kept_metrics, kept_counts))

    # ------------------------------------------------------------------ internals

    def _make_batch(
        self,
        valid: Sequence[ValidReply],
        reference: Mapping[str, np.ndarray],
        origin: np.ndarray,
    ) -> UpdateBatch:
        order = list(reference)
        # The deltas stay a view on the replies (their decoded arrays share the
        # messages' bytes): at 100 × 11M float32 parameters a float64 matrix of them
        # was 8.8 GB on top of the 4.4 GB of replies.
        deltas = DeltaMatrix(
            [[reply.arrays[name] for name in order] for reply in valid],
            origin,  # flatten_arrays(reference), in the reference's order
            finite_sources=True,  # validate_reply rejects NaN and infinity
        )
        return UpdateBatch(
            identities=tuple(reply.identity for reply in valid),
            node_ids=tuple(reply.node_id for reply in valid),
            num_examples=np.array([reply.num_examples for reply in valid], np.int64),
            deltas=deltas,
            digests=tuple(reply.update_digest for reply in valid),
            metrics=tuple(reply.metrics for reply in valid),
            reference=reference,
        )

    def _finish_round(
        self,
        server_round: int,
        judged: Sequence[ValidReply | RejectedReply],
        accepted: Mapping[int, Contribution],
        aggregate_sha256: str | None,
    ) -> None:
        contributions = tuple(
            accepted[id(reply)]
            if isinstance(reply, ValidReply)
            else _rejected_contribution(reply)
            for reply in judged
        )
        self.record_round(RoundReport(server_round, contributions, aggregate_sha256))

    def _train_metrics(
        self,
        replies: Sequence[Message],
        judged: Sequence[ValidReply | RejectedReply],
        outcome: AggregationOutcome,
        batch: UpdateBatch,
    ) -> MetricRecord:
        used = outcome.weights > 0.0
        if self.custom_train_metrics_aggr_fn is not None:
            valid_contents = [
                reply.content
                for reply, verdict in zip(replies, judged, strict=True)
                if isinstance(verdict, ValidReply)
            ]
            used_contents = [
                content
                for content, keep in zip(valid_contents, used, strict=True)
                if keep
            ]
            return self.custom_train_metrics_aggr_fn(
                used_contents, self.weighted_by_key
            )
        counts = np.where(used, batch.num_examples, 0).astype(np.float64)
        return _metric_record(weighted_metric_average(batch.metrics, list(counts)))


def canonical_key(reply: ValidReply | RejectedReply) -> tuple[str, str, str]:
    """Sort key of a judged reply: identity, then update digest (then reason).

    Replies sorted by it are in the same order whatever order they arrived in, so
    the rows of the :class:`UpdateBatch` (and every reduction over them) are too;
    of two valid replies under one identity, the smaller digest is the one kept.
    """
    reason = reply.reason if isinstance(reply, RejectedReply) else ""
    return (reply.identity, reply.update_digest, reason)


def reject_duplicate_identities(
    judged: Sequence[ValidReply | RejectedReply],
) -> list[ValidReply | RejectedReply]:
    """Keep the first valid reply of each identity, reject the later ones.

    One identity gets one vote per round; a second reply naming it is either a
    replay (same signed update, nothing lost) or a client trying to count twice.
    """
    seen: set[str] = set()
    result: list[ValidReply | RejectedReply] = []
    for reply in judged:
        if isinstance(reply, ValidReply):
            if reply.identity in seen:
                reply = RejectedReply(
                    reply.identity,
                    reply.node_id,
                    "duplicate identity in this round",
                    reply.update_digest,
                )
            else:
                seen.add(reply.identity)
        result.append(reply)
    return result


def _metric_record(values: Mapping[str, float]) -> MetricRecord:
    record = MetricRecord()
    for name, value in values.items():
        record[name] = value
    return record


def _rejected_contribution(reply: RejectedReply) -> Contribution:
    return Contribution(
        identity=reply.identity,
        node_id=reply.node_id,
        num_examples=0,
        update_sha256=reply.update_digest,
        scores={},
        verdict=Verdict.REJECTED,
        reason=reply.reason,
        weight=0.0,
    )


def batch_contributions(
    batch: UpdateBatch, outcome: AggregationOutcome
) -> list[Contribution]:
    return [
        Contribution(
            identity=batch.identities[row],
            node_id=batch.node_ids[row],
            num_examples=int(batch.num_examples[row]),
            update_sha256=batch.digests[row],
            scores=dict(outcome.scores[row]),
            verdict=outcome.verdicts[row],
            reason=outcome.reasons[row],
            weight=float(outcome.weights[row]),
            metrics=dict(batch.metrics[row]),
        )
        for row in range(batch.size)
    ]


def _run_hook(
    hook: AggregationHook, server_round: int, batch: UpdateBatch
) -> tuple[AggregationOutcome | None, str]:
    """Call the hook; a failing rule skips the round instead of ending the run.

    Returns the outcome (``None`` when the hook raised or returned a malformed one)
    and why the round cannot be aggregated (empty when it can).
    """
    try:
        outcome = hook(server_round, batch)
    except InsufficientReplies as shortage:
        return None, str(shortage)
    except Exception as error:  # a bug in one rule must not end a long run
        log(ERROR, "aggregate_updates failed", exc_info=True)
        return None, f"aggregation failed ({type(error).__name__}: {error})"
    if outcome.delta.shape != (batch.deltas.shape[1],) or len(outcome.weights) != (
        batch.size
    ):
        log(ERROR, "aggregate_updates returned an outcome of the wrong size")
        return None, "aggregation returned an outcome of the wrong size"
    if not np.any(outcome.weights > 0.0):
        if all(verdict is Verdict.REJECTED for verdict in outcome.verdicts):
            return outcome, "every valid reply was rejected"
        return outcome, "the rule used no reply"
    return outcome, ""


def not_aggregated(
    batch: UpdateBatch, outcome: AggregationOutcome | None, failure: str
) -> AggregationOutcome:
    """The complete outcome of a round whose aggregate is not applied.

    Nobody gets weight. Rows the rule rejected keep their verdict, reason and
    scores (the recorder and the reputation must see those rejections); every other
    row is :attr:`~strategies.records.Verdict.SKIPPED` with the ``failure`` as its
    reason, so a reputation policy does not punish clients for the server's failure
    to aggregate. Without an ``outcome`` (the rule raised) every row is skipped.
    """
    rows = batch.size
    reason = f"round not aggregated: {failure}"
    if outcome is None:
        return AggregationOutcome(
            delta=np.zeros(batch.deltas.shape[1]),
            weights=np.zeros(rows),
            verdicts=(Verdict.SKIPPED,) * rows,
            reasons=(reason,) * rows,
            scores=({},) * rows,
        )
    kept = [verdict is Verdict.REJECTED for verdict in outcome.verdicts]
    return AggregationOutcome(
        delta=np.zeros(batch.deltas.shape[1]),
        weights=np.zeros(rows),
        verdicts=tuple(
            verdict if keep else Verdict.SKIPPED
            for verdict, keep in zip(outcome.verdicts, kept, strict=True)
        ),
        reasons=tuple(
            own if keep else reason
            for own, keep in zip(outcome.reasons, kept, strict=True)
        ),
        scores=outcome.scores,
    )
