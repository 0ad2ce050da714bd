"""When an aggregator loses its lease: ⌈2k/3⌉ accusations from the round's committee.

Like finality, this is a pure rule every peer evaluates on the same public inputs
(the committee, which :func:`~flp2p.audit.committee.draw_committee` fixes, and the
accusation records in the DHT), so all honest peers agree on who is revoked without
a vote. An accusation counts only if its record verifies, it names this federation,
round and aggregator, and its auditor sits on that round's committee; each auditor
counts once. With fewer than a third of the committee dishonest, liars alone cannot
reach the threshold, so an honest aggregator is never revoked.

:func:`without_revoked` is the election filter: the successor election runs on the
eligible peers minus every revoked aggregator.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flp2p.dht.codec import RecordError, SignedRecord
from flp2p.dht.kinds import Accusation
from flp2p.identity import node_id_of

from .committee import Committee


@dataclass(frozen=True)
class Revocation:
    """The verdict on one round's aggregator.

    Attributes
    ----------
    federation_id, server_round, aggregator
        Whose lease, for which round.
    accusers : tuple[str, ...]
        Committee members whose accusation counts, sorted.
    threshold : int
        Accusations needed (:attr:`Committee.threshold`).
    ignored : tuple[str, ...]
        One reason per record that does not count.
    """

    federation_id: str
    server_round: int
    aggregator: str
    accusers: tuple[str, ...]
    threshold: int
    ignored: tuple[str, ...] = ()

    @property
    def revoked(self) -> bool:
        """Whether the aggregator's lease is revoked."""
        return self.threshold > 0 and len(self.accusers) >= self.threshold

    @property
    def reason(self) -> str:
        """One line saying why (or why not)."""
        count = f"{len(self.accusers)}/{self.threshold} committee accusations"
        if self.threshold == 0:
            return "no committee: nobody can revoke the lease"
        if self.revoked:
            return f"revoked: {count} in round {self.server_round}"
        return f"not revoked: {count} in round {self.server_round}"


def _refusal(
    record: SignedRecord,
    federation_id: str,
    server_round: int,
    committee: Committee,
) -> tuple[str, str | None]:
    """(author or "?", why the record does not count or ``None``)."""
    if record.kind != Accusation.KIND:
        return "?", f"a {record.kind!r} record is not an accusation"
    if not record.signature_is_valid():
        return "?", "accusation signature does not verify"
    try:
        accusation = Accusation.from_payload(record.payload)
        signer = node_id_of(record.public_key)
    except (RecordError, ValueError) as error:
        return "?", f"malformed accusation: {error}"
    who = accusation.auditor
    if signer != accusation.auditor:
        return who, f"{who[:12]}: accusation not signed by its auditor"
    if accusation.subject != record.subject:
        return who, f"{who[:12]}: payload does not match the record's subject"
    if accusation.federation_id != federation_id:
        return who, f"{who[:12]}: accusation of another federation"
    if accusation.server_round != server_round:
        return who, f"{who[:12]}: accusation of round {accusation.server_round}"
    if accusation.aggregator != committee.aggregator:
        return who, f"{who[:12]}: accuses {accusation.aggregator[:12]}, not the holder"
    if who not in committee:
        return who, f"{who[:12]}: not a member of the round's committee"
    return who, None


def revocation(
    federation_id: str,
    server_round: int,
    committee: Committee,
    records: Iterable[SignedRecord],
) -> Revocation:
    """Judge ``committee.aggregator`` for ``server_round`` from accusation records.

    ``records`` are signed DHT records as found (already checked by the DHT's
    validator on read, and re-checked here so a caller cannot count a forged one).
    """
    accusers: set[str] = set()
    ignored: list[str] = []
    for record in records:
        who, why = _refusal(record, federation_id, server_round, committee)
        if why is not None:
            ignored.append(why)
        elif who in accusers:
            ignored.append(f"{who[:12]}: counted once already")
        else:
            accusers.add(who)
    return Revocation(
        federation_id,
        server_round,
        committee.aggregator,
        tuple(sorted(accusers)),
        committee.threshold,
        tuple(ignored),
    )


def revoked_aggregators(verdicts: Iterable[Revocation]) -> frozenset[str]:
    """Node ids whose lease some verdict revoked."""
    return frozenset(v.aggregator for v in verdicts if v.revoked)


def without_revoked(
    eligible: Iterable[str], verdicts: Iterable[Revocation]
) -> tuple[str, ...]:
    """The election filter: ``eligible`` minus revoked aggregators, order kept.

    Pass the result as ``eligible`` to the successor election (or
    :func:`revoked_aggregators` as its ``failed``) so a revoked aggregator is
    never re-elected.
    """
    banned = revoked_aggregators(verdicts)
    return tuple(node_id for node_id in eligible if node_id not in banned)
