"""Read-only views of a ledger for people: leaderboard, status, CSV export, finality."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import TextIO

from flp2p.audit.committee import DEFAULT_COMMITTEE_SIZE, Committee, draw_committee
from flp2p.audit.finality import Finality, block_finality
from strategies.records import Tier

from .blocks import Block, BlockKind
from .errors import LedgerError
from .store import Ledger, candidate_refusal
from .verify import block_target, signer_node_id

_LEADERBOARD_SQL = """
SELECT i.identity,
       COALESCE(r.tier, 'bronze') AS tier,
       r.score AS reputation,
       COALESCE(t.tokens, 0.0) AS tokens,
       COALESCE(c.accepted, 0) AS accepted,
       COALESCE(c.rejected, 0) AS rejected
FROM identities AS i
LEFT JOIN reputations AS r ON r.identity = i.identity
LEFT JOIN (SELECT identity, SUM(tokens) AS tokens FROM rewards GROUP BY identity)
     AS t ON t.identity = i.identity
LEFT JOIN (SELECT identity,
                  SUM(verdict != 'rejected') AS accepted,
                  SUM(verdict = 'rejected') AS rejected
           FROM contributions GROUP BY identity) AS c ON c.identity = i.identity
ORDER BY tokens DESC, reputation DESC, i.identity
"""

EXPORT_COLUMNS = (
    "height",
    "server_round",
    "position",
    "identity",
    "num_examples",
    "verdict",
    "reason",
    "weight",
    "quality",
    "tier",
    "multiplier",
    "tokens",
    "update_sha256",
    "scores",
)
"""Columns of ``flp2p ledger export --csv``: one row per contribution."""


@dataclass(frozen=True)
class LeaderboardEntry:
    """One identity's standing: tokens earned and contributions judged."""

    rank: int
    identity: str
    tier: str
    reputation: float | None
    tokens: float
    accepted: int
    rejected: int


@dataclass(frozen=True)
class LedgerStatus:
    """Where the chain stands."""

    federation: str
    blocks: int
    last_height: int | None
    last_round: int | None
    aggregator: str | None
    """Hex public key of the last block's signer."""
    aggregator_node_id: str | None
    """Its node id (hex SHA-256 of the key), the name peers know it by."""
    known_peers: int
    """Identities the ledger has seen (the DHT may know more)."""


def leaderboard(ledger: Ledger) -> list[LeaderboardEntry]:
    """Identities ranked by tokens, then reputation (ties by identity)."""
    return [
        LeaderboardEntry(rank=rank, **row)
        for rank, row in enumerate(ledger.db.query(_LEADERBOARD_SQL), start=1)
    ]


def ledger_status(ledger: Ledger) -> LedgerStatus:
    """Federation, chain length, last round and its signer, known identities."""
    last = ledger.db.execute(
        "SELECT height, server_round, signer FROM blocks ORDER BY height DESC LIMIT 1"
    ).fetchone()
    blocks = ledger.db.execute("SELECT COUNT(*) FROM blocks").fetchone()[0]
    peers = ledger.db.execute("SELECT COUNT(*) FROM identities").fetchone()[0]
    # "?" for a tampered signer field; ``flp2p ledger verify`` says more.
    signer_id = None if last is None else signer_node_id(str(last[2])) or "?"
    return LedgerStatus(
        federation=ledger.federation,
        blocks=int(blocks),
        last_height=None if last is None else int(last[0]),
        last_round=None if last is None else int(last[1]),
        aggregator=None if last is None else str(last[2]),
        aggregator_node_id=signer_id,
        known_peers=int(peers),
    )


def export_csv(ledger: Ledger, stream: TextIO) -> int:
    """Write every contribution with its reward as CSV; return the row count."""
    writer = csv.writer(stream)
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    rows = ledger.db.execute(
        f"SELECT {', '.join(EXPORT_COLUMNS)} FROM contribution_ledger "
        "ORDER BY height, position"
    )
    for row in rows:
        writer.writerow(row)
        count += 1
    return count


@dataclass(frozen=True)
class BlockFinalityStatus:
    """How one round block stands with its audit committee.

    ``committee`` and ``finality`` are ``None`` when the block has no committee (a
    simulation's genesis allows any signer, or nobody but the aggregator is
    eligible); ``note`` then says why. ``finality`` is also ``None`` when the
    stored co-signatures cannot be read (``note`` says so).
    """

    height: int
    server_round: int
    committee: Committee | None
    finality: Finality | None
    note: str = ""

    @property
    def is_final(self) -> bool:
        """Whether the block has enough valid co-signatures."""
        return self.finality is not None and self.finality.is_final

    def summary(self) -> str:
        """One line: co-signatures counted, threshold, final or not."""
        where = f"block {self.height} (round {self.server_round})"
        if self.committee is None:
            return f"{where}: no committee ({self.note})"
        if self.finality is None:
            return f"{where}: {self.note}"
        verdict = "final" if self.finality.is_final else "not final"
        line = (
            f"{where}: {self.finality.valid}/{self.finality.threshold} valid "
            f"co-signatures from a committee of {len(self.committee.members)}: "
            f"{verdict}"
        )
        return f"{line} ({self.note})" if self.note else line


def finality_report(
    ledger: Ledger,
    committee_size: int = DEFAULT_COMMITTEE_SIZE,
    start_height: int = 0,
) -> list[BlockFinalityStatus]:
    """Co-signatures and finality of every round block from ``start_height`` on,
    in chain order.

    Each block's committee is redrawn as the round drew it: seeded by the previous
    block's hash, from the live eligible peers the block records as its
    ``candidates`` (or, for a block without them, the genesis' allowed signers,
    node ids as a federation's genesis names its aggregators) minus the block's
    signer, weighted by the tiers the chain recorded up to the previous block. A
    block whose candidates leave out an eligible co-signer of the previous block,
    or name someone ineligible, is not final
    (:func:`flp2p.ledger.store.candidate_refusal`); one whose candidates are empty
    says "no live committee". Check the chain itself first (:meth:`Ledger.verify`):
    this trusts the blocks and judges only co-signatures and committees.
    """
    statuses: list[BlockFinalityStatus] = []
    genesis = ledger.block(0) if start_height > 0 else None
    eligible: tuple[str, ...] = () if genesis is None else genesis.allowed_signers
    previous: Block | None = None
    tiers: dict[str, Tier] = {}
    if start_height > 0:
        previous = ledger.block(start_height - 1)
        tiers = ledger.tiers_up_to(start_height - 1)
    for block in ledger.blocks(start_height):
        if block.kind is BlockKind.GENESIS:
            eligible = block.allowed_signers
        else:
            assert previous is not None  # only the genesis has no block before it
            statuses.append(
                _block_status(ledger, block, eligible, previous, tiers, committee_size)
            )
        previous = block
        for row in block.reputations:
            tiers[str(row["identity"])] = Tier(row["tier"])
    return statuses


def _block_status(
    ledger: Ledger,
    block: Block,
    eligible: tuple[str, ...],
    previous: Block,
    tiers: dict[str, Tier],
    committee_size: int,
) -> BlockFinalityStatus:
    def status(
        committee: Committee | None, finality: Finality | None, note: str
    ) -> BlockFinalityStatus:
        return BlockFinalityStatus(
            block.height, block.server_round, committee, finality, note
        )

    if not eligible:
        return status(None, None, "the genesis allows any signer")
    aggregator = signer_node_id(block.signer) or block.signer
    seed = previous.block_hash
    pool = eligible if block.candidates is None else block.candidates
    committee = draw_committee(pool, aggregator, seed, tiers, committee_size)
    if block.candidates is not None:
        try:
            required = _previous_cosigners(ledger, previous, eligible, aggregator)
        except LedgerError as error:
            return status(committee, None, str(error))
        refusal = candidate_refusal(block.candidates, eligible, aggregator, required)
        if refusal:
            return status(committee, None, f"not final: {refusal}")
        if committee_size > 0 and not block.candidates:
            return status(None, None, "no live committee: final on its signature")
    if not committee.members:
        return status(None, None, committee.shortfall or "committee size 0")
    try:
        statements = ledger.cosignatures(block.height)
    except LedgerError as error:
        return status(committee, None, str(error))
    finality = block_finality(block_target(block), committee, statements)
    return status(committee, finality, committee.shortfall)


def _previous_cosigners(
    ledger: Ledger, previous: Block, eligible: tuple[str, ...], aggregator: str
) -> tuple[str, ...]:
    """The eligible peers, other than ``aggregator``, that co-signed ``previous``."""
    signers = {s.auditor for s in ledger.cosignatures(previous.height)}
    return tuple(sorted(n for n in signers & set(eligible) if n != aggregator))
