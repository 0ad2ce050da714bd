"""The three kinds of records peers publish: node, genesis and lease.

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
    """

    KIND: ClassVar[str] = "lease"

    federation_id: str
    holder: str
    superlink_address: str
    tls_fingerprint: str
    epoch: int
    last_round: int
    model_sha256: str

    def __post_init__(self) -> None:
        for name in ("federation_id", "holder", "tls_fingerprint", "model_sha256"):
            _check_hex_sha256(name, getattr(self, name))
        _check_address(self.superlink_address)
        if self.epoch < 0 or self.last_round < 0:
            raise RecordError("epoch and last_round must be non-negative")

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
        _expect_fields(payload, names)
        return _build(
            cls,
            federation_id=_str(payload, "federation_id"),
            holder=_str(payload, "holder"),
            superlink_address=_str(payload, "superlink_address"),
            tls_fingerprint=_str(payload, "tls_fingerprint"),
            epoch=_int(payload, "epoch"),
            last_round=_int(payload, "last_round"),
            model_sha256=_str(payload, "model_sha256"),
        )


AnyRecord = NodeRecord | Genesis | Lease
"""A typed record that :class:`flp2p.dht.AddressBook` can publish."""
RECORD_TYPES: dict[str, type[NodeRecord] | type[Genesis] | type[Lease]] = {
    NodeRecord.KIND: NodeRecord,
    Genesis.KIND: Genesis,
    Lease.KIND: Lease,
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


def _check_address(address: object) -> None:
    host, sep, port = str(address).rpartition(":")
    if not (isinstance(address, str) and sep and host and port.isdigit()):
        raise RecordError(f"address must be 'host:port', got {address!r}")
    if not 0 < int(port) < 65536:
        raise RecordError(f"port out of range in {address!r}")
