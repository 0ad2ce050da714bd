"""What the dashboard shows, read from a ledger file and a run folder, never written.

:func:`read_snapshot` opens the ledger with SQLite's ``mode=ro`` URI (a fresh
connection per refresh: the file may not exist yet when a run has just started, and
a read-only connection cannot change it whatever a query does), reads everything
into one frozen :class:`DashboardSnapshot` inside a single read transaction, and
closes it. ``metrics.csv`` of the run folder adds accuracy and, when a privacy mode
is on, ε per round. Nothing here raises for a missing or half-written input: the
snapshot says what is missing instead, so the page keeps refreshing.
"""

from __future__ import annotations

import csv
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import sqlite_utils

from flp2p.ledger import Ledger, LedgerError
from flp2p.ledger.reports import (
    LeaderboardEntry,
    LedgerStatus,
    leaderboard,
    ledger_status,
)
from flp2p.ledger.schema import read_meta

METRICS_CSV = "metrics.csv"
"""Written by :class:`flp2p.reporting.RunReporter` (same name, read-only here)."""


@dataclass(frozen=True)
class RoundVerdicts:
    """How many replies of one round were accepted, down-weighted or rejected."""

    server_round: int
    accepted: int
    downweighted: int
    rejected: int


@dataclass(frozen=True)
class Judgement:
    """One contribution that was not simply accepted, and why."""

    server_round: int
    identity: str
    verdict: str
    reason: str
    weight: float


@dataclass(frozen=True)
class ReputationPoint:
    """One identity's reputation and tier after one round (its block's snapshot)."""

    server_round: int
    identity: str
    score: float
    tier: str


@dataclass(frozen=True)
class MetricsPoint:
    """One row of the run's ``metrics.csv`` (ε fields only when present)."""

    server_round: int
    accuracy: float
    epsilon: float | None = None
    epsilon_median: float | None = None


@dataclass(frozen=True)
class ChainCheck:
    """Result of re-verifying every block's hash link and signature."""

    ok: bool
    detail: str
    """``"N blocks verified"`` or the first broken rule (from :class:`ChainError`)."""


@dataclass(frozen=True)
class PeerContact:
    """One DHT node that answered, with what the federation's records say of it."""

    node_id: str
    """Its node id, or the prefix of it the DHT shows (a kademlia id)."""
    address: str
    roles: tuple[str, ...] = ()
    """``founder``, ``eligible``, ``aggregator (epoch N)``; empty for a participant."""


@dataclass(frozen=True)
class PeerView:
    """The federation as its DHT shows it (peer mode only).

    Filled by whoever can look — ``flp2p dashboard --dht`` asks the DHT through
    :mod:`flp2p.peer.federation_status`, on a timer (:class:`~flp2p.dashboard.
    peer_polling.PeerViewPoller`) — and passed to :func:`flp2p.dashboard.create_app`
    as a callable; the run-folder dashboard has none and the page then omits the
    section.
    """

    lease_holder: str | None
    epoch: int | None
    live_peers: tuple[str, ...] = ()
    """Node ids of live peers, when nothing more is known of them."""
    contacts: tuple[PeerContact, ...] = ()
    """Live peers with address and roles (what the DHT answered), when known."""
    superlink: str | None = None
    """The lease holder's SuperLink address."""
    last_round: int | None = None
    """The last federation round the lease holder announced."""
    rounds: int | None = None
    """Rounds the genesis asks for."""
    problem: str | None = None
    """Why the federation cannot be seen right now (the DHT does not answer, no
    genesis, …). The other fields then hold the last view that worked, if any."""
    seen_at: float | None = None
    """Unix time of the answer the other fields come from."""


PeerViewSource = Callable[[], PeerView | None]
"""Read at each refresh (so it must answer at once); ``None`` while nothing is
known yet."""


@dataclass(frozen=True)
class DashboardSnapshot:
    """Everything one refresh of the page shows."""

    ledger_path: Path
    problem: str | None = None
    """Why the ledger could not be read (missing, foreign, …); ``None`` when read."""
    status: LedgerStatus | None = None
    head_hash: str | None = None
    chain: ChainCheck | None = None
    verdicts: tuple[RoundVerdicts, ...] = ()
    judgements: tuple[Judgement, ...] = ()
    reputations: tuple[ReputationPoint, ...] = ()
    board: tuple[LeaderboardEntry, ...] = ()
    metrics: tuple[MetricsPoint, ...] = ()
    peer: PeerView | None = None


def open_read_only(path: Path) -> Ledger:
    """Open an existing ledger through a ``mode=ro`` connection.

    Raises
    ------
    LedgerError
        The file is missing or not an flp2p ledger.
    """
    if not path.is_file():
        raise LedgerError(f"no ledger at {path} yet")
    try:
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
        )
    except sqlite3.DatabaseError as error:
        raise LedgerError(f"{path} is not a readable ledger ({error})") from None
    db = sqlite_utils.Database(conn)
    try:
        meta = read_meta(db, path)
    except BaseException:
        db.close()
        raise
    return Ledger(db, path, meta["federation"])


_VERDICTS_SQL = """
SELECT b.server_round,
       SUM(c.verdict = 'accepted') AS accepted,
       SUM(c.verdict = 'downweighted') AS downweighted,
       SUM(c.verdict = 'rejected') AS rejected
FROM contributions AS c JOIN blocks AS b ON b.height = c.height
GROUP BY c.height ORDER BY c.height
"""
_JUDGEMENTS_SQL = """
SELECT b.server_round, c.identity, c.verdict, c.reason, c.weight
FROM contributions AS c JOIN blocks AS b ON b.height = c.height
WHERE c.verdict != 'accepted' OR c.weight = 0 ORDER BY c.height DESC, c.position
"""
_REPUTATIONS_SQL = """
SELECT b.server_round, s.identity, s.score, s.tier
FROM reputation_snapshots AS s JOIN blocks AS b ON b.height = s.height
ORDER BY s.height, s.identity
"""


def read_ledger(
    ledger: Ledger, snapshot: DashboardSnapshot, verify: bool = True
) -> DashboardSnapshot:
    """``snapshot`` with the ledger's part filled in, read in one transaction; the
    whole chain re-verified unless ``verify`` is false (``chain`` is then ``None``)."""
    db = ledger.db
    db.conn.execute("BEGIN")
    try:
        status = ledger_status(ledger)
        head = db.execute(
            "SELECT block_hash FROM blocks ORDER BY height DESC LIMIT 1"
        ).fetchone()
        verdicts = tuple(
            RoundVerdicts(int(r), int(a or 0), int(d or 0), int(j or 0))
            for r, a, d, j in db.execute(_VERDICTS_SQL)
        )
        judgements = tuple(
            Judgement(int(r), str(i), str(v), str(reason or ""), float(w or 0.0))
            for r, i, v, reason, w in db.execute(_JUDGEMENTS_SQL)
        )
        reputations = tuple(
            ReputationPoint(int(r), str(i), float(s), str(t))
            for r, i, s, t in db.execute(_REPUTATIONS_SQL)
        )
        board = tuple(leaderboard(ledger))
    finally:
        db.conn.execute("ROLLBACK")
    chain = None
    if verify:
        try:
            chain = ChainCheck(True, f"{ledger.verify()} blocks verified")
        except LedgerError as error:
            chain = ChainCheck(False, " ".join(str(error).split()))
    return replace(
        snapshot,
        status=status,
        head_hash=None if head is None else str(head[0]),
        chain=chain,
        verdicts=verdicts,
        judgements=judgements,
        reputations=reputations,
        board=board,
    )


def read_metrics(run_dir: Path | None) -> tuple[MetricsPoint, ...]:
    """Rows of ``run_dir/metrics.csv`` (none when absent; a torn last line skipped)."""
    if run_dir is None:
        return ()
    path = run_dir / METRICS_CSV
    try:
        text = path.read_text()
    except OSError:
        return ()
    points = []
    for row in csv.DictReader(text.splitlines()):
        if None in row.values():
            continue  # the row being written right now: fewer fields than the header
        try:
            points.append(
                MetricsPoint(
                    server_round=int(row["round"]),
                    accuracy=float(row["accuracy"]),
                    epsilon=_optional_float(row, "epsilon"),
                    epsilon_median=_optional_float(row, "epsilon_median"),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue  # a value cut short mid-write
    return tuple(points)


def _optional_float(row: Mapping[str, str | None], key: str) -> float | None:
    value = row.get(key)
    return float(value) if value not in (None, "") else None


def read_snapshot(
    ledger_path: Path,
    run_dir: Path | None = None,
    peer_view: PeerViewSource | None = None,
    verify: bool = True,
) -> DashboardSnapshot:
    """One refresh: ledger, run metrics and (in peer mode) the peer's view
    (``verify``: see :func:`read_ledger`)."""
    snapshot = DashboardSnapshot(
        ledger_path,
        metrics=read_metrics(run_dir),
        peer=peer_view() if peer_view is not None else None,
    )
    try:
        ledger = open_read_only(ledger_path)
    except (LedgerError, sqlite3.DatabaseError) as error:
        return replace(snapshot, problem=" ".join(str(error).split()))
    try:
        return read_ledger(ledger, snapshot, verify)
    except sqlite3.DatabaseError as error:
        return replace(snapshot, problem=f"{ledger_path} could not be read ({error})")
    finally:
        ledger.close()
