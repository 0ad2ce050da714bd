"""Chain rules: what makes a block a valid successor, and checking a whole chain.

The same rule serves a replica deciding whether to append a block it was sent and
``flp2p ledger verify`` re-checking a database, so both refuse exactly the same
things. Rules, in the order checked (the first broken one is reported):

1. the block belongs to this federation;
2. its height is the next one (a gap means a deleted block, a repeat a reordering);
3. height 0 is the genesis and only height 0 is;
4. ``previous_hash`` is the hash of the block before (zeros for the genesis);
5. its signer is allowed by the genesis (any key when the genesis lists none); the
   genesis names a signer by its hex public key or by its node id (hex SHA-256 of
   the key, how a federation's genesis record in the DHT names its aggregators);
6. its signature verifies under its own signer key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from flp2p.audit.finality import BlockTarget
from flp2p.audit.statements import NO_MODEL_SHA256, StatementError, inputs_sha256

from .blocks import ZERO_HASH, Block, BlockKind
from .errors import ChainError


@dataclass(frozen=True)
class ChainTip:
    """What a successor is checked against: the genesis and the last block."""

    genesis: Block
    last: Block

    @property
    def next_height(self) -> int:
        """Height the next block must have."""
        return self.last.height + 1


def check_successor(block: Block, tip: ChainTip | None, federation: str) -> None:
    """Raise :class:`ChainError` unless ``block`` may follow ``tip``.

    Parameters
    ----------
    block : Block
        Candidate block.
    tip : ChainTip or None
        The chain so far; ``None`` when it is empty (``block`` must be the genesis).
    federation : str
        The federation the chain belongs to.
    """
    expected_height = 0 if tip is None else tip.next_height
    if block.federation != federation:
        raise ChainError(
            block.height,
            f"belongs to federation {block.federation!r}, not {federation!r}",
        )
    if block.height > expected_height:
        raise ChainError(
            expected_height,
            f"missing (the next block found has height {block.height})",
        )
    if block.height < expected_height:
        raise ChainError(
            expected_height,
            f"out of order (found height {block.height} where {expected_height} "
            "belongs)",
        )
    if (block.height == 0) != (block.kind is BlockKind.GENESIS):
        raise ChainError(block.height, f"a {block.kind.value} block cannot be here")
    previous_hash = ZERO_HASH if tip is None else tip.last.block_hash
    if block.previous_hash != previous_hash:
        raise ChainError(
            block.height,
            "previous hash does not match the block before it "
            f"({block.previous_hash[:12]} != {previous_hash[:12]})",
        )
    genesis = block if tip is None else tip.genesis
    if genesis.allowed_signers and not signer_allowed(
        block.signer, genesis.allowed_signers
    ):
        raise ChainError(
            block.height, f"signer {block.signer[:16]}… is not allowed by the genesis"
        )
    if not block.signature_valid():
        raise ChainError(
            block.height,
            "signature does not verify (a row was altered or the signer swapped)",
        )


def signer_node_id(signer: str) -> str | None:
    """Node id (hex SHA-256 of the raw key) of a block's hex signer key, if hex."""
    try:
        return hashlib.sha256(bytes.fromhex(signer)).hexdigest()
    except ValueError:
        return None


def signer_allowed(signer: str, allowed: Sequence[str]) -> bool:
    """Whether the hex public key ``signer`` is in ``allowed``, by key or node id.

    Both forms are 64 hex digits; a key that equalled another key's node id would be
    a SHA-256 preimage, so accepting either form admits no one else.
    """
    return signer in allowed or signer_node_id(signer) in allowed


def verify_chain(blocks: Iterable[Block], federation: str) -> ChainTip | None:
    """Check every block in order; return the tip (``None`` for an empty chain).

    Raises
    ------
    ChainError
        Naming the first bad block.
    """
    tip: ChainTip | None = None
    for block in blocks:
        check_successor(block, tip, federation)
        tip = ChainTip(genesis=tip.genesis if tip else block, last=block)
    return tip


def block_target(block: Block) -> BlockTarget:
    """What an auditor's co-signature of ``block`` must name.

    The inputs hash is recomputed from the block's contributions (every reply the
    round judged); a block listing one identity twice has none (``None``).
    """
    try:
        inputs: str | None = inputs_sha256(
            (str(row["identity"]), str(row["update_sha256"]))
            for row in block.contributions
        )
    except StatementError:
        inputs = None
    return BlockTarget(
        federation=block.federation,
        server_round=block.server_round,
        model_sha256=block.aggregate_sha256 or NO_MODEL_SHA256,
        body_sha256=block.body_sha256,
        inputs_sha256=inputs,
    )
