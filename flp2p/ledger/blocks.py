"""Blocks: one finished round (or the genesis), hash-linked and signed.

A block holds the round's rows — contributions, rewards and the reputation snapshot —
the hash of the previous block, the federation id and the signer's public key, and is
signed by that signer (Ed25519) over its canonical JSON body. Its hash, which the
next block records, covers the body and the signature. Recording each block's own
signer lets a successor aggregator continue the chain with a different key; the
genesis may restrict who can sign (``allowed_signers``).

The same structure is the replication format: :meth:`Block.to_bytes` is what an
aggregator hands to participants inside the next round's ``ConfigRecord``, and what
:meth:`Block.from_bytes` parses strictly.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import Enum
from functools import cached_property

from flp2p.signatures import (
    LEDGER_BLOCK_DOMAIN,
    NON_FINITE_NAMES,
    JSONValue,
    Signer,
    canonical_ledger_json,
    json_float_map,
    verify_ed25519,
)
from strategies.records import Contribution, ReputationState, Tier, Verdict

from .errors import BlockFormatError
from .rewards import Reward

BLOCK_VERSION = 1
"""Version of the block format; a block of another version is refused."""
ZERO_HASH = "0" * 64
"""``previous_hash`` of the genesis block."""

Row = dict[str, JSONValue]
"""One row of a block, as plain JSON values (the same fields as its SQL row)."""

CONTRIBUTION_FIELDS: dict[str, type] = {
    "identity": str,
    "node_id": int,
    "num_examples": int,
    "update_sha256": str,
    "scores": dict,
    "verdict": str,
    "reason": str,
    "weight": float,
    "metrics": dict,
}
REWARD_FIELDS: dict[str, type] = {
    "identity": str,
    "quality": float,
    "tier": str,
    "multiplier": float,
    "tokens": float,
}
REPUTATION_FIELDS: dict[str, type] = {
    "identity": str,
    "score": float,
    "tier": str,
    "first_round": int,
    "last_round": int,
    "rounds_participated": int,
    "rounds_accepted": int,
    "rounds_rejected": int,
    "banned_until": int,
}
HEADER_FIELDS: dict[str, type] = {
    "version": int,
    "kind": str,
    "federation": str,
    "height": int,
    "previous_hash": str,
    "server_round": int,
    "created_at": float,
    "signer": str,
    "allowed_signers": list,
    "contributions": list,
    "rewards": list,
    "reputations": list,
    "signature": str,
}
"""Top-level fields of a serialised block (``aggregate_sha256`` may be null; an
audited round's ``candidates`` list is present only when set, so blocks written
before it keep their bytes and hashes)."""


class BlockKind(str, Enum):
    """The genesis opens a chain; every later block records one round."""

    GENESIS = "genesis"
    ROUND = "round"


def contribution_row(contribution: Contribution) -> Row:
    """Block row of one contribution (numbers normalised so they hash stably)."""
    weight = float(contribution.weight)
    if not math.isfinite(weight) or weight < 0.0:
        raise ValueError(
            f"contribution of {contribution.identity!r} has weight {weight!r}; "
            "weights must be finite and >= 0"
        )
    return {
        "identity": str(contribution.identity),
        "node_id": int(contribution.node_id),
        "num_examples": int(contribution.num_examples),
        "update_sha256": str(contribution.update_sha256),
        "scores": dict(json_float_map(contribution.scores)),
        "verdict": Verdict(contribution.verdict).value,
        "reason": str(contribution.reason),
        "weight": weight,
        "metrics": dict(json_float_map(contribution.metrics)),
    }


def reward_row(reward: Reward) -> Row:
    """Block row of one reward."""
    return {
        "identity": reward.identity,
        "quality": float(reward.quality),
        "tier": Tier(reward.tier).value,
        "multiplier": float(reward.multiplier),
        "tokens": float(reward.tokens),
    }


def reputation_row(state: ReputationState) -> Row:
    """Block row of one reputation state."""
    score = float(state.score)
    if not math.isfinite(score):
        raise ValueError(f"reputation of {state.identity!r} is {score!r}")
    return {
        "identity": state.identity,
        "score": score,
        "tier": Tier(state.tier).value,
        "first_round": int(state.first_round),
        "last_round": int(state.last_round),
        "rounds_participated": int(state.rounds_participated),
        "rounds_accepted": int(state.rounds_accepted),
        "rounds_rejected": int(state.rounds_rejected),
        "banned_until": int(state.banned_until),
    }


def reputation_from_row(row: Mapping[str, object]) -> ReputationState:
    """Inverse of :func:`reputation_row` (also reads SQL rows with the same fields)."""
    return ReputationState(
        identity=str(row["identity"]),
        score=float(row["score"]),  # type: ignore[arg-type]
        tier=Tier(row["tier"]),
        first_round=int(row["first_round"]),  # type: ignore[call-overload]
        last_round=int(row["last_round"]),  # type: ignore[call-overload]
        rounds_participated=int(row["rounds_participated"]),  # type: ignore[call-overload]
        rounds_accepted=int(row["rounds_accepted"]),  # type: ignore[call-overload]
        rounds_rejected=int(row["rounds_rejected"]),  # type: ignore[call-overload]
        banned_until=int(row["banned_until"]),  # type: ignore[call-overload]
    )


@dataclass(frozen=True)
class Block:
    """One link of the ledger chain.

    Attributes
    ----------
    federation : str
        Federation id; a block of another federation is never appended.
    height : int
        Position in the chain (genesis 0); unlike ``server_round`` it never restarts.
    kind : BlockKind
        Genesis or round.
    previous_hash : str
        :attr:`block_hash` of the block at ``height - 1`` (:data:`ZERO_HASH` first).
    server_round : int
        Flower round recorded (0 for the genesis); restarts with every run.
    aggregate_sha256 : str or None
        Hash of the global model the round produced, if any.
    created_at : float
        Unix time the signer wrote the block (informational, but signed).
    signer : str
        Hex raw Ed25519 public key of the signer.
    allowed_signers : tuple[str, ...]
        Genesis only: hex public keys that may sign blocks; empty allows any key.
    contributions, rewards, reputations : tuple[Row, ...]
        The round's rows; rewards align with contributions, reputations are sorted by
        identity.
    signature : str
        Hex Ed25519 signature over :meth:`signing_payload` (empty while unsigned).
    candidates : tuple[str, ...] or None
        Audited rounds only: node ids, sorted, of the live aggregator-eligible
        peers other than the signer that the round's committee was drawn from
        (empty: no live committee, the block is final on the signer's signature);
        ``None`` for unaudited rounds and for blocks written before committees
        were drawn from live peers (their committee is drawn from the genesis'
        list).
    """

    federation: str
    height: int
    kind: BlockKind
    previous_hash: str
    server_round: int
    aggregate_sha256: str | None
    created_at: float
    signer: str
    allowed_signers: tuple[str, ...] = ()
    contributions: tuple[Row, ...] = ()
    rewards: tuple[Row, ...] = ()
    reputations: tuple[Row, ...] = ()
    signature: str = ""
    candidates: tuple[str, ...] | None = None

    def body(self) -> Row:
        """Everything the signature covers, as JSON values."""
        optional: Row = {}
        if self.candidates is not None:
            optional["candidates"] = list(self.candidates)
        return {
            **optional,
            "version": BLOCK_VERSION,
            "kind": self.kind.value,
            "federation": self.federation,
            "height": self.height,
            "previous_hash": self.previous_hash,
            "server_round": self.server_round,
            "aggregate_sha256": self.aggregate_sha256,
            "created_at": float(self.created_at),
            "signer": self.signer,
            "allowed_signers": list(self.allowed_signers),
            "contributions": list(self.contributions),
            "rewards": list(self.rewards),
            "reputations": list(self.reputations),
        }

    @cached_property
    def canonical_body(self) -> bytes:
        """Canonical JSON of :meth:`body` (computed once: blocks are immutable)."""
        return canonical_ledger_json(self.body())

    @property
    def body_sha256(self) -> str:
        """Hex SHA-256 of :attr:`canonical_body`: what auditors co-sign.

        Unlike :attr:`block_hash` it leaves out the aggregator's signature, so an
        auditor can co-sign the body it recomputed before seeing that signature.
        """
        return hashlib.sha256(self.canonical_body).hexdigest()

    def signing_payload(self) -> bytes:
        """The exact bytes the signer signs: a domain prefix and the canonical body."""
        return LEDGER_BLOCK_DOMAIN + self.canonical_body

    def to_bytes(self) -> bytes:
        """Canonical JSON of the whole block, signature included (wire format)."""
        return canonical_ledger_json({**self.body(), "signature": self.signature})

    @cached_property
    def block_hash(self) -> str:
        """Hex SHA-256 of the canonical body, a newline and the hex signature.

        The next block's ``previous_hash``; covering the signature too means a
        re-signed block breaks the link even when its new signature is valid.
        """
        digest = hashlib.sha256(self.canonical_body)
        digest.update(b"\n" + self.signature.encode("ascii", "replace"))
        return digest.hexdigest()

    def signed_by(self, signer: Signer) -> Block:
        """Copy naming ``signer`` as signer and carrying its signature."""
        named = replace(self, signer=signer.public_key.hex(), signature="")
        signed = replace(named, signature=signer.sign(named.signing_payload()).hex())
        # The body excludes the signature, so its encoding carries over (it is the
        # costliest step of writing a large round).
        signed.__dict__["canonical_body"] = named.canonical_body
        return signed

    def signature_valid(self) -> bool:
        """Whether :attr:`signature` is the signer's signature over this body."""
        try:
            public_key = bytes.fromhex(self.signer)
            signature = bytes.fromhex(self.signature)
        except ValueError:
            return False
        return verify_ed25519(public_key, signature, self.signing_payload())

    @classmethod
    def from_bytes(cls, data: bytes) -> Block:
        """Parse the wire format strictly.

        Raises
        ------
        BlockFormatError
            If ``data`` is not canonical JSON of a well-formed block of this version.
        """
        try:
            decoded = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            raise BlockFormatError(f"block is not JSON: {error}") from None
        block = cls.from_json(decoded)
        if block.to_bytes() != data:
            # Two encodings of one block would hash differently; accept only ours.
            raise BlockFormatError("block is not in canonical JSON form")
        return block

    @classmethod
    def from_json(cls, decoded: object) -> Block:
        """Build a block from parsed JSON, checking every field's presence and type.

        Raises
        ------
        BlockFormatError
            On a missing, unknown or mistyped field.
        """
        candidates = None
        if isinstance(decoded, dict) and "candidates" in decoded:
            decoded = dict(decoded)
            listed = decoded.pop("candidates")
            if not isinstance(listed, list) or not all(
                isinstance(node_id, str) for node_id in listed
            ):
                raise BlockFormatError("block field 'candidates' must list strings")
            if listed != sorted(set(listed)):
                raise BlockFormatError("candidates must be sorted without repeats")
            candidates = tuple(listed)
        header = _checked_fields(decoded, HEADER_FIELDS, "block", {"aggregate_sha256"})
        if header["version"] != BLOCK_VERSION:
            raise BlockFormatError(f"unsupported block version {header['version']!r}")
        aggregate = header["aggregate_sha256"]
        if aggregate is not None and not isinstance(aggregate, str):
            raise BlockFormatError("block field 'aggregate_sha256' must be a string")
        try:
            kind = BlockKind(header["kind"])
        except ValueError:
            raise BlockFormatError(f"unknown block kind {header['kind']!r}") from None
        signers = header["allowed_signers"]
        if not all(isinstance(key, str) for key in signers):  # type: ignore[union-attr]
            raise BlockFormatError("allowed_signers must be hex strings")
        contributions = _checked_rows(header["contributions"], CONTRIBUTION_FIELDS)
        for row in contributions:
            _check_enum(row["verdict"], Verdict, "verdict")
            if not _numbers_only(row):
                raise BlockFormatError("scores and metrics must map names to numbers")
        rewards = _checked_rows(header["rewards"], REWARD_FIELDS)
        reputations = _checked_rows(header["reputations"], REPUTATION_FIELDS)
        for row in (*rewards, *reputations):
            _check_enum(row["tier"], Tier, "tier")
        return cls(
            federation=header["federation"],  # type: ignore[arg-type]
            height=header["height"],  # type: ignore[arg-type]
            kind=kind,
            previous_hash=header["previous_hash"],  # type: ignore[arg-type]
            server_round=header["server_round"],  # type: ignore[arg-type]
            aggregate_sha256=aggregate,
            created_at=header["created_at"],  # type: ignore[arg-type]
            signer=header["signer"],  # type: ignore[arg-type]
            allowed_signers=tuple(signers),  # type: ignore[arg-type]
            contributions=contributions,
            rewards=rewards,
            reputations=reputations,
            signature=header["signature"],  # type: ignore[arg-type]
            candidates=candidates,
        )


def _checked_fields(
    decoded: object,
    fields: Mapping[str, type],
    what: str,
    nullable: set[str] | frozenset[str] = frozenset(),
) -> dict[str, JSONValue]:
    """``decoded`` as a dict with exactly ``fields`` (+ ``nullable``), types checked."""
    if not isinstance(decoded, dict):
        raise BlockFormatError(f"{what} must be a JSON object")
    if len(decoded) != len(fields) + len(nullable) or any(
        name not in decoded for name in (*fields, *nullable)
    ):
        expected = set(fields) | set(nullable)
        missing = sorted(expected - set(decoded))
        unknown = sorted(set(decoded) - expected)
        raise BlockFormatError(
            f"{what} fields wrong (missing {missing}, unknown {unknown})"
        )
    for name, kind in fields.items():
        value = decoded[name]
        # Exact types: bool is an int subclass but not an int here, and a float must
        # stay a float so the re-encoded block keeps its bytes.
        if type(value) is not kind:
            raise BlockFormatError(f"{what} field {name!r} must be {kind.__name__}")
        if kind is float and not math.isfinite(value):  # type: ignore[arg-type]
            raise BlockFormatError(f"{what} field {name!r} must be finite")
    return decoded


def _checked_rows(rows: JSONValue, fields: Mapping[str, type]) -> tuple[Row, ...]:
    """Each element of ``rows`` checked by :func:`_checked_fields`."""
    assert isinstance(rows, list)  # guaranteed by the header check
    return tuple(_checked_fields(row, fields, "row") for row in rows)


def _check_enum(value: JSONValue, enum: type[Enum], name: str) -> None:
    """Refuse a value outside ``enum``."""
    try:
        enum(value)
    except ValueError:
        raise BlockFormatError(f"unknown {name} {value!r}") from None


def _numbers_only(row: Row) -> bool:
    """Whether a contribution row's scores and metrics hold only numbers."""
    for mapping in (row["scores"], row["metrics"]):
        assert isinstance(mapping, dict)
        for value in mapping.values():
            if isinstance(value, bool) or not (
                isinstance(value, int | float) or value in NON_FINITE_NAMES
            ):
                return False
    return True


__all__ = [
    "BLOCK_VERSION",
    "ZERO_HASH",
    "Block",
    "BlockKind",
    "Row",
    "contribution_row",
    "reputation_from_row",
    "reputation_row",
    "reward_row",
]
