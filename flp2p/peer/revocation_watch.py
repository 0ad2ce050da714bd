"""Whether the lease holder's current round was revoked by its committee.

An eligible peer asks this while someone else holds the lease (and the holder
about itself): the round in progress is the one after the lease's last round; its
committee is drawn from this peer's copy of the chain, which ends at that round
(the holder pushes each final block before advertising it), and from the live
candidates the holder's signed lease names (the set the round's block records),
so every peer draws the same committee; the accusations of its members are read
from the DHT and judged by :func:`flp2p.audit.revocation.revocation` (⌈2m/3⌉ of
them revoke).

Each poll judges only the block of the lease's last round (found from the tip
down, usually the tip itself), not the whole chain again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from flp2p.audit.committee import Committee
from flp2p.audit.revocation import Revocation, revocation
from flp2p.dht import AddressBook, Lease
from flp2p.dht.kinds import Accusation, round_subject
from flp2p.ledger import Ledger, LedgerError
from flp2p.ledger.reports import finality_report


def round_committee(
    ledger: Path, federation: str, lease: Lease, committee_size: int
) -> Committee | None:
    """The committee of the round after ``lease.last_round`` (``None`` when this
    peer's chain does not end at that round, or there is no committee)."""
    if not ledger.exists():
        return None
    try:
        with Ledger.open(ledger, federation=federation) as chain:
            tip = chain.latest_block()
            if tip is None or tip.server_round != lease.last_round:
                return None
            committee = chain.next_committee(
                lease.holder, committee_size, lease.candidates
            )
    except LedgerError:
        return None
    return committee if committee is not None and committee.members else None


def final_round_committee(
    ledger: Path, federation: str, lease: Lease, committee_size: int
) -> Committee | None:
    """The committee of the final block of ``lease.last_round`` when the holder
    signed it (omissions are accused after the block is final)."""
    if lease.last_round < 1 or not ledger.exists():
        return None
    try:
        with Ledger.open(ledger, federation=federation) as chain:
            height = _height_of_round(chain, lease.last_round)
            if height is None:
                return None
            statuses = finality_report(chain, committee_size, start_height=height)
    except LedgerError:
        return None
    committee = statuses[0].committee if statuses else None
    if committee is None or committee.aggregator != lease.holder:
        return None
    return committee if committee.members else None


def _height_of_round(chain: Ledger, server_round: int) -> int | None:
    """Height of the last round block of federation round ``server_round``,
    searched from the tip down (rounds only grow along a peer's chain, so the
    search stops at the first block below that round)."""
    height = chain.height
    while height is not None and height > 0:
        block = chain.block(height)
        if block.server_round == server_round:
            return height
        if block.server_round < server_round:
            return None
        height -= 1
    return None


async def lease_revocation(
    book: AddressBook, ledger: Path, lease: Lease, committee_size: int
) -> Revocation | None:
    """The committee's verdict on ``lease``'s holder: for its round in progress
    (a mismatch) or, failing that, for its last final round (an omission);
    ``None`` when this peer cannot draw either committee."""
    federation = lease.federation_id
    current = await asyncio.to_thread(
        round_committee, ledger, federation, lease, committee_size
    )
    verdict = None
    if current is not None:
        verdict = await _verdict(book, federation, lease.last_round + 1, current)
        if verdict.revoked:
            return verdict
    last = await asyncio.to_thread(
        final_round_committee, ledger, federation, lease, committee_size
    )
    if last is not None:
        return await _verdict(book, federation, lease.last_round, last)
    return verdict


async def _verdict(
    book: AddressBook, federation: str, server_round: int, committee: Committee
) -> Revocation:
    found = await asyncio.gather(
        *(
            book.server.get_record(
                Accusation.KIND, round_subject(federation, server_round, member)
            )
            for member in committee.members
        )
    )
    records = [record for record in found if record is not None]
    return revocation(federation, server_round, committee, records)
