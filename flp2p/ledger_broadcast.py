"""The ledger travels with the model.

The aggregator records each finished round as a signed block in its ledger
(:class:`flp2p.ledger.Ledger`, the strategy's recorder) and hands the newest blocks to
the participants inside the next round's training instruction. Every participant
verifies them against its own copy — federation, height, previous hash, signer,
signature — and appends them, so that each holds the same chain and nobody, the
aggregator included, can rewrite history unseen. A block that does not follow the
replica's chain is refused and nothing is written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from flp2p.audit.statements import AuditStatement, StatementError
from flp2p.ledger import Block, ChainError, Ledger, LedgerError
from flp2p.ledger.verify import signer_node_id
from strategies.records import CONFIG_KEY, METRICS_KEY
from strategies.wrapping import StrategyWrapper

log = logging.getLogger(__name__)

LEDGER_BLOCKS_KEY = "ledger-blocks"
"""Field of the training instruction holding the newest blocks (list of bytes)."""
LEDGER_COSIGNATURES_KEY = "ledger-cosignatures"
"""Field of the training instruction holding those blocks' co-signatures (list of
audit statements as JSON strings; issue 15)."""
LEDGER_HEIGHT_METRIC = "ledger-height"
"""Reply metric: the height of the sender's replica after the instruction's blocks."""
LEDGER_REFUSED_METRIC = "ledger-refused"
"""Reply metric: 1 when the sender's replica refused a block of the instruction."""
CATCH_UP_BLOCKS = 8
"""Blocks sent with each instruction to a node whose replica is known to be recent:
enough for a client that sat out a few rounds to catch up, small enough to keep
instructions light (a 20-client block is ~8 KB). A node whose replica height is not
known, or lies further back, is sent every block after the height it last reported
(the whole chain for a first-time client): a window alone would never reach a fresh
client's empty replica once the chain outgrew it."""


class LedgerBroadcast(StrategyWrapper):
    """Holds any Flower strategy and attaches ledger blocks to its training
    instructions.

    ``LedgerBroadcast(strategy, ledger)``; the ledger must be the one the strategy
    records into. Everything else is the held strategy's (:class:`strategies.
    wrapping.StrategyWrapper`), ``epsilon`` of a central-DP strategy included.

    Each node's replica height is learnt from its replies (``ledger-height``) and a
    refusal (``ledger-refused``) forgets it, so the next instruction to that node
    carries every block after what it verifiably holds.

    Parameters
    ----------
    strategy : Strategy
        The strategy whose instructions carry the blocks.
    ledger : Ledger
        The aggregator's ledger.
    """

    def __init__(self, strategy: Strategy, ledger: Ledger) -> None:
        super().__init__(strategy)
        self.ledger = ledger
        self.replica_heights: dict[int, int] = {}
        """Flower node id → the height its replica last reported."""

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Configure as the strategy does, each instruction with the blocks its
        node lacks."""
        height = self.ledger.height
        messages = list(
            self.strategy.configure_train(server_round, arrays, config, grid)
        )
        if height is None:
            return messages
        window_start = height - CATCH_UP_BLOCKS
        sent: dict[int, ConfigRecord] = {}  # one record per distinct start height
        for message in messages:
            held = self.replica_heights.get(message.metadata.dst_node_id, -1)
            after = window_start if held >= window_start else held
            if after not in sent:
                sent[after] = catch_up_fields(self.ledger, after, height)
            message.content = _with_config(message.content, sent[after])
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate as the strategy does; note each replica's reported height."""
        replies = list(replies)
        for reply in replies:
            if reply.has_error():
                continue
            metrics = reply.content.metric_records.get(METRICS_KEY)
            if metrics is None:
                continue
            node = reply.metadata.src_node_id
            if metrics.get(LEDGER_REFUSED_METRIC):
                self.replica_heights.pop(node, None)
            elif isinstance(height := metrics.get(LEDGER_HEIGHT_METRIC), int):
                self.replica_heights[node] = height
        return self.strategy.aggregate_train(server_round, replies)


def catch_up_fields(ledger: Ledger, after: int, height: int) -> ConfigRecord:
    """Blocks above ``after`` up to ``height`` and their co-signatures, as config
    fields: a replica with a committee appends a round block only with them."""
    blocks = ledger.blocks_bytes_after(after)
    fields = ConfigRecord({LEDGER_BLOCKS_KEY: blocks})
    statements = [
        json.dumps(statement.to_json())
        for h in range(max(1, after + 1), height + 1)
        for statement in ledger.cosignatures(h)
    ]
    if statements:
        fields[LEDGER_COSIGNATURES_KEY] = statements
    return fields


def _with_config(content: RecordDict, blocks: ConfigRecord) -> RecordDict:
    """A copy of ``content`` whose ``config`` record also holds ``blocks``: the held
    strategy may share one content and one config between all its messages."""
    copied = RecordDict(dict(content.items()))
    config = content.config_records.get(CONFIG_KEY, ConfigRecord())
    copied[CONFIG_KEY] = ConfigRecord({**dict(config.items()), **dict(blocks.items())})
    return copied


def block_height(block_bytes: bytes) -> int:
    """Height named in a block's wire form (checked again when it is appended)."""
    height = json.loads(bytes(block_bytes)).get("height")
    if not isinstance(height, int) or isinstance(height, bool):
        raise LedgerError("a received block has no integer height")
    return height


def decode_cosignatures(values: Iterable[object]) -> list[AuditStatement]:
    """Audit statements from their JSON strings; malformed ones are left out (they
    could not count anyway)."""
    statements = []
    for value in values:
        try:
            statements.append(AuditStatement.from_json(json.loads(str(value))))
        except (ValueError, StatementError):
            log.warning("left out a malformed co-signature")
    return statements


def sync_replica(
    path: Path,
    federation: str,
    blocks: Sequence[bytes],
    signer_ids: Collection[str] | None = None,
    cosignatures: Sequence[AuditStatement] = (),
    committee_size: int = 0,
) -> int | None:
    """Append the blocks this replica lacks; return its height afterwards.

    Blocks at or below the replica's height are skipped (already held); each new
    one is verified by :meth:`Ledger.append_block`. With ``committee_size`` k > 0 a
    round block that has a committee is appended only if final, with the
    ``cosignatures`` that count (:meth:`Ledger.append_final_block`); co-signatures
    of other blocks are stored beside them.

    Parameters
    ----------
    path, federation
        The replica's file and the federation it belongs to.
    blocks
        Blocks in wire form, in any order.
    signer_ids
        Node ids whose signatures this participant accepts, whatever the chain's
        own genesis block says: in the peer runtime, the aggregators the
        federation's genesis record names (the aggregator that wrote the chain's
        genesis block cannot widen that list). ``None`` leaves the check to the
        chain's genesis block alone (simulation).

    Raises
    ------
    LedgerError
        A block is malformed, from another federation, out of order, forged or
        signed by someone outside ``signer_ids``; blocks before it that verified
        stay appended, it and later ones do not.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with Ledger.open(path, federation=federation, create=True) as replica:
        refused: Exception | None = None
        # One outer transaction, so a catch-up of N blocks is one synchronous=FULL
        # commit instead of N (a 1,000-client simulation paid one per block per
        # fresh client). Each append opens its own SAVEPOINT inside it: a block
        # that fails undoes only itself, and the verified prefix still commits.
        with replica.transaction():
            try:
                for block in sorted(blocks, key=block_height):
                    _append_received(
                        replica, block, signer_ids, cosignatures, committee_size
                    )
            except Exception as error:  # re-raised below, once the prefix commits
                refused = error
        if refused is not None:
            raise refused
        return replica.height


def _append_received(
    replica: Ledger,
    block: bytes,
    signer_ids: Collection[str] | None,
    cosignatures: Sequence[AuditStatement],
    committee_size: int,
) -> None:
    """Append one received block unless the replica already holds its height."""
    held = replica.height
    if held is not None and block_height(block) <= held:
        return
    parsed = Block.from_bytes(bytes(block))
    if signer_ids is not None and signer_node_id(parsed.signer) not in signer_ids:
        raise ChainError(
            parsed.height,
            f"signer {parsed.signer[:16]}… is not an aggregator of the federation",
        )
    own = [
        s
        for s in cosignatures
        if (s.server_round, s.body_sha256) == (parsed.server_round, parsed.body_sha256)
    ]
    aggregator = signer_node_id(parsed.signer) or parsed.signer
    committee = (
        replica.next_committee(aggregator, committee_size, parsed.candidates)
        if committee_size > 0 and parsed.height > 0
        else None
    )
    if committee is not None and committee.members:
        replica.append_final_block(block, own, committee_size)
    else:
        replica.append_block(block)
        if own:
            replica.add_cosignatures(parsed.height, own)
