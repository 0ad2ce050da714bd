"""Audited rounds in peer mode: a block is appended, and its model used, only once
the round's committee co-signed it (issue 15).

The ServerApp's strategy records each round through :class:`ProposingLedger`,
which signs the block without appending it. :class:`AuditedRounds`, the wrapper
around the strategy, then

1. draws the round's committee from the ledger tip (:meth:`flp2p.ledger.Ledger.
   next_committee`: k = ``audit.committee_size`` of the genesis, default 3, from
   the aggregator-eligible peers other than itself, seeded by the previous block's
   hash);
2. sends every member the proposed block and the round's signed replies
   (:func:`audit_payload`) over the audit TCP request
   (:func:`flp2p.peer.standby_sync.request_audit`), to the addresses the peer
   runtime keeps in the auditors file (:func:`write_auditors`);
3. appends the block with the co-signatures that count
   (:meth:`flp2p.ledger.Ledger.append_final_block`) once ⌈2m/3⌉ of the ``m``
   members drawn signed, and only then hands the new model back to Flower — so the
   model is checkpointed, advertised and trained on only when its block is final.

A round that does not become final ends the run (:class:`RoundNotFinal`): its
model is never checkpointed, so the lease never advertises it, and the members
that refused accuse the aggregator in the DHT (:mod:`flp2p.peer.auditor`);
⌈2m/3⌉ accusations revoke its lease and an honest successor continues from the
last final block (:mod:`flp2p.peer.revocation_watch`).

A member that never answers (no address, or only network errors: a dead peer
the DHT still lists) is dropped: the block is re-signed with the remaining
candidates and the committee redrawn from the same seed, so every verifier
redraws it from the block. A member that co-signed the previous block cannot be
dropped (:meth:`flp2p.ledger.Ledger.required_candidates`): then the round is not
final and says so.

Fewer eligible peers than k: all of the others audit (``m`` < k, threshold
⌈2m/3⌉). No other eligible peer, or ``audit.committee_size = 0``: there is no
committee; blocks are appended on the aggregator's signature alone, as before
verifiable aggregation (the aggregator is then trusted, and ``flp2p ledger
verify`` says "no committee").

:data:`BYZANTINE_AGGREGATOR_ENV` makes an aggregator lie, for tests only
(:data:`LIES`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from flp2p.audit.committee import DEFAULT_COMMITTEE_SIZE, Committee
from flp2p.audit.recompute import ReplyBatchError, encode_replies
from flp2p.audit.statements import NO_MODEL_SHA256, AuditStatement
from flp2p.identity import Identity
from flp2p.ledger import Block, Ledger, LedgerError
from flp2p.ledger.blocks import Row
from flp2p.ledger.verify import block_target
from flp2p.local_training import arrays_to_record, record_to_arrays
from flp2p.peer.checkpoints import CheckpointStore
from flp2p.peer.standby_sync import request_audit
from strategies.records import (
    IDENTITY_ID,
    IDENTITY_KEY,
    ReputationState,
    RoundReport,
    Tier,
    update_sha256,
)
from strategies.wrapping import StrategyWrapper

log = logging.getLogger(__name__)

AUDITORS_FILE_KEY = "peer.auditors-file"
"""Run-config key: the JSON file where the peer runtime keeps the audit addresses
of the other eligible peers and the revoked aggregators (:func:`write_auditors`)."""
BYZANTINE_KEY = "peer.byzantine-aggregator"
"""Run-config key: the lie this aggregator tells (tests only; :data:`LIES`)."""
BYZANTINE_AGGREGATOR_ENV = "FLP2P_BYZANTINE_AGGREGATOR"
"""Environment variable of a peer whose aggregator lies (tests and the localhost
example only)."""
LIES = ("alter", "drop", "reward", "replay")
"""alter: noise on the aggregate; drop: one honest reply silently left out;
reward: its own tokens inflated in the block; replay: the previous round's model
republished as new."""
AUDIT_ATTEMPTS = 3
"""Passes over the members that have not co-signed yet (an address may not be
known yet, or a member may still be receiving the previous round)."""
RETRY_SECONDS = 2.0
CANDIDATES_WAIT_SECONDS = 30.0
"""How long a round waits for the runtime to fix its committee candidates (it does
when it advertises the round before, while this round trains)."""
CANDIDATES_POLL_SECONDS = 0.25
INFLATED_TOKENS = 1000.0
"""What the ``reward`` liar pays itself."""
REVOKED_UNTIL = 1 << 31
"""``banned_until`` of a revoked aggregator's reputation row: for good."""
_LENGTH_BYTES = 8


@dataclass(frozen=True)
class AuditSetup:
    """How the ServerApp audits its rounds (from the run config)."""

    committee_size: int = DEFAULT_COMMITTEE_SIZE
    auditors_file: Path | None = None
    lie: str | None = None

    @classmethod
    def from_run_config(
        cls, run_config: Mapping[str, Any], resolved: Mapping[str, Any]
    ) -> AuditSetup:
        """k from the settings, the auditors file and the lie from the run config."""
        auditors = run_config.get(AUDITORS_FILE_KEY)
        lie = str(run_config.get(BYZANTINE_KEY) or "") or None
        if lie is not None and lie not in LIES:
            raise ValueError(f"{BYZANTINE_KEY} must be one of {LIES}")
        return cls(
            committee_size(resolved), Path(str(auditors)) if auditors else None, lie
        )


class RoundNotFinal(RuntimeError):
    """The committee did not co-sign the round's block: the run stops there."""


def committee_size(resolved: Mapping[str, Any]) -> int:
    """k from the resolved settings (``audit.committee_size``, default 3).

    Raises
    ------
    ValueError
        If it is not a non-negative integer.
    """
    audit = resolved.get("audit") or {}
    value = audit.get("committee_size", DEFAULT_COMMITTEE_SIZE)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"audit.committee_size must be an integer >= 0, got {value!r}")
    return value


def lie_from_environment() -> str | None:
    """The lie :data:`BYZANTINE_AGGREGATOR_ENV` names (``None``: honest).

    Raises
    ------
    ValueError
        For a value outside :data:`LIES`.
    """
    lie = os.environ.get(BYZANTINE_AGGREGATOR_ENV) or None
    if lie is not None and lie not in LIES:
        raise ValueError(f"{BYZANTINE_AGGREGATOR_ENV} must be one of {LIES}")
    return lie


def write_auditors(
    path: Path,
    addresses: Mapping[str, str],
    revoked: Iterable[str] = (),
    candidates: tuple[int, Sequence[str]] | None = None,
) -> None:
    """Atomically write node id → audit address, the revoked aggregators and the
    committee candidates fixed for a round (``(federation round, node ids)``)."""
    partial = path.with_suffix(".partial")
    data: dict[str, Any] = {
        "addresses": dict(addresses),
        "revoked": sorted(set(revoked)),
    }
    if candidates is not None:
        data["candidates"] = {"round": candidates[0], "ids": list(candidates[1])}
    partial.write_text(json.dumps(data))
    os.replace(partial, path)


def read_auditors(path: Path | None) -> tuple[dict[str, str], tuple[str, ...]]:
    """Addresses and revoked aggregators of :func:`write_auditors` (empty while
    the file does not exist)."""
    if path is None or not path.exists():
        return {}, ()
    data = json.loads(path.read_text())
    return dict(data.get("addresses", {})), tuple(data.get("revoked", ()))


def read_candidates(path: Path | None, server_round: int) -> tuple[str, ...] | None:
    """The committee candidates :func:`write_auditors` fixed for federation round
    ``server_round`` (``None`` while none are fixed for that round)."""
    if path is None or not path.exists():
        return None
    fixed = json.loads(path.read_text()).get("candidates")
    if not isinstance(fixed, dict) or fixed.get("round") != server_round:
        return None
    return tuple(str(node_id) for node_id in fixed.get("ids", ()))


def audit_payload(block_bytes: bytes, replies: bytes) -> bytes:
    """Body of an audit request: the proposed block, then the signed replies."""
    return len(block_bytes).to_bytes(_LENGTH_BYTES, "big") + block_bytes + replies


def split_audit_payload(data: bytes) -> tuple[bytes, bytes]:
    """Inverse of :func:`audit_payload` (:class:`ReplyBatchError` if malformed)."""
    size = int.from_bytes(data[:_LENGTH_BYTES], "big")
    if len(data) < _LENGTH_BYTES or size > len(data) - _LENGTH_BYTES:
        raise ReplyBatchError("the audit request's block is truncated")
    end = _LENGTH_BYTES + size
    return data[_LENGTH_BYTES:end], data[end:]


def audit_claim(block: Block, previous_model_sha256: str) -> dict[str, Any]:
    """What a member must reproduce to co-sign ``block``."""
    target = block_target(block)
    return {
        "round": block.server_round,
        "previous_model_sha256": previous_model_sha256,
        "model_sha256": target.model_sha256,
        "inputs_sha256": target.inputs_sha256 or NO_MODEL_SHA256,
        "body_sha256": target.body_sha256,
    }


class ProposingLedger:
    """The strategy's recorder and reputation store when rounds are audited.

    Like :class:`flp2p.peer.federation_app.FederationRoundLedger` (whose round
    shift it uses), but :meth:`record_round` only signs the block
    (:meth:`Ledger.propose_round`) and hands it to :attr:`proposed`;
    :class:`AuditedRounds` appends it once final. ``revoked`` aggregators get a
    reputation row banned for good in the block, so the chain records each ban
    once an honest aggregator continues it.
    """

    def __init__(
        self, rounds: Any, ledger: Ledger, revoked: Sequence[str] = ()
    ) -> None:
        self.rounds = rounds
        """The :class:`FederationRoundLedger` that shifts round numbers."""
        self.ledger = ledger
        self.revoked = tuple(revoked)
        self.proposed: Block | None = None
        self.candidates: tuple[str, ...] | None = None
        """The live eligible peers the next block records as its committee's
        candidates (:class:`AuditedRounds` sets them before each round)."""

    def get_reputation(self, identity: str) -> ReputationState | None:
        """As the round-shifting ledger."""
        state: ReputationState | None = self.rounds.get_reputation(identity)
        return state

    def put_reputations(self, states: Iterable[ReputationState]) -> None:
        """As the round-shifting ledger."""
        self.rounds.put_reputations(states)

    def all_reputations(self) -> list[ReputationState]:
        """As the round-shifting ledger."""
        states: list[ReputationState] = self.rounds.all_reputations()
        return states

    def record_round(
        self, report: RoundReport, reputations: Sequence[ReputationState]
    ) -> None:
        """Sign the block of federation round ``offset + round``; append nothing."""
        offset = int(self.rounds.round_offset)
        shifted = replace(report, server_round=report.server_round + offset)
        states = [self.rounds.to_ledger(s) for s in reputations]
        self.proposed = self.ledger.propose_round(
            shifted, [*states, *self._bans(states)], self.candidates
        )

    def _bans(self, states: Sequence[ReputationState]) -> list[ReputationState]:
        listed = {s.identity for s in states}
        banned = []
        for node_id in self.revoked:
            held = self.ledger.get_reputation(node_id)
            if node_id in listed or (held and held.banned_until >= REVOKED_UNTIL):
                continue  # recorded already
            banned.append(
                ReputationState(node_id, 0.0, Tier.BRONZE, banned_until=REVOKED_UNTIL)
            )
        return banned


class AuditedRounds(StrategyWrapper):
    """Holds the strategy; a round's model leaves it only with a final block.

    Parameters
    ----------
    strategy
        The strategy, recording through ``recorder``.
    recorder
        Its :class:`ProposingLedger`.
    identity
        The aggregator's key (it re-signs a lie's block: tests only).
    store
        Checkpoints: the previous round's model, which auditors must hold.
    committee_size
        k.
    auditors_file
        Where the runtime keeps the members' addresses (:func:`write_auditors`).
    lie
        One of :data:`LIES` (tests only), ``None`` for an honest aggregator.
    """

    def __init__(
        self,
        strategy: Any,
        recorder: ProposingLedger,
        identity: Identity,
        store: CheckpointStore,
        committee_size: int = DEFAULT_COMMITTEE_SIZE,
        auditors_file: Path | None = None,
        lie: str | None = None,
    ) -> None:
        super().__init__(strategy)
        self.recorder = recorder
        self.identity = identity
        self.checkpoints = store
        self.committee_size = committee_size
        self.auditors_file = auditors_file
        self.lie = lie

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate, have the committee co-sign, append; raise if not final."""
        ledger = self.recorder.ledger
        ledger.start_chain()  # round 1's committee is seeded by the genesis
        me = self.identity.node_id
        candidates = self._candidates(
            server_round + int(self.recorder.rounds.round_offset)
        )
        self.recorder.candidates = candidates
        committee = ledger.next_committee(me, self.committee_size, candidates)
        signed = list(replies)
        if self.lie == "drop":
            signed = _without_one(signed)
        self.recorder.proposed = None
        arrays, metrics = self.strategy.aggregate_train(server_round, signed)
        block = self.recorder.proposed
        if block is None:
            return arrays, metrics
        if committee is None or not committee.members:
            ledger.append_block(block.to_bytes())
            if candidates is not None:
                log.info("round %d: no live committee", block.server_round)
            return arrays, metrics
        previous = self.checkpoints.load(block.server_round - 1)
        if self.lie is not None:
            arrays, block = self._lie(block, arrays, previous.arrays)
        encoded = encode_replies(signed)
        required = set(ledger.required_candidates(me))
        while True:
            payload = audit_payload(block.to_bytes(), encoded)
            claim = audit_claim(block, previous.sha256)
            statements, unreachable = asyncio.run(
                self._collect(committee, claim, payload)
            )
            if len(statements) >= committee.threshold or not unreachable:
                break
            stuck = sorted(unreachable & required)
            if stuck:
                raise RoundNotFinal(
                    f"round {block.server_round} is not final: "
                    f"{len(statements)}/{committee.threshold} co-signatures; "
                    f"committee member {stuck[0][:12]}… does not answer, and it "
                    "co-signed the previous block, so the committee cannot be "
                    "redrawn without it"
                )
            # A member that never answered (dead, or its address stale in the
            # DHT) can neither sign nor accuse: redraw from the same seed among
            # the remaining candidates, which the re-signed block records so that
            # every verifier redraws the same committee.
            pool = committee_pool(block, ledger, me)
            block = replace(
                block, candidates=tuple(sorted(set(pool) - unreachable))
            ).signed_by(self.identity)
            redrawn = ledger.next_committee(me, self.committee_size, block.candidates)
            assert redrawn is not None
            log.warning(
                "round %d: committee member(s) %s did not answer; redrawn among %d "
                "remaining candidate(s): %d member(s)",
                block.server_round,
                ", ".join(f"{m[:12]}…" for m in sorted(unreachable)),
                len(block.candidates or ()),
                len(redrawn.members),
            )
            committee = redrawn
            if not committee.members:
                ledger.append_block(block.to_bytes())
                log.info("round %d: no live committee", block.server_round)
                return arrays, metrics
        try:
            ledger.append_final_block(block.to_bytes(), statements, self.committee_size)
        except LedgerError as error:
            raise RoundNotFinal(f"round {block.server_round}: {error}") from None
        log.info(
            "round %d final: %d/%d co-signatures",
            block.server_round,
            len(statements),
            committee.threshold,
        )
        return arrays, metrics

    def _candidates(self, federation_round: int) -> tuple[str, ...]:
        """The committee candidates the runtime fixed for this round (and put in
        its lease), waiting for them while the previous round is being advertised;
        failing that, the live eligible peers now plus those the block must list."""
        deadline = time.monotonic() + CANDIDATES_WAIT_SECONDS
        while True:
            fixed = read_candidates(self.auditors_file, federation_round)
            if fixed is not None or self.auditors_file is None:
                break
            if time.monotonic() > deadline:
                log.warning(
                    "round %d: no committee candidates fixed; drawing from the "
                    "peers live now",
                    federation_round,
                )
                break
            time.sleep(CANDIDATES_POLL_SECONDS)
        if fixed is not None:
            return fixed
        me = self.identity.node_id
        addresses, _ = read_auditors(self.auditors_file)
        required = self.recorder.ledger.required_candidates(me)
        return tuple(sorted((set(addresses) | set(required)) - {me}))

    async def _collect(
        self, committee: Committee, claim: Mapping[str, Any], payload: bytes
    ) -> tuple[list[AuditStatement], set[str]]:
        """Statements of the members, asking again those that did not sign; and
        the members that never answered (no address, or only network errors)."""
        federation = self.recorder.ledger.federation
        signed: dict[str, AuditStatement] = {}
        judged: set[str] = set()
        answered: set[str] = set()
        for attempt in range(AUDIT_ATTEMPTS):
            if attempt:
                await asyncio.sleep(RETRY_SECONDS)
            addresses, _ = read_auditors(self.auditors_file)
            asked = [
                m
                for m in committee.members
                if m not in signed and m not in judged and m in addresses
            ]
            answers = await asyncio.gather(
                *(
                    request_audit(addresses[m], federation, claim, payload)
                    for m in asked
                )
            )
            for member, answer in zip(asked, answers, strict=True):
                if isinstance(answer, AuditStatement):
                    signed[member] = answer
                    continue
                if not is_unreachable(answer):
                    answered.add(member)
                if is_verdict(answer):
                    judged.add(member)  # asking again changes nothing
                log.warning("auditor %s… did not sign: %s", member[:12], answer)
            if len(signed) >= committee.threshold or len(signed) + len(judged) == len(
                committee.members
            ):
                break
        silent = set(committee.members) - set(signed) - answered
        return list(signed.values()), silent

    def _lie(
        self,
        block: Block,
        arrays: ArrayRecord | None,
        previous: Mapping[str, np.ndarray],
    ) -> tuple[ArrayRecord | None, Block]:
        """The block (re-signed) and model a Byzantine aggregator publishes."""
        model = None if arrays is None else record_to_arrays(arrays)
        if self.lie == "alter" and model is not None:
            rng = np.random.default_rng(block.server_round)
            model = {
                k: (v + rng.normal(0.0, 0.05, v.shape)).astype(v.dtype)
                for k, v in model.items()
            }
        elif self.lie == "replay":
            model = {k: np.array(v) for k, v in previous.items()}
        elif self.lie == "reward":
            inflated: Row = {
                "identity": self.identity.node_id,
                "quality": 1.0,
                "tier": Tier.BRONZE.value,
                "multiplier": 1.0,
                "tokens": INFLATED_TOKENS,
            }
            block = replace(block, rewards=(*block.rewards, inflated))
        if model is not None:
            block = replace(block, aggregate_sha256=update_sha256(model))
            arrays = arrays_to_record(model)
        log.warning(
            "Byzantine aggregator (%s) in round %d", self.lie, block.server_round
        )
        return arrays, block.signed_by(self.identity)


def is_unreachable(answer: str) -> bool:
    """Whether a refusal is a network error (nothing came from the auditor): not
    its ``refused: …`` line nor a statement that failed to verify."""
    return not any(
        marker in answer
        for marker in ("refused", "malformed statement", "does not sign the claim")
    )


def committee_pool(block: Block, ledger: Ledger, aggregator: str) -> tuple[str, ...]:
    """The peers ``block``'s committee is drawn from: its recorded candidates, or
    (a block without them) the genesis' eligible peers other than ``aggregator``."""
    if block.candidates is not None:
        return block.candidates
    tip = ledger.block(0)
    return tuple(sorted(set(tip.allowed_signers) - {aggregator}))


def is_verdict(answer: str) -> bool:
    """Whether an auditor's refusal says the round differs (not that it could not
    audit yet: no previous model, another chain tip, a network error)."""
    return "differs" in answer or "lying auditor" in answer


def _without_one(replies: list[Message]) -> list[Message]:
    """``replies`` minus the first signed one by identity (the ``drop`` lie)."""
    signed = [
        (str(r.content.config_records[IDENTITY_KEY].get(IDENTITY_ID, "")), i)
        for i, r in enumerate(replies)
        if not r.has_error()
        and r.has_content()
        and IDENTITY_KEY in r.content.config_records
    ]
    if not signed:
        return replies
    _, dropped = min(signed)
    return [r for i, r in enumerate(replies) if i != dropped]
