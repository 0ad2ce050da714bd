"""What makes a DHT value acceptable: the checks every holder and reader runs.

Kademlia itself accepts anything from anyone. These checks make a record
self-authenticating (in the spirit of S/Kademlia, Baumgart & Mies 2007, and of
hivemind's ``RecordValidatorBase``): a value is kept or believed only if

* it is bytes no larger than :data:`MAX_RECORD_BYTES` and a well-formed envelope;
* its Ed25519 signature verifies;
* it has not expired, and does not claim to live longer than ``max_ttl``;
* it sits at the key derived from its kind and subject;
* the signer is entitled to the subject: a node record is about the signer itself, a
  genesis hashes to its federation id and is signed by its founder, a lease is held by
  the signer, who must be aggregator-eligible in the federation's genesis;
* a complaint is signed by the participant it speaks for, of a known federation, and
  the signed reply it carries as evidence, if any, verifies under the same key;
* an accusation is signed by its auditor, who must be aggregator-eligible in the
  federation's genesis (only such peers sit on committees), and accuses someone
  else who is eligible too (only they hold leases).

Which version wins (sequence numbers) is decided by the storage and the lookup, which
see more than one value.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flp2p.dht.codec import MAX_RECORD_BYTES, RecordError, SignedRecord
from flp2p.dht.kinds import (
    RECORD_TYPES,
    Accusation,
    Complaint,
    Genesis,
    Lease,
    NodeRecord,
)
from flp2p.identity import node_id_of
from flp2p.signatures import contribution_message, verify_ed25519

DEFAULT_MAX_TTL = 30 * 24 * 3600.0
"""Longest lifetime a record may claim (s): bounds how long stolen-key records live."""


class RecordRejected(RecordError):
    """A record failed validation; the message says why."""


class UnknownFederation(RecordRejected):
    """A lease, complaint or accusation names a federation whose genesis is unseen.

    Attributes
    ----------
    federation_id : str
        The genesis to fetch before the lease can be judged.
    """

    def __init__(self, federation_id: str) -> None:
        super().__init__(f"unknown federation {federation_id[:16]}…: genesis not found")
        self.federation_id = federation_id


class RecordValidator:
    """Checks records against the rules above and remembers every valid genesis.

    A genesis is immutable and self-certifying, so caching it is safe; the cache lets
    leases be validated synchronously once their federation is known.

    Parameters
    ----------
    max_bytes : int
        Largest encoded record accepted.
    max_ttl : float
        Largest ``expires_at - now`` accepted, in seconds.
    clock : Callable[[], float]
        Unix time source (tests move it forward to expire records).
    """

    def __init__(
        self,
        *,
        max_bytes: int = MAX_RECORD_BYTES,
        max_ttl: float = DEFAULT_MAX_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_ttl = max_ttl
        self.clock = clock
        self._geneses: dict[str, Genesis] = {}

    def known_genesis(self, federation_id: str) -> Genesis | None:
        """The cached genesis of ``federation_id``, if a valid one was seen."""
        return self._geneses.get(federation_id)

    def check(self, dht_key: bytes, raw: object) -> SignedRecord:
        """Return the record in ``raw`` if it may live at ``dht_key``.

        Raises
        ------
        UnknownFederation
            For a lease whose genesis is not cached (fetch it, then call again).
        RecordRejected
            For any other violation, with the reason.
        """
        if not isinstance(raw, bytes):
            raise RecordRejected(f"value is {type(raw).__name__}, not a signed record")
        if len(raw) > self.max_bytes:
            raise RecordRejected(f"oversized record: {len(raw)} > {self.max_bytes} B")
        try:
            record = SignedRecord.decode(raw)
        except RecordError as error:
            raise RecordRejected(str(error)) from None
        if not record.signature:
            raise RecordRejected("unsigned record")
        if not record.signature_is_valid():
            raise RecordRejected("bad signature")
        now = self.clock()
        if not record.expires_at > now:
            raise RecordRejected("expired record")
        if record.expires_at - now > self.max_ttl:
            raise RecordRejected("record claims a lifetime above max_ttl")
        if record.dht_key != dht_key:
            raise RecordRejected("record is not stored under the key of its subject")
        self._check_entitlement(record)
        return record

    def _check_entitlement(self, record: SignedRecord) -> None:
        record_type = RECORD_TYPES.get(record.kind)
        if record_type is None:
            raise RecordRejected(f"unknown record kind {record.kind!r}")
        try:
            typed = record_type.from_payload(record.payload)
        except RecordError as error:
            raise RecordRejected(str(error)) from None
        if typed.subject != record.subject:
            raise RecordRejected("payload does not match the record's subject")
        signer = node_id_of(record.public_key)
        if isinstance(typed, NodeRecord) and signer != typed.identity:
            raise RecordRejected("node record not signed by the node it describes")
        if isinstance(typed, Genesis):
            if signer != typed.founder:
                raise RecordRejected("genesis not signed by its founder")
            self._geneses.setdefault(typed.federation_id, typed)
        if isinstance(typed, Lease):
            if signer != typed.holder:
                raise RecordRejected("lease not signed by its holder")
            genesis = self._geneses.get(typed.federation_id)
            if genesis is None:
                raise UnknownFederation(typed.federation_id)
            if signer not in genesis.eligible:
                raise RecordRejected("lease signer is not eligible in the genesis")
        if isinstance(typed, Complaint):
            self._check_complaint(typed, signer, record.public_key)
        if isinstance(typed, Accusation):
            self._check_accusation(typed, signer)

    def _genesis_of(self, federation_id: str) -> Genesis:
        genesis = self._geneses.get(federation_id)
        if genesis is None:
            raise UnknownFederation(federation_id)
        return genesis

    def _check_complaint(
        self, complaint: Complaint, signer: str, public_key: bytes
    ) -> None:
        if signer != complaint.participant:
            raise RecordRejected("complaint not signed by its participant")
        self._genesis_of(complaint.federation_id)
        evidence = complaint.reply_signature
        reply = contribution_message(
            complaint.federation_id, complaint.server_round, complaint.update_sha256
        )
        if evidence is not None and not verify_ed25519(public_key, evidence, reply):
            raise RecordRejected("complaint evidence is not the participant's reply")

    def _check_accusation(self, accusation: Accusation, signer: str) -> None:
        if signer != accusation.auditor:
            raise RecordRejected("accusation not signed by its auditor")
        genesis = self._genesis_of(accusation.federation_id)
        if signer not in genesis.eligible:
            raise RecordRejected("accusing auditor is not eligible in the genesis")
        if accusation.aggregator not in genesis.eligible:
            raise RecordRejected("accused aggregator is not eligible in the genesis")
