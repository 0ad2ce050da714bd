"""Omissions (issue 15): a participant's complaint, and the accusation it leads to.

A participant keeps a receipt of every signed reply and, once the round's final
block arrives, checks that the block lists it with the same update digest
(:func:`flp2p.client_mods.check_receipts`); if not, its ClientApp leaves a
complaint file beside its ledger copy. The peer runtime turns each into a signed
:class:`~flp2p.dht.kinds.Complaint` — with the reply's own signature as evidence —
publishes it in the DHT and hands it to every eligible peer (a ``complaint``
request, :func:`flp2p.peer.standby_sync.push_complaint`).

An eligible peer checks the record as the DHT would (:meth:`RecordValidator.check`:
signed by the participant, evidence that verifies as its reply for that round),
checks its own copy of the round's block, and, if the block indeed omits or alters
the reply and this peer sits on that round's committee, publishes an ``omission``
accusation naming the participant (:func:`omission_auditor`). ⌈2m/3⌉ of them
revoke the aggregator's lease as a mismatch does
(:mod:`flp2p.peer.revocation_watch`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from flp2p.audit.statements import NO_MODEL_SHA256
from flp2p.client_mods import COMPLAINTS_DIR
from flp2p.dht import AddressBook
from flp2p.dht.codec import RecordError, SignedRecord, sign_record
from flp2p.dht.kinds import Accusation, Complaint
from flp2p.dht.record_validation import RecordRejected, RecordValidator
from flp2p.identity import Identity
from flp2p.ledger import Block, Ledger, LedgerError
from flp2p.ledger.reports import finality_report
from flp2p.ledger.verify import block_target, signer_node_id
from flp2p.peer.standby_sync import ComplaintHandler, push_complaint

log = logging.getLogger(__name__)

COMPLAINT_TTL = 600.0
"""Seconds a complaint record lives in the DHT."""


def pending_complaints(work_dir: Path) -> list[Path]:
    """Complaint files the ClientApp left and the runtime has not sent yet."""
    folder = work_dir / COMPLAINTS_DIR
    return sorted(folder.glob("round-*.json")) if folder.is_dir() else []


async def send_complaints(
    book: AddressBook, work_dir: Path, federation: str, addresses: list[str]
) -> int:
    """Publish and push every pending complaint; return how many were sent.

    A sent file is renamed ``*.sent`` (so each complaint goes out once).
    """
    sent = 0
    for path in pending_complaints(work_dir):
        receipt = json.loads(path.read_text())
        complaint = Complaint(
            federation_id=federation,
            server_round=int(receipt["round"]),
            participant=book.identity.node_id,
            update_sha256=str(receipt["update_sha256"]),
            reply_signature=bytes.fromhex(str(receipt["signature"])),
        )
        await book.publish(complaint, ttl=COMPLAINT_TTL)
        record = sign_record(
            book.identity,
            Complaint.KIND,
            complaint.subject,
            complaint.to_payload(),
            time.time_ns() // 1000,
            time.time() + COMPLAINT_TTL,
        )
        failures = await asyncio.gather(
            *(push_complaint(a, federation, record.encode()) for a in addresses)
        )
        log.warning(
            "complained about round %d to %d eligible peer(s)",
            complaint.server_round,
            sum(1 for f in failures if f is None),
        )
        path.rename(path.with_suffix(".sent"))
        sent += 1
    return sent


def omission_auditor(
    auditor: Identity,
    federation: str,
    ledger: Path,
    validator: RecordValidator,
    committee_size: int,
    accuse: Callable[[Accusation], Awaitable[object]],
) -> ComplaintHandler:
    """The handler of pushed complaints on an eligible peer (see the module)."""

    async def handle(body: bytes) -> str:
        try:
            record = SignedRecord.decode(body)
            validator.check(record.dht_key, body)
            complaint = Complaint.from_payload(record.payload)
        except (RecordError, RecordRejected) as error:
            return f"refused: {error}"
        if complaint.federation_id != federation or complaint.reply_signature is None:
            return "refused: a complaint needs this federation and a signed reply"
        found = await asyncio.to_thread(
            _block_and_committee, ledger, federation, complaint, committee_size
        )
        if isinstance(found, str):
            return f"refused: {found}"
        block, members = found
        aggregator = signer_node_id(block.signer)
        if aggregator is None or auditor.node_id not in members:
            return "ok"  # valid, but this peer does not judge that round
        target = block_target(block)
        await accuse(
            Accusation(
                federation_id=federation,
                server_round=block.server_round,
                aggregator=aggregator,
                auditor=auditor.node_id,
                expected_sha256=target.model_sha256,
                claimed_sha256=target.model_sha256,
                reason="omission",
                inputs_sha256=target.inputs_sha256 or NO_MODEL_SHA256,
                omitted=(complaint.participant,),
            )
        )
        log.warning(
            "round %d by %s… omits %s…: accusing",
            block.server_round,
            aggregator[:12],
            complaint.participant[:12],
        )
        return "ok"

    return handle


def _block_and_committee(
    ledger: Path, federation: str, complaint: Complaint, committee_size: int
) -> tuple[Block, tuple[str, ...]] | str:
    """The final block of the complaint's round and its committee, if the block
    really omits or alters the reply; else why not."""
    if not ledger.exists():
        return "this peer holds no ledger"
    try:
        with Ledger.open(ledger, federation=federation) as chain:
            statuses = {s.height: s for s in finality_report(chain, committee_size)}
            blocks = [
                b for b in chain.blocks() if b.server_round == complaint.server_round
            ]
    except LedgerError as error:
        return f"cannot read the ledger: {error}"
    if not blocks:
        return f"no block of round {complaint.server_round} here"
    block = blocks[-1]
    listed = {str(r["identity"]): str(r["update_sha256"]) for r in block.contributions}
    if listed.get(complaint.participant) == complaint.update_sha256:
        return "the block lists that reply"
    status = statuses.get(block.height)
    members = (
        () if status is None or status.committee is None else status.committee.members
    )
    return block, members
