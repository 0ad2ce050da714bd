"""Keys, rounds and tampering for the ledger tests (``tests/test_ledger*.py``)."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from flp2p.ledger import Ledger
from flp2p.ledger.schema import CHAIN_TABLES
from strategies.records import (
    Contribution,
    ReputationState,
    RoundReport,
    Tier,
    Verdict,
)

FEDERATION = "fed-test"


class KeySigner:
    """An Ed25519 key with the :class:`flp2p.ledger.Signer` interface."""

    def __init__(self, seed: int) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(
            hashlib.sha256(f"ledger-test-key-{seed}".encode()).digest()
        )
        self.public_key = self._key.public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw
        )
        self.node_id = hashlib.sha256(self.public_key).hexdigest()

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


def make_report(server_round: int, peers: int = 4, rejected: int = 1) -> RoundReport:
    """A round where the last ``rejected`` of ``peers`` were rejected.

    Accepted weights are ``examples / total`` with ``examples = 10 * (i + 1)``, so
    they differ and sum to one.
    """
    accepted = peers - rejected
    total = sum(10 * (i + 1) for i in range(accepted))
    contributions = []
    for i in range(peers):
        is_accepted = i < accepted
        examples = 10 * (i + 1)
        contributions.append(
            Contribution(
                identity=f"peer-{i:03d}",
                node_id=2**64 - 1 - i,  # uint64, beyond SQLite's signed INTEGER
                num_examples=examples,
                update_sha256=hashlib.sha256(
                    f"{server_round}/{i}".encode()
                ).hexdigest(),
                scores={"norm": 0.1 * i, "cosine": float(i)},
                verdict=Verdict.ACCEPTED if is_accepted else Verdict.REJECTED,
                reason="" if is_accepted else "norm outlier",
                weight=examples / total if is_accepted else 0.0,
                metrics={"train_loss": 1.0 / server_round},
            )
        )
    return RoundReport(server_round, tuple(contributions), f"{server_round:064x}")


def make_reputations(report: RoundReport) -> list[ReputationState]:
    """Reputations after ``report``: accepted peers rise, rejected ones fall."""
    return [
        ReputationState(
            identity=c.identity,
            score=0.5 + (0.1 if c.weight > 0 else -0.2),
            tier=Tier.SILVER if c.weight > 0 else Tier.BRONZE,
            first_round=1,
            last_round=report.server_round,
            rounds_participated=report.server_round,
            rounds_accepted=report.server_round if c.weight > 0 else 0,
            rounds_rejected=0 if c.weight > 0 else report.server_round,
        )
        for c in report.contributions
    ]


def record_rounds(ledger: Ledger, rounds: Sequence[int], peers: int = 4) -> None:
    """Record one made-up round per entry of ``rounds``."""
    for server_round in rounds:
        report = make_report(server_round, peers)
        ledger.record_round(report, make_reputations(report))


def tamper(path: Path, *statements: tuple[str, Sequence[object]]) -> None:
    """Run SQL as an attacker with the file would: drop the guards, then edit."""
    conn = sqlite3.connect(path)
    try:
        for table in CHAIN_TABLES:
            for action in ("update", "delete", "replace"):
                conn.execute(f"DROP TRIGGER IF EXISTS {table}_no_{action}")
        for sql, params in statements:
            conn.execute(sql, params)
        conn.commit()
    finally:
        conn.close()


def database_dump(path: Path) -> list[str]:
    """Every statement that would rebuild the database (to prove nothing changed)."""
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()
