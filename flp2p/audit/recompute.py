"""An auditor re-runs a round: the signed replies, the previous model, the strategy.

The aggregator sends each committee member the replies it aggregated, as the
participants signed them (:func:`encode_replies`); participants' signatures make
them unforgeable, so the aggregator can only withhold. The auditor decodes them
(:func:`decode_replies`, size-bounded), lets a fresh strategy built like the
aggregator's (same genesis config, same reputations, public seeds) aggregate them
from the previous final model (:func:`recompute_round`), and signs a statement if
and only if the model hash and the inputs hash are the block's
(:func:`audit_round`). Rounds are bit-for-bit reproducible
(``tests/test_deterministic_rounds.py``): rows in canonical order, fixed-order
float64 sums.

Randomness a strategy draws must come from public round data: the sketch
coordinates of :class:`~strategies.trusted.TrustedFedAvg` from
:func:`public_sketch_seed` (the federation id, constant so that the update history
compares the same coordinates round after round), the central-DP noise from the
genesis ``seed`` (which an auditor must know to recompute it: central DP then
protects against the model's users, not against the committee, who see the
updates anyway).

What the signatures do not cover: a reply's claimed example count and metrics are
not signed (:func:`flp2p.signatures.contribution_message` signs the update
digest only), so an aggregator may forward altered counts consistently to the
auditors and the block; strategies that ignore counts (the robust rules) are not
affected.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)

from flp2p.audit.statements import (
    NO_MODEL_SHA256,
    AuditStatement,
    StatementError,
    inputs_sha256,
    sign_statement,
)
from flp2p.signatures import Signer
from strategies.records import (
    ARRAYS_KEY,
    IDENTITY_KEY,
    IDENTITY_PUBLIC_KEY,
    IDENTITY_SIGNATURE,
    METRICS_KEY,
    InMemoryStore,
    ReputationState,
    RoundReport,
    update_sha256,
)

MAX_AUDIT_BYTES = 1 << 30
"""Largest encoded batch of replies an auditor decodes (1 GiB: 50 × 2.5M float64)."""
_HEADER_BYTES = 8
_MAX_HEADER = 1 << 24


class ReplyBatchError(ValueError):
    """Bytes that are not a well-formed batch of signed replies."""


def public_sketch_seed(federation: str) -> int:
    """The sketch seed of every aggregator and auditor of ``federation``.

    The first 8 bytes of SHA-256 of the federation id: public, so an auditor samples
    the aggregator's coordinates; constant, so the update history stays comparable
    across rounds and failovers. Clients can compute it too, which is the price of
    auditability (a secret seed only hides which coordinates are watched).
    """
    return int.from_bytes(hashlib.sha256(federation.encode()).digest()[:8], "big")


def encode_replies(replies: Iterable[Message]) -> bytes:
    """The training replies of a round as bytes: what the aggregator sends auditors.

    Each reply keeps the identity record (id, public key, signature), its metrics
    and its arrays' serialised bytes exactly as the participant sent them, so the
    auditor checks the same signatures and decodes the same values. Error replies
    and replies without content are left out (they carry no signed update).
    """
    entries: list[dict[str, Any]] = []
    payload = bytearray()
    for reply in replies:
        if reply.has_error() or not reply.has_content():
            continue
        content = reply.content
        identity = content.config_records.get(IDENTITY_KEY)
        metrics = content.metric_records.get(METRICS_KEY)
        record = content.array_records.get(ARRAYS_KEY)
        if identity is None or metrics is None or record is None:
            continue
        arrays = []
        for name, array in record.items():
            arrays.append(
                [name, array.dtype, list(array.shape), array.stype, len(array.data)]
            )
            payload += array.data
        entries.append(
            {
                "node_id": int(reply.metadata.src_node_id),
                "identity": {
                    key: value.hex() if isinstance(value, bytes) else str(value)
                    for key, value in identity.items()
                },
                "metrics": dict(metrics.items()),
                "arrays": arrays,
            }
        )
    header = json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()
    return len(header).to_bytes(_HEADER_BYTES, "big") + header + bytes(payload)


def decode_replies(data: bytes, limit: int = MAX_AUDIT_BYTES) -> list[Message]:
    """Inverse of :func:`encode_replies`: one Flower reply per entry.

    Raises
    ------
    ReplyBatchError
        If ``data`` exceeds ``limit`` or is malformed (the values themselves are
        checked later, by the strategy's validation, like any reply).
    """
    if len(data) > limit:
        raise ReplyBatchError(f"batch of {len(data)} bytes exceeds {limit}")
    size = int.from_bytes(data[:_HEADER_BYTES], "big")
    if len(data) < _HEADER_BYTES or size > min(_MAX_HEADER, len(data)):
        raise ReplyBatchError("truncated or oversized header")
    try:
        entries = json.loads(data[_HEADER_BYTES : _HEADER_BYTES + size])
        offset = _HEADER_BYTES + size
        replies = []
        for entry in entries:
            arrays = {}
            for name, dtype, shape, stype, length in entry["arrays"]:
                if not isinstance(length, int) or length < 0:
                    raise ReplyBatchError("bad array length")
                chunk = data[offset : offset + length]
                if len(chunk) != length:
                    raise ReplyBatchError("payload shorter than the header says")
                offset += length
                arrays[str(name)] = Array(
                    dtype=str(dtype),
                    shape=tuple(int(n) for n in shape),
                    stype=str(stype),
                    data=chunk,
                )
            replies.append(_reply(entry, arrays))
    except ReplyBatchError:
        raise
    except (ValueError, TypeError, KeyError) as error:
        raise ReplyBatchError(f"malformed batch ({type(error).__name__})") from None
    if offset != len(data):
        raise ReplyBatchError("trailing bytes after the last array")
    return replies


def _reply(entry: Mapping[str, Any], arrays: dict[str, Array]) -> Message:
    identity: dict[str, str | bytes] = {}
    for key, value in dict(entry["identity"]).items():
        binary = key in (IDENTITY_PUBLIC_KEY, IDENTITY_SIGNATURE)
        identity[str(key)] = bytes.fromhex(value) if binary else str(value)
    content = RecordDict(
        {
            ARRAYS_KEY: ArrayRecord(arrays),
            METRICS_KEY: MetricRecord(dict(entry["metrics"])),
            IDENTITY_KEY: ConfigRecord(identity),  # type: ignore[arg-type]
        }
    )
    # Explicit metadata: an auditor builds replies outside any Flower run.
    metadata = Metadata(
        run_id=0,
        message_id="",
        src_node_id=int(entry["node_id"]),
        dst_node_id=0,
        reply_to_message_id="",
        group_id="",
        created_at=0.0,
        ttl=0.0,
        message_type=MessageType.TRAIN,
    )
    return Message(content=content, metadata=metadata)  # type: ignore[call-overload]


@dataclass(frozen=True)
class Recomputation:
    """What re-running one round gave.

    Attributes
    ----------
    model_sha256 : str
        :func:`~strategies.records.update_sha256` of the new global model
        (:data:`~flp2p.audit.statements.NO_MODEL_SHA256` when none was produced).
    inputs_sha256 : str
        :func:`~flp2p.audit.statements.inputs_sha256` of the judged replies.
    report : RoundReport
        The strategy's report (the block's contributions).
    model : Mapping[str, np.ndarray] | None
        The new global model.
    reputations : tuple[ReputationState, ...]
        Every reputation state after the round (the block's rewards follow from
        their tiers).
    """

    model_sha256: str
    inputs_sha256: str
    report: RoundReport
    model: Mapping[str, np.ndarray] | None
    reputations: tuple[ReputationState, ...] = ()


StrategyFactory = Callable[[InMemoryStore], Any]
"""Builds the round's strategy around a store that is its recorder and its
reputation store (``lambda store: TrustedFedAvg(recorder=store, sketch_seed=...)``)."""


def recompute_round(
    previous_model: Mapping[str, np.ndarray],
    signed_replies: Sequence[Message],
    make_strategy: StrategyFactory,
    server_round: int,
    reputations: Iterable[ReputationState] = (),
) -> Recomputation:
    """Aggregate ``signed_replies`` from ``previous_model`` as the aggregator did.

    Pure: a fresh strategy from ``make_strategy``, its state only the given
    ``reputations`` (the chain's, as of the previous final block); nothing is kept.

    Parameters
    ----------
    previous_model
        The last final global model (the round's reference).
    signed_replies
        The replies the aggregator sent (:func:`decode_replies`); the strategy's
        authenticator rejects any whose signature does not verify.
    make_strategy
        See :data:`StrategyFactory`.
    server_round
        The round number the strategy sees (what the authenticator checks).
    reputations
        Reputation states before the round.

    Raises
    ------
    flp2p.audit.statements.StatementError
        If the judged replies name one identity twice.
    """
    store = InMemoryStore()
    store.put_reputations(reputations)
    strategy = make_strategy(store)
    strategy.set_reference(previous_model)
    arrays, _ = strategy.aggregate_train(server_round, list(signed_replies))
    if not store.rounds:
        raise RuntimeError("the strategy recorded no round: give it the store")
    report = store.rounds[-1]
    model = None if arrays is None else {k: arrays[k].numpy() for k in arrays}
    return Recomputation(
        model_sha256=NO_MODEL_SHA256 if model is None else update_sha256(model),
        inputs_sha256=inputs_sha256(
            (c.identity, c.update_sha256) for c in report.contributions
        ),
        report=report,
        model=model,
        reputations=tuple(store.all_reputations()),
    )


@dataclass(frozen=True)
class AuditOutcome:
    """An auditor's answer: a statement to co-sign the block, or why not."""

    statement: AuditStatement | None
    recomputed: Recomputation | None
    reason: str
    """Empty with a statement; else what differed (the accusation's text)."""


def audit_round(
    auditor: Signer,
    federation: str,
    server_round: int,
    claimed_model_sha256: str,
    claimed_inputs_sha256: str,
    body_sha256: str,
    recompute: Callable[[], Recomputation],
) -> AuditOutcome:
    """Re-run the round with ``recompute``; sign iff both hashes match the claim.

    ``server_round`` is the federation round the statement names (the block's);
    ``recompute`` is :func:`recompute_round` with the round's inputs bound. A batch
    that cannot be recomputed (duplicate identities, a failing strategy) is no
    match either.
    """
    try:
        result = recompute()
    except (StatementError, ReplyBatchError, RuntimeError) as error:
        return AuditOutcome(None, None, f"cannot recompute the round: {error}")
    if result.inputs_sha256 != claimed_inputs_sha256:
        return AuditOutcome(
            None,
            result,
            f"inputs differ: the block names {claimed_inputs_sha256}, the signed "
            f"replies hash to {result.inputs_sha256}",
        )
    if result.model_sha256 != claimed_model_sha256:
        return AuditOutcome(
            None,
            result,
            f"model differs: the block names {claimed_model_sha256}, recomputed "
            f"{result.model_sha256}",
        )
    statement = sign_statement(
        auditor,
        federation,
        server_round,
        result.inputs_sha256,
        result.model_sha256,
        body_sha256,
    )
    return AuditOutcome(statement, result, "")
