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
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from flp2p.audit.recompute import (
    Recomputation,
    ReplyBatchError,
    StrategyFactory,
    audit_round,
    decode_replies,
    recompute_round,
)
from flp2p.audit.statements import NO_MODEL_SHA256
from flp2p.config import RunSettings, build_strategy
from flp2p.dht.kinds import Accusation
from flp2p.identity import ContributionAuthenticator, Identity
from flp2p.ledger import Block, Ledger, LedgerError
from flp2p.ledger.blocks import Row, reward_row
from flp2p.ledger.rewards import RewardPolicy, round_rewards
from flp2p.ledger.verify import block_target, signer_node_id
from flp2p.peer.checkpoints import CheckpointStore
from flp2p.peer.federation_app import auditable_seeds
from flp2p.peer.round_audit import split_audit_payload
from flp2p.peer.standby_sync import AuditHandler
from flp2p.signatures import Signer, canonical_ledger_json
from strategies.records import InMemoryStore, ReputationState, update_sha256

log = logging.getLogger(__name__)


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


AUDIT_WAIT_SECONDS = 30.0
"""How long a member waits for the previous round's model and block (the holder
pushes them right after that round became final) before refusing."""
BYZANTINE_AUDITOR_ENV = "FLP2P_BYZANTINE_AUDITOR"
"""Environment variable of a peer whose auditor lies (tests only): ``accuse``
refuses every round and accuses the aggregator falsely."""
Accuse = Callable[[Accusation], Awaitable[object]]
"""Publishes an accusation (``AddressBook.publish``)."""


def auditor_strategy_factory(settings: RunSettings, federation: str) -> StrategyFactory:
    """The federation's strategy as an auditor re-runs it: the genesis settings,
    contributions checked for the federation round it is given, the public seeds
    (:func:`flp2p.peer.federation_app.auditable_seeds`)."""

    def make(store: InMemoryStore) -> Any:
        return build_strategy(
            settings,
            None,
            authenticator=ContributionAuthenticator(federation),
            recorder=store,
            **auditable_seeds(federation),
        )

    return make


def expected_rewards(recomputed: Recomputation) -> tuple[Row, ...]:
    """The reward rows of the block the recomputed round makes
    (:meth:`flp2p.ledger.Ledger.propose_round` with the default policy)."""
    tiers = {state.identity: state.tier for state in recomputed.reputations}
    rewards = round_rewards(recomputed.report.contributions, tiers, RewardPolicy())
    return tuple(reward_row(reward) for reward in rewards)


def block_difference(block: Block, recomputed: Recomputation) -> tuple[str, str, str]:
    """(what differs, expected hash, claimed hash) between ``block`` and the
    recomputed round; ``("", "", "")`` when they agree.

    Checked: the model, the inputs (the contributions' identities and digests), the
    rewards. The hashes go into the accusation: for the rewards, SHA-256 of their
    canonical JSON.
    """
    claimed = block_target(block)
    if recomputed.model_sha256 != claimed.model_sha256:
        return "model", recomputed.model_sha256, claimed.model_sha256
    if recomputed.inputs_sha256 != claimed.inputs_sha256:
        return "input list", recomputed.inputs_sha256, str(claimed.inputs_sha256)
    rewards = expected_rewards(recomputed)
    if rewards != block.rewards:
        return "reward table", _rows_sha256(rewards), _rows_sha256(block.rewards)
    return "", "", ""


def _rows_sha256(rows: Iterable[Row]) -> str:
    return hashlib.sha256(canonical_ledger_json(list(rows))).hexdigest()


def committee_auditor(
    auditor: Identity,
    federation: str,
    store: CheckpointStore,
    ledger: Path,
    make_strategy: StrategyFactory,
    accuse: Accuse | None = None,
    lie: str | None = None,
    wait: float = AUDIT_WAIT_SECONDS,
) -> AuditHandler:
    """The audit handler of an eligible peer in the peer runtime.

    The request's body is :func:`flp2p.peer.round_audit.audit_payload`: the
    proposed block and the signed replies. The member waits (up to ``wait``
    seconds) until it holds the previous round's model and the block the proposal
    follows, re-runs the round from its own ledger's reputations, and signs iff
    model, inputs and rewards are the block's (:func:`block_difference`). When they
    differ it publishes a signed accusation (``accuse``) and answers why.

    ``lie="accuse"`` (tests only) refuses and accuses every aggregator falsely.
    """

    async def handle(claim: Mapping[str, Any], body: bytes) -> str:
        try:
            server_round = int(claim["round"])
            previous_sha256 = str(claim["previous_model_sha256"])
            block_bytes, replies = split_audit_payload(body)
            block = Block.from_bytes(block_bytes)
        except (KeyError, TypeError, ValueError, ReplyBatchError, LedgerError) as error:
            return f"refused: malformed audit request ({error})"
        if (block.federation, block.server_round, block.body_sha256) != (
            federation,
            server_round,
            claim.get("body_sha256"),
        ):
            return "refused: the claim does not name the block sent"
        aggregator = signer_node_id(block.signer)
        if aggregator is None or aggregator == auditor.node_id:
            return "refused: the block's signer cannot be audited by this peer"
        held = await _wait_for_previous(
            store, ledger, federation, block, previous_sha256, wait
        )
        if isinstance(held, str):
            return f"refused: {held}"
        previous, states = held
        if lie == "accuse":
            if accuse is not None:
                await accuse(_false_accusation(auditor, block, aggregator))
            return "refused: (a lying auditor)"
        try:
            signed = decode_replies(replies)
        except ReplyBatchError as error:
            return f"refused: {error}"
        outcome = await asyncio.to_thread(
            audit_round,
            auditor,
            federation,
            server_round,
            str(claim.get("model_sha256")),
            str(claim.get("inputs_sha256")),
            block.body_sha256,
            lambda: recompute_round(
                previous, signed, make_strategy, server_round, states
            ),
        )
        recomputed = outcome.recomputed
        if recomputed is None:
            return f"refused: {outcome.reason}"
        what, expected, claimed = block_difference(block, recomputed)
        if not what and outcome.statement is not None:
            return json.dumps(outcome.statement.to_json())
        what = what or "claim"
        log.warning(
            "round %d by %s…: the %s differs; accusing",
            server_round,
            aggregator[:12],
            what,
        )
        if accuse is not None and expected != claimed:
            await accuse(
                Accusation(
                    federation_id=federation,
                    server_round=server_round,
                    aggregator=aggregator,
                    auditor=auditor.node_id,
                    expected_sha256=expected,
                    claimed_sha256=claimed,
                    reason="mismatch",
                    inputs_sha256=recomputed.inputs_sha256,
                )
            )
        return f"refused: the {what} differs (recomputed {expected}, block {claimed})"

    return handle


async def _wait_for_previous(
    store: CheckpointStore,
    ledger: Path,
    federation: str,
    block: Block,
    previous_sha256: str,
    wait: float,
) -> tuple[Mapping[str, np.ndarray], list[ReputationState]] | str:
    """The previous model and reputations, once this peer holds the model and the
    block the proposal follows; else why not."""
    previous_round = block.server_round - 1
    deadline = time.monotonic() + wait
    while True:
        held = await asyncio.to_thread(_tip_and_states, ledger, federation)
        model_ok = (
            previous_round in store.rounds()
            and store.load(previous_round).sha256 == previous_sha256
        )
        if model_ok and held is not None and held[0] == block.previous_hash:
            return store.load(previous_round).arrays, held[1]
        if time.monotonic() > deadline:
            return (
                f"no model of round {previous_round} with that hash"
                if not model_ok
                else "the block does not follow this peer's chain"
            )
        await asyncio.sleep(0.2)


def _tip_and_states(
    ledger: Path, federation: str
) -> tuple[str, list[ReputationState]] | None:
    if not ledger.exists():
        return None
    try:
        with Ledger.open(ledger, federation=federation) as chain:
            tip = chain.latest_block()
            if tip is None:
                return None
            return tip.block_hash, chain.all_reputations()
    except LedgerError:
        return None


def _false_accusation(auditor: Identity, block: Block, aggregator: str) -> Accusation:
    claimed = block.aggregate_sha256 or NO_MODEL_SHA256
    return Accusation(
        federation_id=block.federation,
        server_round=block.server_round,
        aggregator=aggregator,
        auditor=auditor.node_id,
        expected_sha256=hashlib.sha256(claimed.encode()).hexdigest(),
        claimed_sha256=claimed,
        reason="mismatch",
        inputs_sha256=block_target(block).inputs_sha256 or NO_MODEL_SHA256,
    )
