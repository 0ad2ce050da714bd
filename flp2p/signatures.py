"""Everything flp2p signs: domains, canonical encodings, Ed25519 verification.

One key signs several kinds of statement (a peer's :class:`~flp2p.identity.Identity`
signs its contributions, its DHT records and, as an aggregator, ledger blocks and
model checkpoints), so every signed message starts with a domain tag naming its kind:
a signature made for one kind can never be replayed as another. The tags are
:data:`SIGNING_DOMAINS`; none is a prefix of another, so no message of one domain is
also a message of a second (``tests/test_signatures.py`` checks this).

Two canonical JSON spellings exist, and both are wire formats that existing
signatures, block hashes and federation ids cover, so neither may change:

* :func:`canonical_ledger_json` — ledger blocks and their SQL columns: UTF-8 text,
  non-finite scores spelt by :func:`json_float`;
* :func:`canonical_dht_json` — DHT records and genesis payloads: ASCII with ``\\uXXXX``
  escapes, values type-checked first (a record arrives from anyone).

They agree on ASCII data and differ on any other character.

Signing itself is a method of whoever holds the private key (:class:`Signer`);
verification is :func:`verify_ed25519`, which never raises.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Protocol, TypeAlias, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

PUBLIC_KEY_BYTES = 32
"""Length of a raw Ed25519 public key (RFC 8032, section 5.1.5)."""
SIGNATURE_BYTES = 64
"""Length of an Ed25519 signature (RFC 8032, section 5.1.6)."""

# -- domains -------------------------------------------------------------------------

CONTRIBUTION_DOMAIN = b"flp2p/contribution/v1\n"
"""A participant's training reply: federation, round and update digest."""
CHECKPOINT_DOMAIN = b"flp2p/checkpoint/v1\n"
"""A model checkpoint the lease holder pushes to the standby aggregators."""
LEDGER_BLOCK_DOMAIN = b"flp2p/ledger-block/v1\n"
"""A ledger block's canonical body."""
DHT_RECORD_DOMAIN = b"flp2p/dht-record/v1\n"
"""A DHT record's canonical envelope, signature excluded."""
AUDIT_STATEMENT_DOMAIN = b"flp2p/audit-statement/v1\n"
"""An auditor's co-signature of a round it re-ran (:mod:`flp2p.audit.statements`)."""
RUN_RESULTS_DOMAIN = b"flp2p/run-results/v1\n"
"""The run folder's files (``metrics.csv`` …) the lease holder pushes to standbys."""

SIGNING_DOMAINS: Mapping[str, bytes] = {
    "contribution": CONTRIBUTION_DOMAIN,
    "checkpoint": CHECKPOINT_DOMAIN,
    "ledger-block": LEDGER_BLOCK_DOMAIN,
    "dht-record": DHT_RECORD_DOMAIN,
    "audit-statement": AUDIT_STATEMENT_DOMAIN,
    "run-results": RUN_RESULTS_DOMAIN,
}
"""Every domain tag a flp2p key signs under; a new kind of signed message adds one."""

# -- messages ------------------------------------------------------------------------


def contribution_message(federation: str, server_round: int, digest: str) -> bytes:
    """The exact bytes a client signs for one contribution.

    :data:`CONTRIBUTION_DOMAIN` ``+ federation + "\\n" + round + "\\n" + digest``, where
    ``digest`` is :func:`strategies.records.update_sha256` of the update.
    """
    return CONTRIBUTION_DOMAIN + f"{federation}\n{server_round}\n{digest}".encode()


def checkpoint_message(federation: str, server_round: int, digest: str) -> bytes:
    """The exact bytes the lease holder signs for one pushed checkpoint.

    :data:`CHECKPOINT_DOMAIN` ``+ federation + "\\n" + round + "\\n" + model hash``.
    """
    return CHECKPOINT_DOMAIN + f"{federation}\n{server_round}\n{digest}".encode()


def run_results_message(federation: str, server_round: int, digest: str) -> bytes:
    """The exact bytes the lease holder signs for the run files it pushes.

    :data:`RUN_RESULTS_DOMAIN` ``+ federation + "\\n" + round + "\\n" +`` SHA-256 of
    the pushed body.
    """
    return RUN_RESULTS_DOMAIN + f"{federation}\n{server_round}\n{digest}".encode()


def audit_statement_message(
    federation: str,
    server_round: int,
    inputs_sha256: str,
    model_sha256: str,
    body_sha256: str,
) -> bytes:
    """The exact bytes an auditor signs to co-sign one round's block.

    :data:`AUDIT_STATEMENT_DOMAIN` ``+`` federation, round, hash of the sorted input
    digests, hash of the new model and hash of the block body, one per line. The
    auditor's key is not in the message: the signature itself binds it.
    """
    fields = (federation, str(server_round), inputs_sha256, model_sha256, body_sha256)
    return AUDIT_STATEMENT_DOMAIN + "\n".join(fields).encode()


# -- canonical JSON ------------------------------------------------------------------

JSONValue: TypeAlias = (
    bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"] | None
)
"""A value that canonical JSON can encode."""

NON_FINITE_NAMES = ("nan", "inf", "-inf")
"""String spellings of the floats JSON cannot carry (ledger scores can be any)."""


class NotCanonicalJSON(ValueError):
    """A value has no canonical JSON encoding."""


_LEDGER_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
# One shared encoder: ``json.dumps`` builds a new one per call whenever an option
# differs from the defaults, which dominated encoding many small score maps.
_DHT_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
)


def canonical_ledger_json(value: JSONValue) -> bytes:
    """Encode ``value`` as the ledger's canonical JSON (block bodies, SQL columns).

    Keys sorted, no insignificant whitespace, UTF-8, in the spirit of RFC 8785 (JSON
    Canonicalization Scheme). Floats are written with Python's shortest round-trip
    ``repr``, which SQLite's 8-byte REAL stores exactly, so a block rebuilt from its
    rows encodes to the same bytes. Values are not type-checked (the ledger builds
    them itself; :meth:`flp2p.ledger.Block.from_bytes` checks what it parses).

    Raises
    ------
    ValueError
        If ``value`` holds a non-finite float (encode it with :func:`json_float`).
    """
    return _LEDGER_ENCODER.encode(value).encode("utf-8")


def canonical_dht_json(value: Any) -> bytes:
    """Encode ``value`` as the DHT's canonical JSON (records, genesis payloads).

    Keys sorted, no insignificant whitespace, ASCII only (other characters as
    ``\\uXXXX`` escapes).

    Raises
    ------
    NotCanonicalJSON
        For NaN or infinite floats (no canonical JSON form), non-string keys and
        anything that is not JSON data (bytes must be hex strings before they get
        here).
    """
    _check_dht_json(value)
    return _DHT_ENCODER.encode(value).encode("ascii")


def _check_dht_json(value: Any) -> None:
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotCanonicalJSON(
                f"non-finite float {value!r} has no canonical encoding"
            )
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_dht_json(item)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotCanonicalJSON(f"payload keys must be str, got {key!r}")
            _check_dht_json(item)
        return
    raise NotCanonicalJSON(
        f"payload values must be str/int/float/bool/None or lists/dicts of them "
        f"(bytes as hex), got {type(value).__name__}"
    )


def json_float(value: float) -> float | str:
    """``value`` as a float, or its string spelling when it is not finite."""
    number = float(value)
    if math.isfinite(number):
        return number
    if math.isnan(number):
        return "nan"
    return "inf" if number > 0 else "-inf"


def json_float_map(values: Mapping[str, float]) -> dict[str, float | str]:
    """Map of names to :func:`json_float` values (e.g. detector scores)."""
    return {str(name): json_float(number) for name, number in values.items()}


# -- keys ----------------------------------------------------------------------------


@runtime_checkable
class Signer(Protocol):
    """An Ed25519 key pair that can sign (:class:`flp2p.identity.Identity` is one).

    The ledger and the DHT only need this much of a key holder, so they also work
    with any other one (tests, HSMs).
    """

    @property
    def public_key(self) -> bytes:
        """Raw 32-byte Ed25519 public key."""
        ...

    @property
    def node_id(self) -> str:
        """Hex SHA-256 of :attr:`public_key`."""
        ...

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature of ``data``."""
        ...


def verify_ed25519(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """Return whether ``signature`` is a valid Ed25519 signature of ``data``.

    Never raises: a malformed key, a signature of the wrong length or a value of the
    wrong type simply yields ``False``, so untrusted input can be passed as is (a
    forged block or record must be refused, not crash its verifier).
    """
    if not (
        isinstance(public_key, bytes)
        and isinstance(signature, bytes)
        and isinstance(data, bytes)
        and len(public_key) == PUBLIC_KEY_BYTES
        and len(signature) == SIGNATURE_BYTES
    ):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True
