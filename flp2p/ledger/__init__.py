"""The flp2p rewards ledger: reputation, rewards and a signed chain of rounds in SQLite.

See :mod:`flp2p.ledger.store` for the :class:`Ledger`, :mod:`flp2p.ledger.blocks` for
the block format and :mod:`flp2p.ledger.rewards` for the reward formula.
"""

from __future__ import annotations

from flp2p.signatures import Signer

from .blocks import Block, BlockKind
from .errors import (
    BlockFormatError,
    ChainError,
    FederationMismatchError,
    ForeignDatabaseError,
    LedgerError,
    LedgerNotFoundError,
)
from .rewards import Reward, RewardPolicy, contribution_quality, round_rewards
from .store import Ledger

__all__ = [
    "Block",
    "BlockFormatError",
    "BlockKind",
    "ChainError",
    "FederationMismatchError",
    "ForeignDatabaseError",
    "Ledger",
    "LedgerError",
    "LedgerNotFoundError",
    "Reward",
    "RewardPolicy",
    "Signer",
    "contribution_quality",
    "round_rewards",
]
