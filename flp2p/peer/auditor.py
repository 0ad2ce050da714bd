"""The auditor role: a committee member re-runs the round the aggregator sends it.

:func:`round_auditor` is the :data:`~flp2p.peer.standby_sync.AuditHandler` a peer's
:class:`~flp2p.peer.standby_sync.CheckpointReceiver` runs for audit requests: it
checks that it holds the claimed previous model (pushed to it as a standby, or the
last final checkpoint), decodes the signed replies, re-runs the round
(:func:`flp2p.audit.recompute.audit_round`) in a worker thread and answers with its
signed statement, or ``refused: …`` with what differed — the text its accusation
carries.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from flp2p.audit.recompute import (
    ReplyBatchError,
    StrategyFactory,
    audit_round,
    decode_replies,
    recompute_round,
)
from flp2p.peer.standby_sync import AuditHandler
from flp2p.signatures import Signer
from strategies.records import ReputationState, update_sha256


def round_auditor(
    auditor: Signer,
    federation: str,
    previous_model: Callable[[int], Mapping[str, np.ndarray] | None],
    make_strategy: StrategyFactory,
    reputations: Callable[[], Iterable[ReputationState]] = tuple,
) -> AuditHandler:
    """An audit handler for ``federation``, signing with ``auditor``.

    Parameters
    ----------
    previous_model
        The global model after a federation round (``None`` when not held).
    make_strategy
        Builds the federation's strategy around the auditor's store
        (:data:`flp2p.audit.recompute.StrategyFactory`), authenticating for the
        round it is given.
    reputations
        The reputation states as of the previous final block.
    """

    async def handle(claim: Mapping[str, Any], replies: bytes) -> str:
        try:
            server_round = int(claim["round"])
            previous_sha256 = str(claim["previous_model_sha256"])
            model_sha256 = str(claim["model_sha256"])
            inputs_sha256 = str(claim["inputs_sha256"])
            body_sha256 = str(claim["body_sha256"])
        except (KeyError, TypeError, ValueError):
            return "refused: malformed claim"
        previous = previous_model(server_round - 1)
        if previous is None or update_sha256(previous) != previous_sha256:
            return f"refused: no model of round {server_round - 1} with that hash"
        try:
            signed = decode_replies(replies)
        except ReplyBatchError as error:
            return f"refused: {error}"
        states = list(reputations())
        outcome = await asyncio.to_thread(
            audit_round,
            auditor,
            federation,
            server_round,
            model_sha256,
            inputs_sha256,
            body_sha256,
            lambda: recompute_round(
                previous, signed, make_strategy, server_round, states
            ),
        )
        if outcome.statement is None:
            return f"refused: {outcome.reason}"
        return json.dumps(outcome.statement.to_json())

    return handle
