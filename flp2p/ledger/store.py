"""The ledger: a SQLite file that persists reputation and the signed round chain.

:class:`Ledger` implements :class:`strategies.records.ReputationStore` and
:class:`strategies.records.RoundRecorder`, so a strategy keeps reputation across
runs, restarts and aggregator changes by being handed one. On the aggregator each
recorded round becomes a signed block; on a participant :meth:`Ledger.append_block`
verifies and appends the blocks the aggregator sends. In an audited federation
(issue 15) the aggregator proposes a block (:meth:`Ledger.propose_round`), the
round's committee co-signs it, and everyone appends it only once final
(:meth:`Ledger.append_final_block`), co-signatures included. Every block is written
in one ``BEGIN IMMEDIATE`` transaction, so a crash leaves either the whole round or
none; :meth:`Ledger.transaction` widens that transaction to the round's reputations
too, where the ledger is both the strategy's store and its recorder.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import sqlite_utils

from flp2p.audit.committee import DEFAULT_COMMITTEE_SIZE, Committee, draw_committee
from flp2p.audit.finality import block_finality, statement_refusal
from flp2p.audit.statements import AuditStatement, StatementError
from flp2p.signatures import Signer
from strategies.records import ReputationState, RoundReport, Tier

from .blocks import (
    ZERO_HASH,
    Block,
    BlockKind,
    contribution_row,
    reputation_from_row,
    reputation_row,
    reward_row,
)
from .errors import ChainError, FederationMismatchError, LedgerError
from .rewards import RewardPolicy, round_rewards
from .schema import connect, create_schema, enable_wal, read_meta, upgrade_schema
from .tables import (
    contribution_sql_rows,
    header_sql_row,
    iter_blocks,
    load_block,
    reputation_sql_rows,
    reward_sql_rows,
)
from .verify import (
    ChainTip,
    block_target,
    check_successor,
    signer_node_id,
    verify_chain,
)


class Ledger:
    """An flp2p ledger file (use :meth:`open`).

    Parameters
    ----------
    db : sqlite_utils.Database
        Open database holding the ledger schema.
    path : Path
        Where it lives (for messages).
    federation : str
        Federation id of the chain.
    signer : Signer or None
        Key that signs new blocks (the aggregator's identity); ``None`` for a
        replica, which can only append blocks others signed.
    allowed_signers : Sequence[bytes | str]
        Who the genesis allows to sign, used only if this ledger writes the genesis:
        raw public keys (bytes) or node ids (hex SHA-256 of a key, str); empty
        allows any key.
    policy : RewardPolicy
        Reward formula parameters for rounds this ledger records.
    """

    def __init__(
        self,
        db: sqlite_utils.Database,
        path: Path,
        federation: str,
        signer: Signer | None = None,
        allowed_signers: Sequence[bytes | str] = (),
        policy: RewardPolicy | None = None,
    ) -> None:
        self._db = db
        self.path = path
        self.federation = federation
        self.signer = signer
        self.allowed_signers = tuple(
            key if isinstance(key, str) else bytes(key).hex() for key in allowed_signers
        )
        self.policy = policy if policy is not None else RewardPolicy()
        self._tip: ChainTip | None = None
        self._depth = 0
        """Open :meth:`transaction` scopes (0: none, 1: the outermost, …)."""

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        federation: str | None = None,
        signer: Signer | None = None,
        allowed_signers: Sequence[bytes | str] = (),
        policy: RewardPolicy | None = None,
        create: bool = False,
    ) -> Ledger:
        """Open the ledger at ``path``, creating it if ``create`` is true.

        Parameters
        ----------
        path : str or Path
            Database file.
        federation : str or None
            Expected federation; required to create, checked when the file exists.
        signer, allowed_signers, policy
            See :class:`Ledger`.
        create : bool
            Create a missing file (readers leave it false, so they never create one).

        Raises
        ------
        LedgerNotFoundError
            Missing file and ``create`` false.
        ForeignDatabaseError
            The file is not an flp2p ledger; it is left untouched.
        FederationMismatchError
            The ledger belongs to another federation.
        """
        path = Path(path)
        if create and not federation:
            raise LedgerError("a federation id is needed to create a ledger")
        db, is_new = connect(path, create=create)
        try:
            if is_new and create:
                assert federation is not None
                enable_wal(db)
                with db.atomic():
                    create_schema(db, federation)
            else:
                upgrade_schema(db)
            meta = read_meta(db, path)
            if federation is not None and meta["federation"] != federation:
                raise FederationMismatchError(
                    f"{path} is the ledger of federation {meta['federation']!r}, "
                    f"not {federation!r}"
                )
        except BaseException:
            db.close()
            raise
        return cls(db, path, meta["federation"], signer, allowed_signers, policy)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def db(self) -> sqlite_utils.Database:
        """The underlying database, for read-only queries."""
        return self._db

    # -- transactions -------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """A scope whose writes to this ledger all land, or none (re-entrant).

        The outermost scope is one ``BEGIN IMMEDIATE`` transaction: the write lock
        is taken up front, so two writers queue instead of failing halfway with
        "database is locked". A scope opened inside it (every writing method opens
        one) is a ``SAVEPOINT``: its failure undoes its own writes and propagates,
        and nothing is on disk before the outermost scope commits. The strategy's
        round commit (:meth:`strategies.reputation.ReputationBook.commit`) holds one
        around the reputations and the block, so a crash cannot leave standings
        that no block records.
        """
        conn = self._db.conn
        if self._depth:
            savepoint = f"flp2p_{self._depth}"
            conn.execute(f"SAVEPOINT {savepoint}")
            self._depth += 1
            try:
                yield
            except BaseException:
                conn.execute(f"ROLLBACK TO {savepoint}")
                conn.execute(f"RELEASE {savepoint}")
                self._tip = None  # whatever was cached may describe undone rows
                raise
            finally:
                self._depth -= 1
            conn.execute(f"RELEASE {savepoint}")
            return
        conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            self._tip = None  # whatever was cached may describe rolled-back rows
            raise
        finally:
            self._depth = 0
        conn.execute("COMMIT")

    @contextlib.contextmanager
    def _read_snapshot(self) -> Iterator[None]:
        """A read transaction, so several lazy queries see one consistent state."""
        self._db.conn.execute("BEGIN")
        try:
            yield
        finally:
            self._db.conn.execute("ROLLBACK")

    # -- ReputationStore ----------------------------------------------------------

    def get_reputation(self, identity: str) -> ReputationState | None:
        """Current reputation of ``identity``, or ``None`` if never seen."""
        rows = list(
            self._db.query("SELECT * FROM reputations WHERE identity = ?", [identity])
        )
        return reputation_from_row(rows[0]) if rows else None

    def put_reputations(self, states: Iterable[ReputationState]) -> None:
        """Insert or replace reputation states in one transaction.

        These are current standings only; the signed history is written by
        :meth:`record_round`.
        """
        rows = [reputation_row(state) for state in states]
        with self.transaction():
            self._upsert_reputations(rows, updated_height=None)

    def all_reputations(self) -> list[ReputationState]:
        """Every known reputation, ordered by identity."""
        rows = self._db.query("SELECT * FROM reputations ORDER BY identity")
        return [reputation_from_row(row) for row in rows]

    # -- RoundRecorder ------------------------------------------------------------

    def record_round(
        self, report: RoundReport, reputations: Sequence[ReputationState]
    ) -> None:
        """Append ``report`` as one signed block (with its rewards and reputations).

        Writes the genesis first when the chain is empty. Reputation states are
        stored as this round's snapshot and as the current standings. (An audited
        federation uses :meth:`propose_round` and :meth:`append_final_block`
        instead, so that no block is written before its committee co-signs it.)

        Raises
        ------
        LedgerError
            If this ledger has no signer, or its signer is not allowed by the genesis.
        """
        with self.transaction():
            tip = self._genesis_tip()
            self._insert_block(self._round_block(report, reputations, tip), tip)

    def propose_round(
        self,
        report: RoundReport,
        reputations: Sequence[ReputationState],
        candidates: Iterable[str] | None = None,
    ) -> Block:
        """The signed block :meth:`record_round` would append, without appending it.

        The aggregator sends it to the round's auditors; once enough of them
        co-signed, :meth:`append_final_block` appends it. Writes the genesis first
        when the chain is empty (a genesis needs no audit). ``candidates``, the
        live eligible peers its committee is drawn from, are recorded in the block
        (sorted, without repeats).

        Raises
        ------
        LedgerError
            As :meth:`record_round`.
        """
        with self.transaction():
            tip = self._genesis_tip()
            block = self._round_block(report, reputations, tip, candidates)
            check_successor(block, tip, self.federation)
        return block

    def start_chain(self) -> Block:
        """The chain's last block, after writing (and signing) a genesis if the
        chain is empty: an aggregator hands it to its auditors before round 1, so
        that everyone draws the first committee from the same seed.

        Raises
        ------
        LedgerError
            As :meth:`record_round`.
        """
        with self.transaction():
            return self._genesis_tip().last

    def _genesis_tip(self) -> ChainTip:
        """The tip, after writing a genesis if the chain is empty (caller's txn)."""
        if self.signer is None:
            raise LedgerError(
                "this ledger has no signing identity; only an aggregator records rounds"
            )
        tip = self._load_tip()
        if tip is None:
            self._insert_block(self._signed_genesis(), tip=None)
            tip = self._load_tip()
            assert tip is not None
        return tip

    def _round_block(
        self,
        report: RoundReport,
        reputations: Sequence[ReputationState],
        tip: ChainTip,
        candidates: Iterable[str] | None = None,
    ) -> Block:
        """The signed round block of ``report`` following ``tip``."""
        assert self.signer is not None
        contributions = tuple(contribution_row(c) for c in report.contributions)
        latest = {state.identity: state for state in reputations}
        tiers = self._tiers_for(report, latest)
        rewards = round_rewards(report.contributions, tiers, self.policy)
        return Block(
            federation=self.federation,
            height=tip.next_height,
            kind=BlockKind.ROUND,
            previous_hash=tip.last.block_hash,
            server_round=int(report.server_round),
            aggregate_sha256=report.aggregate_sha256,
            created_at=time.time(),
            signer="",
            contributions=contributions,
            rewards=tuple(reward_row(r) for r in rewards),
            reputations=tuple(reputation_row(latest[i]) for i in sorted(latest)),
            candidates=None if candidates is None else tuple(sorted(set(candidates))),
        ).signed_by(self.signer)

    def _tiers_for(
        self, report: RoundReport, latest: dict[str, ReputationState]
    ) -> dict[str, Tier]:
        """Tier of each contributor after the round (stored tier when not updated)."""
        tiers = {}
        for contribution in report.contributions:
            state = latest.get(contribution.identity) or self.get_reputation(
                contribution.identity
            )
            tiers[contribution.identity] = state.tier if state else Tier.BRONZE
        return tiers

    def _signed_genesis(self) -> Block:
        """A genesis block for this federation, signed by this ledger's signer."""
        assert self.signer is not None
        return Block(
            federation=self.federation,
            height=0,
            kind=BlockKind.GENESIS,
            previous_hash=ZERO_HASH,
            server_round=0,
            aggregate_sha256=None,
            created_at=time.time(),
            signer="",
            allowed_signers=self.allowed_signers,
        ).signed_by(self.signer)

    # -- replication --------------------------------------------------------------

    def append_block(self, block_bytes: bytes) -> Block:
        """Verify a block received from the aggregator and append it.

        Checks federation, height, previous hash, allowed signer and signature
        against this replica's chain (:func:`~flp2p.ledger.verify.check_successor`).

        Returns
        -------
        Block
            The appended block.

        Raises
        ------
        BlockFormatError
            The bytes are not a well-formed block.
        ChainError
            The block does not follow this chain; nothing was written.
        """
        block = Block.from_bytes(bytes(block_bytes))
        with self.transaction():
            self._insert_block(block, self._load_tip())
        return block

    def block(self, height: int) -> Block:
        """The block at ``height``.

        Raises
        ------
        LedgerError
            If there is none.
        """
        found = load_block(self._db, height)
        if found is None:
            raise LedgerError(f"{self.path} has no block at height {height}")
        return found

    def blocks(self, start_height: int = 0) -> Iterator[Block]:
        """Blocks from ``start_height`` on, in order (streamed).

        Runs in one read transaction: consume it fully before writing to this
        ledger.
        """
        with self._read_snapshot():
            yield from iter_blocks(self._db, start_height)

    def blocks_bytes_after(self, height: int) -> list[bytes]:
        """Wire bytes of every block above ``height`` (to catch a replica up)."""
        return [block.to_bytes() for block in self.blocks(height + 1)]

    @property
    def height(self) -> int | None:
        """Height of the last block, ``None`` while the chain is empty."""
        row = self._db.execute("SELECT MAX(height) FROM blocks").fetchone()
        return None if row[0] is None else int(row[0])

    def latest_block(self) -> Block | None:
        """The last block, ``None`` while the chain is empty."""
        height = self.height
        return None if height is None else self.block(height)

    def verify(self) -> int:
        """Recheck every block from its rows; return how many were checked.

        Raises
        ------
        ChainError
            Naming the first bad (or missing) block.
        """
        with self._read_snapshot():
            tip = verify_chain(iter_blocks(self._db), self.federation)
        return 0 if tip is None else tip.last.height + 1

    # -- co-signatures ------------------------------------------------------------

    def add_cosignatures(
        self, height: int, statements: Iterable[AuditStatement]
    ) -> int:
        """Store auditors' co-signatures of the block at ``height``; return how many
        were new (one already held byte for byte is skipped).

        Each must verify and name this block exactly (federation, round, model,
        body and inputs hashes). Committee membership is not checked here: it is
        judged, with the committee size, when finality is counted
        (:func:`flp2p.ledger.reports.finality_report`).

        Raises
        ------
        LedgerError
            If there is no such block, a statement does not co-sign it, or its
            auditor already co-signed it differently; nothing was written.
        """
        block = self.block(height)
        target = block_target(block)
        rows = []
        for statement in statements:
            if not statement.signature_is_valid():
                raise LedgerError(
                    f"co-signature by {statement.auditor[:12]} does not verify"
                )
            if (
                statement.federation,
                statement.server_round,
                statement.model_sha256,
                statement.body_sha256,
            ) != (
                target.federation,
                target.server_round,
                target.model_sha256,
                target.body_sha256,
            ) or target.inputs_sha256 not in (None, statement.inputs_sha256):
                raise LedgerError(
                    f"co-signature by {statement.auditor[:12]} is not of block {height}"
                )
            rows.append(_cosignature_row(height, statement))
        added = 0
        with self.transaction():
            for row in rows:
                held = self._db.execute(
                    "SELECT signature, inputs_sha256 FROM cosignatures "
                    "WHERE height = ? AND auditor_public_key = ?",
                    [height, row["auditor_public_key"]],
                ).fetchone()
                if held is None:
                    self._insert_rows("cosignatures", [row])
                    added += 1
                elif tuple(held) != (row["signature"], row["inputs_sha256"]):
                    raise LedgerError(
                        f"auditor {row['auditor_public_key'][:12]} already co-signed "
                        f"block {height} differently"
                    )
        return added

    def cosignatures(self, height: int) -> list[AuditStatement]:
        """The co-signatures stored for the block at ``height``, by auditor key.

        Raises
        ------
        LedgerError
            If a stored row is not a well-formed statement (the file was altered).
        """
        rows = self._db.execute(
            "SELECT server_round, inputs_sha256, model_sha256, body_sha256, "
            "auditor_public_key, signature FROM cosignatures WHERE height = ? "
            "ORDER BY auditor_public_key",
            [height],
        ).fetchall()
        try:
            return [
                AuditStatement(
                    federation=self.federation,
                    server_round=server_round,
                    inputs_sha256=inputs,
                    model_sha256=model,
                    body_sha256=body,
                    auditor_public_key=bytes.fromhex(key),
                    signature=bytes.fromhex(signature),
                )
                for server_round, inputs, model, body, key, signature in rows
            ]
        except (StatementError, ValueError, TypeError) as error:
            raise LedgerError(
                f"block {height}: a stored co-signature is malformed ({error})"
            ) from None

    def next_committee(
        self,
        aggregator: str,
        committee_size: int = DEFAULT_COMMITTEE_SIZE,
        candidates: Iterable[str] | None = None,
    ) -> Committee | None:
        """The audit committee of the block that will follow the current tip.

        Drawn as :func:`flp2p.ledger.reports.finality_report` redraws it: from
        ``candidates`` (the live eligible peers the block will record, see
        :meth:`required_candidates`) or, when ``None``, the genesis' allowed
        signers, minus ``aggregator`` (a node id), seeded by the tip's hash,
        weighted by the tiers the chain recorded up to the tip. ``None`` when the
        chain is empty or its genesis allows any signer (a simulation: no
        committee).
        """
        pool = None if candidates is None else tuple(candidates)
        return self._committee_after(self._load_tip(), aggregator, committee_size, pool)

    def required_candidates(self, aggregator: str) -> tuple[str, ...]:
        """Who the next block's candidate set must contain: every eligible peer,
        other than ``aggregator``, that co-signed the tip (sorted).

        They proved they were live one round ago, so an aggregator that leaves them
        out to draw its committee among friends has the block refused by every
        replica (:func:`candidate_refusal`).
        """
        tip = self._load_tip()
        return () if tip is None else self._required_after(tip, aggregator)

    def _required_after(self, tip: ChainTip, aggregator: str) -> tuple[str, ...]:
        eligible = set(tip.genesis.allowed_signers)
        keys = self._db.execute(
            "SELECT auditor_public_key FROM cosignatures WHERE height = ?",
            [tip.last.height],
        ).fetchall()
        signers = {signer_node_id(str(key)) for (key,) in keys}
        return tuple(sorted(n for n in signers & eligible if n and n != aggregator))

    def _committee_after(
        self,
        tip: ChainTip | None,
        aggregator: str,
        committee_size: int,
        candidates: tuple[str, ...] | None = None,
    ) -> Committee | None:
        if tip is None or not tip.genesis.allowed_signers:
            return None
        return draw_committee(
            tip.genesis.allowed_signers if candidates is None else candidates,
            aggregator,
            tip.last.block_hash,
            self._chain_tiers(tip.last.height),
            committee_size,
        )

    def tiers_up_to(self, height: int) -> dict[str, Tier]:
        """Each identity's tier in the last block up to ``height`` that lists it
        (the weights of the committee drawn after that block)."""
        return self._chain_tiers(height)

    def _chain_tiers(self, height: int) -> dict[str, Tier]:
        """Each identity's tier in the last block up to ``height`` that lists it."""
        rows = self._db.execute(
            """
            SELECT identity, tier FROM reputation_snapshots AS s
            WHERE s.height = (SELECT MAX(t.height) FROM reputation_snapshots AS t
                              WHERE t.identity = s.identity AND t.height <= ?)
            """,
            [height],
        ).fetchall()
        return {str(identity): Tier(tier) for identity, tier in rows}

    def append_final_block(
        self,
        block_bytes: bytes,
        statements: Iterable[AuditStatement],
        committee_size: int = DEFAULT_COMMITTEE_SIZE,
    ) -> Block:
        """Append a round block only if its committee made it final, with the
        co-signatures that count.

        Checks the block as :meth:`append_block` does, then counts ``statements``
        against the committee of this height (:meth:`next_committee` with the
        block's signer as aggregator); block and co-signatures are written in one
        transaction.

        Raises
        ------
        BlockFormatError
            The bytes are not a well-formed block.
        ChainError
            The block does not follow this chain.
        LedgerError
            The block has no committee (append it with :meth:`append_block`) or too
            few valid co-signatures; nothing was written.
        """
        block = Block.from_bytes(bytes(block_bytes))
        statements = list(statements)
        with self.transaction():
            tip = self._load_tip()
            check_successor(block, tip, self.federation)
            self._check_candidates(block, tip)
            aggregator = signer_node_id(block.signer) or block.signer
            committee = self._committee_after(
                tip, aggregator, committee_size, block.candidates
            )
            if committee is None or not committee.members:
                if block.candidates is not None and committee is not None:
                    # No live committee: final on the signer's signature alone,
                    # once _insert_block has checked the recorded candidates.
                    self._insert_block(block, tip)
                    return block
                raise LedgerError(
                    f"block {block.height} has no committee to finalise it"
                )
            target = block_target(block)
            finality = block_finality(target, committee, statements)
            if not finality.is_final:
                raise LedgerError(
                    f"block {block.height} is not final: {finality.valid}/"
                    f"{finality.threshold} valid committee co-signatures"
                    + (f" ({'; '.join(finality.refused)})" if finality.refused else "")
                )
            self._insert_block(block, tip)
            counted: dict[str, AuditStatement] = {}
            for statement in statements:
                if statement_refusal(statement, target, committee) is None:
                    counted.setdefault(statement.auditor, statement)
            self._insert_rows(
                "cosignatures",
                [_cosignature_row(block.height, s) for s in counted.values()],
            )
        return block

    # -- writing ------------------------------------------------------------------

    def _load_tip(self) -> ChainTip | None:
        """Genesis and last block, reusing the cached tip while it is still the tip."""
        row = self._db.execute(
            "SELECT height, block_hash FROM blocks ORDER BY height DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        if self._tip is not None and (
            self._tip.last.height,
            self._tip.last.block_hash,
        ) == (row[0], row[1]):
            return self._tip
        genesis, last = load_block(self._db, 0), load_block(self._db, row[0])
        if genesis is None or last is None:
            raise ChainError(0, "the chain has no genesis")
        return ChainTip(genesis, last)

    def _insert_block(self, block: Block, tip: ChainTip | None) -> None:
        """Check ``block`` against ``tip`` and write all its rows (caller's txn)."""
        check_successor(block, tip, self.federation)
        self._check_candidates(block, tip)
        for table, rows in (
            ("blocks", [header_sql_row(block)]),
            ("contributions", contribution_sql_rows(block)),
            ("rewards", reward_sql_rows(block)),
            ("reputation_snapshots", reputation_sql_rows(block)),
        ):
            self._insert_rows(table, rows)
        self._update_derived(block)
        self._tip = ChainTip(tip.genesis if tip else block, block)

    def _check_candidates(self, block: Block, tip: ChainTip | None) -> None:
        """Raise :class:`ChainError` if ``block`` records committee candidates
        that :func:`candidate_refusal` refuses."""
        if block.candidates is None or tip is None:
            return
        aggregator = signer_node_id(block.signer) or block.signer
        refusal = candidate_refusal(
            block.candidates,
            tip.genesis.allowed_signers,
            aggregator,
            self._required_after(tip, aggregator),
        )
        if refusal:
            raise ChainError(block.height, refusal)

    def _insert_rows(self, table: str, rows: Sequence[Mapping[str, object]]) -> None:
        """Plain ``executemany`` INSERT (the caller's transaction).

        sqlite-utils' ``insert_all`` re-inspects and JSON-converts every value, which
        alone took longer than the 100 ms budget for a 1,000-contribution round.
        """
        if not rows:
            return
        columns = list(rows[0])
        self._db.conn.executemany(
            f"INSERT INTO {table} ({', '.join(columns)}) "
            f"VALUES ({', '.join(':' + column for column in columns)})",
            rows,
        )

    def _update_derived(self, block: Block) -> None:
        """Refresh current reputations, known identities and bans from ``block``."""
        self._upsert_reputations(block.reputations, updated_height=block.height)
        self._db.conn.executemany(
            """
            INSERT INTO identities (identity, first_height, last_height, first_round,
                                    last_round, contributions)
            VALUES (?, ?, ?, ?, ?, 1)
            ON CONFLICT(identity) DO UPDATE SET
                last_height = excluded.last_height,
                last_round = excluded.last_round,
                contributions = contributions + 1
            """,
            [
                (
                    row["identity"],
                    block.height,
                    block.height,
                    block.server_round,
                    block.server_round,
                )
                for row in block.contributions
            ],
        )
        reasons = {row["identity"]: row["reason"] for row in block.contributions}
        self._db.conn.executemany(
            "INSERT OR IGNORE INTO bans VALUES (?, ?, ?, ?, ?)",
            [
                (
                    row["identity"],
                    block.height,
                    block.server_round,
                    row["banned_until"],
                    reasons.get(row["identity"], ""),
                )
                for row in block.reputations
                if _as_int(row["banned_until"]) > block.server_round
            ],
        )

    def _upsert_reputations(
        self, rows: Iterable[Mapping[str, object]], updated_height: int | None
    ) -> None:
        """Replace current reputation rows (a derived table, not append-only)."""
        self._db.conn.executemany(
            """
            INSERT OR REPLACE INTO reputations (identity, score, tier, first_round,
                last_round, rounds_participated, rounds_accepted, rounds_rejected,
                banned_until, updated_height)
            VALUES (:identity, :score, :tier, :first_round, :last_round,
                :rounds_participated, :rounds_accepted, :rounds_rejected,
                :banned_until, :updated_height)
            """,
            [{**row, "updated_height": updated_height} for row in rows],
        )


def candidate_refusal(
    candidates: Sequence[str],
    eligible: Sequence[str],
    aggregator: str,
    required: Iterable[str],
) -> str:
    """Why a block's recorded candidate set is not one its committee may be drawn
    from ("" when it is).

    The set must hold only aggregator-eligible peers other than the aggregator,
    and every one of ``required`` (:meth:`Ledger.required_candidates`: the
    previous block's eligible co-signers). Liveness itself cannot be checked
    after the fact, so this is what stops an aggregator from cherry-picking its
    committee; leaving out other live peers is not detected (README, threat
    model).
    """
    if not eligible:
        return "records committee candidates, but the genesis allows any signer"
    outsiders = sorted(set(candidates) - set(eligible))
    if outsiders:
        return f"committee candidate {outsiders[0][:12]}… is not aggregator-eligible"
    if aggregator in candidates:
        return "its signer is among its own committee candidates"
    left_out = sorted(set(required) - set(candidates))
    if left_out:
        return (
            f"committee candidates leave out {left_out[0][:12]}…, who co-signed "
            "the previous block"
        )
    return ""


def _cosignature_row(height: int, statement: AuditStatement) -> dict[str, Any]:
    """The ``cosignatures`` row of one statement (the federation is the ledger's)."""
    return {
        "height": height,
        "auditor_public_key": statement.auditor_public_key.hex(),
        "server_round": statement.server_round,
        "inputs_sha256": statement.inputs_sha256,
        "model_sha256": statement.model_sha256,
        "body_sha256": statement.body_sha256,
        "signature": statement.signature.hex(),
    }


def _as_int(value: object) -> int:
    """``value``, known to be an int because the block was validated."""
    assert isinstance(value, int)
    return value
