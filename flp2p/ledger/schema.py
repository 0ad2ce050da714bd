"""Tables of the ledger database, and opening a file safely.

Chain tables (``blocks``, ``contributions``, ``rewards``, ``reputation_snapshots``)
hold exactly what the signed blocks hold, and ``cosignatures`` the auditors' signed
statements about them (:mod:`flp2p.audit.statements`); triggers make them
append-only so a bug cannot rewrite history (an attacker with the file can drop
triggers, which is what the hash chain and the signatures are for). Derived tables
(``reputations``, ``identities``, ``bans``) are updated in the same transaction as
each block, for fast reads. Views ``rounds`` and
``contribution_ledger`` make the file pleasant to query with the ``sqlite-utils``
command line.

Writes use WAL mode and ``BEGIN IMMEDIATE``: measured here, deferred transactions
with several writers failed with "database is locked" while immediate ones did not
(``docs/library-notes.md``).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils

from .blocks import REPUTATION_FIELDS
from .errors import ForeignDatabaseError, LedgerNotFoundError

SCHEMA_NAME = "flp2p-ledger"
"""``meta.schema``: marks a file as ours, so foreign databases are refused."""
SCHEMA_VERSION = "3"
"""``meta.schema_version`` (2 added ``cosignatures``, 3 ``blocks.candidates``)."""
CHAIN_TABLES: dict[str, tuple[str, ...]] = {
    "blocks": ("height",),
    "contributions": ("height", "position"),
    "rewards": ("height", "position"),
    "reputation_snapshots": ("height", "identity"),
    "cosignatures": ("height", "auditor_public_key"),
}
"""Append-only tables and their primary keys."""
DERIVED_TABLES = ("reputations", "identities", "bans")
BUSY_TIMEOUT_S = 30.0
"""How long a writer waits for another process's transaction before giving up."""


_VIEWS = """
CREATE VIEW IF NOT EXISTS rounds AS
    SELECT height, server_round, aggregate_sha256, created_at, signer, block_hash
    FROM blocks WHERE kind = 'round';
CREATE VIEW IF NOT EXISTS contribution_ledger AS
    SELECT c.height, b.server_round, c.position, c.identity, c.num_examples,
           c.verdict, c.reason, c.weight, r.quality, r.tier, r.multiplier,
           r.tokens, c.update_sha256, c.scores
    FROM contributions AS c
    JOIN blocks AS b ON b.height = c.height
    JOIN rewards AS r ON r.height = c.height AND r.position = c.position;
"""


def _append_only_triggers(table: str, key: tuple[str, ...]) -> str:
    """Triggers refusing UPDATE, DELETE and a re-INSERT of an existing key.

    The INSERT guard matters because ``INSERT OR REPLACE`` deletes the old row
    without firing DELETE triggers.
    """
    same_key = " AND ".join(f"{column} = NEW.{column}" for column in key)
    message = f"{table} is append-only"
    return f"""
CREATE TRIGGER IF NOT EXISTS {table}_no_update BEFORE UPDATE ON {table}
BEGIN SELECT RAISE(ABORT, '{message}'); END;
CREATE TRIGGER IF NOT EXISTS {table}_no_delete BEFORE DELETE ON {table}
BEGIN SELECT RAISE(ABORT, '{message}'); END;
CREATE TRIGGER IF NOT EXISTS {table}_no_replace BEFORE INSERT ON {table}
WHEN EXISTS (SELECT 1 FROM {table} WHERE {same_key})
BEGIN SELECT RAISE(ABORT, '{message}'); END;
"""


def _create_cosignatures(db: sqlite_utils.Database) -> None:
    db.table("cosignatures").create(
        {
            "height": int,
            "auditor_public_key": str,
            "server_round": int,
            "inputs_sha256": str,
            "model_sha256": str,
            "body_sha256": str,
            "signature": str,
        },
        pk=("height", "auditor_public_key"),
        not_null={"server_round", "inputs_sha256", "body_sha256", "signature"},
    )


def create_schema(db: sqlite_utils.Database, federation: str) -> None:
    """Create every table, index, trigger and view, and stamp ``meta``."""
    db.table("meta").create({"key": str, "value": str}, pk="key")
    db.table("blocks").create(
        {
            "height": int,
            "kind": str,
            "federation": str,
            "previous_hash": str,
            "server_round": int,
            "aggregate_sha256": str,
            "created_at": float,
            "signer": str,
            "allowed_signers": str,
            "block_hash": str,
            "signature": str,
            "candidates": str,
        },
        pk="height",
        not_null={"kind", "federation", "previous_hash", "signer", "block_hash"},
    )
    db.table("contributions").create(
        {
            "height": int,
            "position": int,
            "identity": str,
            # Flower node ids are uint64 and overflow SQLite's signed INTEGER.
            "node_id": str,
            "num_examples": int,
            "update_sha256": str,
            "scores": str,
            "verdict": str,
            "reason": str,
            "weight": float,
            "metrics": str,
        },
        pk=("height", "position"),
    )
    db.table("rewards").create(
        {
            "height": int,
            "position": int,
            "identity": str,
            "quality": float,
            "tier": str,
            "multiplier": float,
            "tokens": float,
        },
        pk=("height", "position"),
    )
    db.table("reputation_snapshots").create(
        {"height": int, **REPUTATION_FIELDS}, pk=("height", "identity")
    )
    _create_cosignatures(db)
    db.table("reputations").create(
        {**REPUTATION_FIELDS, "updated_height": int}, pk="identity"
    )
    db.table("identities").create(
        {
            "identity": str,
            "first_height": int,
            "last_height": int,
            "first_round": int,
            "last_round": int,
            "contributions": int,
        },
        pk="identity",
    )
    db.table("bans").create(
        {
            "identity": str,
            "height": int,
            "server_round": int,
            "banned_until": int,
            "reason": str,
        },
        pk=("identity", "banned_until"),
    )
    db.table("contributions").create_index(["identity"])
    db.table("rewards").create_index(["identity"])
    db.executescript(
        "".join(_append_only_triggers(t, k) for t, k in CHAIN_TABLES.items()) + _VIEWS
    )
    db.table("meta").insert_all(
        [
            {"key": "schema", "value": SCHEMA_NAME},
            {"key": "schema_version", "value": SCHEMA_VERSION},
            {"key": "federation", "value": federation},
        ]
    )


def upgrade_schema(db: sqlite_utils.Database) -> bool:
    """Bring a ledger of an older schema version to :data:`SCHEMA_VERSION`.

    Version 1 lacks ``cosignatures``, version 2 the ``blocks.candidates`` column;
    adding the (empty) table with its triggers and the (null) column is all
    version 3 needs, and every block stays as it was signed. Returns whether
    anything changed. A file that is not an flp2p ledger is left untouched (and
    refused afterwards by :func:`read_meta`).
    """
    try:
        if "meta" not in set(db.table_names()):
            return False
        version = db.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'"
        ).fetchone()
    except sqlite3.DatabaseError:
        return False
    if version is None or version[0] not in ("1", "2"):
        return False
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        if "cosignatures" not in set(db.table_names()):
            _create_cosignatures(db)
            db.executescript(
                _append_only_triggers("cosignatures", CHAIN_TABLES["cosignatures"])
            )
        if "candidates" not in db.table("blocks").columns_dict:
            db.execute("ALTER TABLE blocks ADD COLUMN candidates TEXT")
        db.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", [SCHEMA_VERSION]
        )
    except BaseException:
        db.conn.rollback()
        raise
    db.conn.commit()
    return True


def read_meta(db: sqlite_utils.Database, path: Path) -> dict[str, str]:
    """``meta`` as a dict, after checking the file is an flp2p ledger.

    Raises
    ------
    ForeignDatabaseError
        If the file is corrupt, not SQLite, or lacks our schema marker or tables.
    """
    try:
        tables = set(db.table_names())
        if "meta" not in tables:
            raise ForeignDatabaseError(f"{path} is not an flp2p ledger (no meta table)")
        meta = {row["key"]: row["value"] for row in db.table("meta").rows}
    except sqlite3.DatabaseError as error:
        raise ForeignDatabaseError(
            f"{path} is not a readable ledger database ({error})"
        ) from None
    if meta.get("schema") != SCHEMA_NAME:
        raise ForeignDatabaseError(f"{path} is not an flp2p ledger (foreign schema)")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ForeignDatabaseError(
            f"{path} has ledger schema version {meta.get('schema_version')!r}; "
            f"this flp2p reads version {SCHEMA_VERSION}"
        )
    missing = (set(CHAIN_TABLES) | set(DERIVED_TABLES)) - tables
    if missing or "federation" not in meta:
        raise ForeignDatabaseError(
            f"{path} is an incomplete ledger "
            f"(missing {sorted(missing) or 'federation'})"
        )
    return meta


def connect(path: Path, *, create: bool) -> tuple[sqlite_utils.Database, bool]:
    """Open ``path``; return the database and whether it is new (no tables yet).

    A missing file is created only when ``create`` is true: a reader asking for a
    ledger that is not there must not leave an empty one behind.

    Raises
    ------
    LedgerNotFoundError
        If ``path`` does not exist and ``create`` is false.
    ForeignDatabaseError
        If ``path`` exists but is not a file SQLite can open.
    """
    if path.exists() and not path.is_file():
        raise ForeignDatabaseError(f"{path} is not a file")
    if not path.exists() and not create:
        raise LedgerNotFoundError(f"no ledger at {path}")
    mode = "rwc" if create else "rw"
    try:
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode={mode}",
            uri=True,
            timeout=BUSY_TIMEOUT_S,
            check_same_thread=False,
        )
        is_new = not conn.execute("SELECT name FROM sqlite_master").fetchall()
    except sqlite3.DatabaseError as error:
        raise ForeignDatabaseError(
            f"{path} is not a readable ledger database ({error})"
        ) from None
    db = sqlite_utils.Database(conn)
    # A crash may lose at most the transaction in flight, never a committed block.
    conn.execute("PRAGMA synchronous=FULL")
    return db, is_new


def enable_wal(db: sqlite_utils.Database) -> None:
    """Switch a new database to WAL mode (persistent in the file)."""
    db.conn.execute("PRAGMA journal_mode=WAL")
