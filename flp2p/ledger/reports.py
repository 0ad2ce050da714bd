"""Read-only views of a ledger for people: leaderboard, status, CSV export."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import TextIO

from .store import Ledger
from .verify import signer_node_id

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
