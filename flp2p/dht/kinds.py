"""The kinds of records peers publish: node, genesis, lease, complaint, accusation.

Each is a frozen dataclass with ``to_payload`` / ``from_payload`` (JSON data; bytes as
hex) and a ``subject`` that, with its ``KIND``, fixes the DHT key. Parsing is strict:
a payload with missing, extra or mistyped fields raises :class:`RecordError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from flp2p.dht.codec import RecordError
from flp2p.signatures import JSONValue, canonical_dht_json

_HEX_SHA256_CHARS = 64


@dataclass(frozen=True)
class NodeRecord:
    """Where a peer can be reached and what it does.

    Attributes
    ----------
    identity : str
        Node id of the peer; must be the signer's (:func:`flp2p.identity.node_id_of`).
    address : str
        Reachable ``host:port``.
    roles : tuple[str, ...]
        E.g. ``("client",)`` or ``("client", "aggregator")``.
    supernode_public_key : bytes or None
        Public key of the peer's Flower SuperNode authentication, if it uses one.
    """

    KIND: ClassVar[str] = "node"

    identity: str
    address: str
    roles: tuple[str, ...] = ()
    supernode_public_key: bytes | None = None

    def __post_init__(self) -> None:
        _check_hex_sha256("identity", self.identity)
        _check_address(self.address)

    @property
    def subject(self) -> str:
        """Node records are about their own identity."""
        return self.identity

    def to_payload(self) -> dict[str, JSONValue]:
        """JSON form signed into the record."""
        key = self.supernode_public_key
        return {
            "identity": self.identity,
            "address": self.address,
            "roles": list(self.roles),
            "supernode_public_key": None if key is None else key.hex(),
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> NodeRecord:
        """Parse :meth:`to_payload`'s output (raises :class:`RecordError`)."""
        _expect_fields(
            payload, {"identity", "address", "roles", "supernode_public_key"}
        )
        key = payload["supernode_public_key"]
        if key is not None and not isinstance(key, str):
            raise RecordError("supernode_public_key must be hex or null")
        return _build(
            cls,
            identity=_str(payload, "identity"),
            address=_str(payload, "address"),
            roles=tuple(_str_list(payload, "roles")),
            supernode_public_key=None if key is None else _hex_bytes(key),
        )


@dataclass(frozen=True)
class Genesis:
    """The founding statement of a federation; its hash is the federation id.

    Attributes
    ----------
    founder : str
        Node id of the founder, who alone signs the genesis record.
    parameters : Mapping[str, JSONValue]
        Federation parameters (model, rounds, strategy ...), JSON data.
    eligible : tuple[str, ...]
        Node ids allowed to hold the aggregator lease.
    created_at : float
        Unix seconds.
    """

    KIND: ClassVar[str] = "genesis"

    founder: str
    parameters: Mapping[str, JSONValue]
    eligible: tuple[str, ...]
    created_at: float = field(default=0.0)

    def __post_init__(self) -> None:
        _check_hex_sha256("founder", self.founder)
        if not self.eligible:
            raise RecordError("a genesis needs at least one aggregator-eligible node")
        for node_id in self.eligible:
            _check_hex_sha256("eligible node id", node_id)

    @property
    def federation_id(self) -> str:
        """Hex SHA-256 of the canonical genesis: self-certifying, hence unforgeable."""
        return hashlib.sha256(canonical_dht_json(self.to_payload())).hexdigest()

    @property
    def subject(self) -> str:
        """A genesis is stored under its own federation id."""
        return self.federation_id

    def to_payload(self) -> dict[str, JSONValue]:
        """JSON form signed into the record."""
        return {
            "founder": self.founder,
            "parameters": dict(self.parameters),
            "eligible": list(self.eligible),
            "created_at": float(self.created_at),
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Genesis:
        """Parse :meth:`to_payload`'s output (raises :class:`RecordError`)."""
        _expect_fields(payload, {"founder", "parameters", "eligible", "created_at"})
        parameters = payload["parameters"]
        if not isinstance(parameters, dict):
            raise RecordError("genesis parameters must be a dict")
        return _build(
            cls,
            founder=_str(payload, "founder"),
            parameters=parameters,
            eligible=tuple(_str_list(payload, "eligible")),
            created_at=_number(payload, "created_at"),
        )


MAX_LEASE_CANDIDATES = 96
"""Committee candidates a lease may name (their hex ids must fit in one record)."""


@dataclass(frozen=True)
class Lease:
    """Who aggregates a federation now, and where to find its SuperLink.

    Attributes
    ----------
    federation_id : str
        The federation (hex SHA-256 of its genesis).
    holder : str
        Node id of the aggregator; must be the signer and eligible in the genesis.
    superlink_address : str
        ``host:port`` of the SuperLink Fleet API.
    tls_fingerprint : str
        Hex SHA-256 of the SuperLink's TLS certificate (clients pin it).
    epoch : int
        Incremented each time the lease changes hands.
    last_round : int
        Last finished round.
    model_sha256 : str
        Hex SHA-256 of the global model after ``last_round``.
    candidates : tuple[str, ...] or None
        Audited federations: node ids (sorted, no repeats) of the live eligible
        peers the committee of round ``last_round + 1`` is drawn from, the set its
        block records; watchers redraw that committee from it to count
        accusations (:mod:`flp2p.peer.revocation_watch`). ``None`` without audits.
    """

    KIND: ClassVar[str] = "lease"

    federation_id: str
    holder: str
    superlink_address: str
    tls_fingerprint: str
    epoch: int
    last_round: int
    model_sha256: str
    candidates: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("federation_id", "holder", "tls_fingerprint", "model_sha256"):
            _check_hex_sha256(name, getattr(self, name))
        _check_address(self.superlink_address)
        if self.epoch < 0 or self.last_round < 0:
            raise RecordError("epoch and last_round must be non-negative")
        if self.candidates is not None:
            if len(self.candidates) > MAX_LEASE_CANDIDATES:
                raise RecordError(f"at most {MAX_LEASE_CANDIDATES} candidates")
            for node_id in self.candidates:
                _check_hex_sha256("candidate node id", node_id)
            if list(self.candidates) != sorted(set(self.candidates)):
                raise RecordError("candidates must be sorted without repeats")
            if self.holder in self.candidates:
                raise RecordError("the holder cannot be its own committee candidate")

    @property
    def subject(self) -> str:
        """One lease per federation."""
        return self.federation_id

    def to_payload(self) -> dict[str, JSONValue]:
        """JSON form signed into the record."""
        return {
            "federation_id": self.federation_id,
            "holder": self.holder,
            "superlink_address": self.superlink_address,
            "tls_fingerprint": self.tls_fingerprint,
            "epoch": self.epoch,
            "last_round": self.last_round,
            "model_sha256": self.model_sha256,
            **(
                {} if self.candidates is None else {"candidates": list(self.candidates)}
            ),
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Lease:
        """Parse :meth:`to_payload`'s output (raises :class:`RecordError`)."""
        names = {
            "federation_id",
            "holder",
            "superlink_address",
            "tls_fingerprint",
            "epoch",
            "last_round",
            "model_sha256",
        }
        audited = isinstance(payload, Mapping) and "candidates" in payload
        _expect_fields(payload, names | ({"candidates"} if audited else set()))
        return _build(
            cls,
            federation_id=_str(payload, "federation_id"),
            holder=_str(payload, "holder"),
            superlink_address=_str(payload, "superlink_address"),
            tls_fingerprint=_str(payload, "tls_fingerprint"),
            epoch=_int(payload, "epoch"),
            last_round=_int(payload, "last_round"),
            model_sha256=_str(payload, "model_sha256"),
            candidates=tuple(_str_list(payload, "candidates")) if audited else None,
        )


def round_subject(federation_id: str, server_round: int, author: str) -> str:
    """Subject of a per-round record: one slot per federation, round and author.

    An author can only replace its own statement about a round (by a higher
    ``seq``), never write in another's slot or another federation's.
    """
    return f"{federation_id}/{server_round}/{author}"


@dataclass(frozen=True)
class Complaint:
    """A participant's signed claim that the round's block omits or alters its reply.

    Attributes
    ----------
    federation_id : str
        The federation.
    server_round : int
        The round whose block is wrong.
    participant : str
        Node id of the complainant; must be the signer.
    update_sha256 : str
        Digest of the update it sent (:func:`strategies.records.update_sha256`).
    reply_signature : bytes or None
        Evidence: its own Ed25519 signature of the reply
        (:func:`flp2p.signatures.contribution_message` of federation, round and
        digest), the same signature the aggregator received; validation checks it.
    """

    KIND: ClassVar[str] = "complaint"

    federation_id: str
    server_round: int
    participant: str
    update_sha256: str
    reply_signature: bytes | None = None

    def __post_init__(self) -> None:
        for name in ("federation_id", "participant", "update_sha256"):
            _check_hex_sha256(name, getattr(self, name))
        _check_round(self.server_round)
        if self.reply_signature is not None and len(self.reply_signature) != 64:
            raise RecordError("reply_signature must be 64 bytes")

    @property
    def subject(self) -> str:
        """One complaint per participant and round (:func:`round_subject`)."""
        return round_subject(self.federation_id, self.server_round, self.participant)

    def to_payload(self) -> dict[str, JSONValue]:
        """JSON form signed into the record."""
        evidence = self.reply_signature
        return {
            "federation_id": self.federation_id,
            "server_round": self.server_round,
            "participant": self.participant,
            "update_sha256": self.update_sha256,
            "reply_signature": None if evidence is None else evidence.hex(),
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Complaint:
        """Parse :meth:`to_payload`'s output (raises :class:`RecordError`)."""
        _expect_fields(
            payload,
            {
                "federation_id",
                "server_round",
                "participant",
                "update_sha256",
                "reply_signature",
            },
        )
        evidence = payload["reply_signature"]
        if evidence is not None and not isinstance(evidence, str):
            raise RecordError("reply_signature must be hex or null")
        return _build(
            cls,
            federation_id=_str(payload, "federation_id"),
            server_round=_int(payload, "server_round"),
            participant=_str(payload, "participant"),
            update_sha256=_str(payload, "update_sha256"),
            reply_signature=None if evidence is None else _hex_bytes(evidence),
        )


ACCUSATION_REASONS = ("mismatch", "omission")
"""Why an auditor accuses: its recomputation differs, or a reply was left out."""
MAX_ACCUSATION_OMITTED = 64
"""Most complainants one accusation may cite (keeps the record far below 8 kB)."""


@dataclass(frozen=True)
class Accusation:
    """An auditor's signed claim that the round's aggregator lied.

    Attributes
    ----------
    federation_id : str
        The federation.
    server_round : int
        The round accused.
    aggregator : str
        Node id of the accused lease holder.
    auditor : str
        Node id of the accuser; must be the signer, aggregator-eligible, and not
        the aggregator.
    expected_sha256 : str
        Model hash the auditor computed.
    claimed_sha256 : str
        Model hash the aggregator published for the round.
    reason : str
        One of :data:`ACCUSATION_REASONS`.
    inputs_sha256 : str
        Evidence: :func:`flp2p.audit.statements.inputs_sha256` of the replies the
        auditor re-ran.
    omitted : tuple[str, ...]
        Evidence of an omission: node ids of participants whose valid complaint
        records (with a signed reply) the auditor saw; sorted, no repeats.
    """

    KIND: ClassVar[str] = "accusation"

    federation_id: str
    server_round: int
    aggregator: str
    auditor: str
    expected_sha256: str
    claimed_sha256: str
    reason: str
    inputs_sha256: str
    omitted: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in (
            "federation_id",
            "aggregator",
            "auditor",
            "expected_sha256",
            "claimed_sha256",
            "inputs_sha256",
        ):
            _check_hex_sha256(name, getattr(self, name))
        _check_round(self.server_round)
        if self.auditor == self.aggregator:
            raise RecordError("an aggregator cannot accuse itself")
        if self.reason not in ACCUSATION_REASONS:
            raise RecordError(f"reason must be one of {ACCUSATION_REASONS}")
        if self.reason == "mismatch" and self.expected_sha256 == self.claimed_sha256:
            raise RecordError("a mismatch accusation needs two different hashes")
        if self.reason == "omission" and not self.omitted:
            raise RecordError("an omission accusation must name who was left out")
        if len(self.omitted) > MAX_ACCUSATION_OMITTED:
            raise RecordError(f"at most {MAX_ACCUSATION_OMITTED} omitted participants")
        for node_id in self.omitted:
            _check_hex_sha256("omitted node id", node_id)
        if list(self.omitted) != sorted(set(self.omitted)):
            raise RecordError("omitted must be sorted without repeats")

    @property
    def subject(self) -> str:
        """One accusation per auditor and round (:func:`round_subject`)."""
        return round_subject(self.federation_id, self.server_round, self.auditor)

    def to_payload(self) -> dict[str, JSONValue]:
        """JSON form signed into the record."""
        return {
            "federation_id": self.federation_id,
            "server_round": self.server_round,
            "aggregator": self.aggregator,
            "auditor": self.auditor,
            "expected_sha256": self.expected_sha256,
            "claimed_sha256": self.claimed_sha256,
            "reason": self.reason,
            "inputs_sha256": self.inputs_sha256,
            "omitted": list(self.omitted),
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Accusation:
        """Parse :meth:`to_payload`'s output (raises :class:`RecordError`)."""
        names = {
            "federation_id",
            "server_round",
            "aggregator",
            "auditor",
            "expected_sha256",
            "claimed_sha256",
            "reason",
            "inputs_sha256",
            "omitted",
        }
        _expect_fields(payload, names)
        return _build(
            cls,
            federation_id=_str(payload, "federation_id"),
            server_round=_int(payload, "server_round"),
            aggregator=_str(payload, "aggregator"),
            auditor=_str(payload, "auditor"),
            expected_sha256=_str(payload, "expected_sha256"),
            claimed_sha256=_str(payload, "claimed_sha256"),
            reason=_str(payload, "reason"),
            inputs_sha256=_str(payload, "inputs_sha256"),
            omitted=tuple(_str_list(payload, "omitted")),
        )


AnyRecord = NodeRecord | Genesis | Lease | Complaint | Accusation
"""A typed record that :class:`flp2p.dht.AddressBook` can publish."""
RECORD_TYPES: dict[str, type[AnyRecord]] = {
    NodeRecord.KIND: NodeRecord,
    Genesis.KIND: Genesis,
    Lease.KIND: Lease,
    Complaint.KIND: Complaint,
    Accusation.KIND: Accusation,
}


def _build(cls: type[Any], **fields: Any) -> Any:
    try:
        return cls(**fields)
    except (TypeError, ValueError) as error:
        raise RecordError(f"invalid {cls.__name__}: {error}") from None


def _expect_fields(payload: Mapping[str, Any], names: set[str]) -> None:
    if not isinstance(payload, Mapping) or set(payload) != names:
        got = sorted(payload) if isinstance(payload, Mapping) else type(payload)
        raise RecordError(
            f"payload must have exactly the fields {sorted(names)}, {got}"
        )


def _str(payload: Mapping[str, Any], name: str) -> str:
    value = payload[name]
    if not isinstance(value, str):
        raise RecordError(f"{name} must be a string")
    return value


def _int(payload: Mapping[str, Any], name: str) -> int:
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(f"{name} must be an integer")
    return value


def _number(payload: Mapping[str, Any], name: str) -> float:
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(f"{name} must be a number")
    return float(value)


def _str_list(payload: Mapping[str, Any], name: str) -> list[str]:
    value = payload[name]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RecordError(f"{name} must be a list of strings")
    return value


def _hex_bytes(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise RecordError(f"not hex: {text[:20]!r}") from None


def _check_hex_sha256(name: str, value: object) -> None:
    if not (
        isinstance(value, str)
        and len(value) == _HEX_SHA256_CHARS
        and all(c in "0123456789abcdef" for c in value)
    ):
        raise RecordError(f"{name} must be 64 lowercase hex characters, got {value!r}")


def _check_round(server_round: object) -> None:
    if isinstance(server_round, bool) or not isinstance(server_round, int):
        raise RecordError("server_round must be an integer")
    if server_round < 1:
        raise RecordError("server_round must be at least 1")


def _check_address(address: object) -> None:
    host, sep, port = str(address).rpartition(":")
    if not (isinstance(address, str) and sep and host and port.isdigit()):
        raise RecordError(f"address must be 'host:port', got {address!r}")
    if not 0 < int(port) < 65536:
        raise RecordError(f"port out of range in {address!r}")
