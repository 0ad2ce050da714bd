"""Errors of the rewards ledger, each meant to be shown to a person as one line."""

from __future__ import annotations


class LedgerError(Exception):
    """Base class: anything that stops a ledger operation; nothing was changed."""


class LedgerNotFoundError(LedgerError):
    """The ledger file does not exist (and was not to be created)."""


class ForeignDatabaseError(LedgerError):
    """The file is not an flp2p ledger: corrupt, not SQLite, or another schema."""


class FederationMismatchError(LedgerError):
    """The ledger or block belongs to another federation."""


class BlockFormatError(LedgerError):
    """Bytes that do not decode to a well-formed block."""


class ChainError(LedgerError):
    """A block breaks the chain: bad hash link, height, signer or signature.

    Parameters
    ----------
    height : int
        Height of the first bad block (or of the first missing one).
    reason : str
        What is wrong with it.
    """

    def __init__(self, height: int, reason: str) -> None:
        super().__init__(f"block {height}: {reason}")
        self.height = height
        self.reason = reason
