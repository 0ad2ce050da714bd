"""An auditor re-runs a round from the signed replies (issue 15, items 2 and 6).

The detection path at the function level (and over loopback TCP): an honest
aggregator's round is co-signed; an altered aggregate, a block that drops a reply,
and a reply tampered with on the way are refused with the reason an accusation
would carry.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message
from helpers_messages import make_train_reply

from flp2p.audit import AuditStatement, verify_statement
from flp2p.audit.recompute import (
    Recomputation,
    ReplyBatchError,
    audit_round,
    decode_replies,
    encode_replies,
    public_sketch_seed,
    recompute_round,
)
from flp2p.audit.statements import inputs_sha256
from flp2p.identity import ContributionAuthenticator, Identity
from flp2p.peer.auditor import round_auditor
from flp2p.peer.checkpoints import CheckpointStore
from flp2p.peer.standby_sync import CheckpointReceiver, request_audit
from flp2p.signatures import contribution_message
from strategies import TrustedFedAvg
from strategies.records import InMemoryStore, Verdict, update_sha256

FEDERATION = "f" * 64
ROUND = 4
BODY = "b" * 64
MODEL = {
    "w": np.linspace(-1.0, 1.0, 600, dtype=np.float32).reshape(20, 30),
    "b": np.zeros(30, dtype=np.float32),
}
PARTICIPANTS = [Identity.generate() for _ in range(6)]


def make_strategy(store: InMemoryStore) -> TrustedFedAvg:
    return TrustedFedAvg(
        recorder=store,
        authenticator=ContributionAuthenticator(FEDERATION),
        sketch_seed=public_sketch_seed(FEDERATION),
    )


def signed_replies(seed: int = 0) -> list[Message]:
    rng = np.random.default_rng(seed)
    replies = []
    for index, participant in enumerate(PARTICIPANTS):
        update = {
            name: (value + 0.05 * rng.standard_normal(value.shape)).astype(np.float32)
            for name, value in MODEL.items()
        }
        digest = update_sha256(update)
        signature = participant.sign(contribution_message(FEDERATION, ROUND, digest))
        replies.append(
            make_train_reply(
                update,
                40 + index,
                node_id=index + 1,
                identity=participant.node_id,
                public_key=participant.public_key,
                signature=signature,
            )
        )
    return replies


def aggregate(replies: list[Message]) -> Recomputation:
    """The aggregator's own round (the same pure function an auditor runs)."""
    return recompute_round(MODEL, replies, make_strategy, ROUND)


def audit(
    sent: bytes, claimed_model: str, claimed_inputs: str, auditor: Identity
) -> tuple[str, bool]:
    outcome = audit_round(
        auditor,
        FEDERATION,
        ROUND,
        claimed_model,
        claimed_inputs,
        BODY,
        lambda: recompute_round(MODEL, decode_replies(sent), make_strategy, ROUND),
    )
    signed = outcome.statement is not None and verify_statement(outcome.statement)
    return outcome.reason, signed


def test_honest_round_is_cosigned_from_the_wire_bytes() -> None:
    replies = signed_replies()
    honest = aggregate(replies)
    assert honest.report.aggregate_sha256 == honest.model_sha256
    # Every reply is judged (the robust stage may give an honest row zero weight).
    assert len(honest.report.contributions) == len(replies)
    assert sum(c.weight for c in honest.report.contributions) == pytest.approx(1.0)
    auditor = Identity.generate()

    # The auditor receives the replies shuffled, over the wire.
    sent = encode_replies(replies[::-1])
    reason, signed = audit(sent, honest.model_sha256, honest.inputs_sha256, auditor)

    assert (reason, signed) == ("", True)


def test_altered_aggregate_is_refused() -> None:
    replies = signed_replies()
    honest = aggregate(replies)
    assert honest.model is not None
    noisy = {k: (v + np.float32(1e-3)).astype(v.dtype) for k, v in honest.model.items()}

    reason, signed = audit(
        encode_replies(replies),
        update_sha256(noisy),
        honest.inputs_sha256,
        Identity.generate(),
    )

    assert not signed
    assert reason.startswith("model differs")


def test_block_that_drops_a_reply_is_refused() -> None:
    replies = signed_replies()
    dropped = aggregate(replies[1:])  # what the block claims

    reason, signed = audit(
        encode_replies(replies),
        dropped.model_sha256,
        dropped.inputs_sha256,
        Identity.generate(),
    )

    assert not signed
    assert reason.startswith("inputs differ")


def test_withholding_a_reply_from_auditors_too_is_not_theirs_to_see() -> None:
    # An aggregator that drops a reply from the block and from what it sends gets
    # the round co-signed: omission is caught by the participant's own complaint
    # (item 4), not by re-running. This pins that limit down.
    replies = signed_replies()
    dropped = aggregate(replies[1:])
    reason, signed = audit(
        encode_replies(replies[1:]),
        dropped.model_sha256,
        dropped.inputs_sha256,
        Identity.generate(),
    )
    assert (reason, signed) == ("", True)


def test_update_tampered_in_transit_fails_its_signature() -> None:
    replies = signed_replies()
    honest = aggregate(replies)
    sent = bytearray(encode_replies(replies))
    sent[-5] ^= 0xFF  # one byte of the last array's values

    recomputed = recompute_round(
        MODEL, decode_replies(bytes(sent)), make_strategy, ROUND
    )
    rejected = [
        c for c in recomputed.report.contributions if c.verdict == Verdict.REJECTED
    ]
    assert len(rejected) == 1 and "signature" in rejected[0].reason
    reason, signed = audit(
        bytes(sent), honest.model_sha256, honest.inputs_sha256, Identity.generate()
    )
    assert not signed and reason.startswith("inputs differ")


def test_inputs_hash_is_the_blocks_contributions() -> None:
    honest = aggregate(signed_replies())
    pairs = [(c.identity, c.update_sha256) for c in honest.report.contributions]
    assert honest.inputs_sha256 == inputs_sha256(pairs)
    assert sorted(i for i, _ in pairs) == sorted(p.node_id for p in PARTICIPANTS)


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:-1],
        lambda data: data + b"\0",
        lambda data: b"\xff" * 8 + data[8:],
        lambda data: data[:8] + b"{" + data[9:],
        lambda data: b"",
    ],
    ids=["truncated", "trailing", "huge-header", "bad-json", "empty"],
)
def test_malformed_batches_are_refused(damage) -> None:  # type: ignore[no-untyped-def]
    data = encode_replies(signed_replies()[:2])
    with pytest.raises(ReplyBatchError):
        decode_replies(damage(data))


def test_oversized_batch_is_refused_before_decoding() -> None:
    data = encode_replies(signed_replies()[:2])
    with pytest.raises(ReplyBatchError, match="exceeds"):
        decode_replies(data, limit=len(data) - 1)


def test_public_sketch_seed_is_the_federations() -> None:
    assert public_sketch_seed(FEDERATION) == public_sketch_seed(FEDERATION)
    assert public_sketch_seed(FEDERATION) != public_sketch_seed("e" * 64)


# ------------------------------------------------------------ over loopback TCP


def audit_over_tcp(claim: dict[str, object], replies: bytes) -> AuditStatement | str:
    """One audit request to a receiver holding round ``ROUND - 1``'s model."""
    auditor = Identity.generate()
    handler = round_auditor(
        auditor,
        FEDERATION,
        lambda server_round: MODEL if server_round == ROUND - 1 else None,
        make_strategy,
    )

    async def main() -> AuditStatement | str:
        with tempfile.TemporaryDirectory() as folder:
            receiver = CheckpointReceiver(
                CheckpointStore(Path(folder)),
                FEDERATION,
                lambda _: False,
                auditor=handler,
            )
            address = await receiver.start()
            try:
                return await request_audit(address, FEDERATION, claim, replies)
            finally:
                await receiver.stop()

    return asyncio.run(main())


def claim_of(result: Recomputation) -> dict[str, object]:
    return {
        "round": ROUND,
        "previous_model_sha256": update_sha256(MODEL),
        "model_sha256": result.model_sha256,
        "inputs_sha256": result.inputs_sha256,
        "body_sha256": BODY,
    }


def test_auditor_cosigns_an_honest_round_over_tcp() -> None:
    replies = signed_replies()
    honest = aggregate(replies)

    answer = audit_over_tcp(claim_of(honest), encode_replies(replies))

    assert isinstance(answer, AuditStatement) and verify_statement(answer)
    assert (answer.server_round, answer.model_sha256) == (ROUND, honest.model_sha256)


def test_auditor_refuses_an_altered_round_over_tcp() -> None:
    replies = signed_replies()
    claim = claim_of(aggregate(replies))
    claim["model_sha256"] = "a" * 64

    answer = audit_over_tcp(claim, encode_replies(replies))

    assert isinstance(answer, str) and "model differs" in answer


def test_auditor_without_the_previous_model_refuses() -> None:
    replies = signed_replies()
    claim = claim_of(aggregate(replies))
    claim["previous_model_sha256"] = "c" * 64

    answer = audit_over_tcp(claim, encode_replies(replies))

    assert isinstance(answer, str) and f"round {ROUND - 1}" in answer
