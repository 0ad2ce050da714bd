"""A kademlia ``IStorage`` that keeps only valid records and only their newest version.

Every write path of kademlia ends here (``rpc_store``, local stores in ``set_digest``,
hourly republishing), so this is the last line of defence on STORE. Reads re-check
expiry: kademlia's own ``ForgetfulStorage`` forgets by local age, which republishing
resets forever, whereas a signed expiry cannot be extended by anyone but the signer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from kademlia.storage import IStorage

from flp2p.dht.codec import SignedRecord
from flp2p.dht.record_validation import RecordRejected, RecordValidator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Entry:
    stored_at: float
    """``time.monotonic()`` when stored (kademlia republishes by local age)."""
    raw: bytes
    record: SignedRecord


class ValidatingStorage(IStorage):
    """Storage that refuses invalid, expired or superseded records.

    Parameters
    ----------
    validator : RecordValidator
        Shared with the protocol and the lookups of the same node.
    """

    def __init__(self, validator: RecordValidator) -> None:
        self.validator = validator
        self._entries: dict[bytes, _Entry] = {}

    def offer(self, key: bytes, value: object) -> RecordRejected | None:
        """Store ``value`` under ``key`` if it is valid and newer than what is held.

        Returns
        -------
        RecordRejected or None
            ``None`` if stored (or already held byte for byte), else why not.
        """
        try:
            record = self.validator.check(key, value)
        except RecordRejected as error:
            return error
        assert isinstance(value, bytes)  # check() accepts bytes only
        held = self._live(key)
        if held is not None:
            if held.raw == value:
                return None
            if record.seq <= held.record.seq:
                return RecordRejected(
                    f"stale record: seq {record.seq} does not supersede "
                    f"held seq {held.record.seq}"
                )
        self._entries.pop(key, None)  # re-insert: iteration order is age order
        self._entries[key] = _Entry(time.monotonic(), value, record)
        return None

    def record(self, key: bytes) -> SignedRecord | None:
        """The live record held under ``key``, decoded."""
        entry = self._live(key)
        return None if entry is None else entry.record

    def _live(self, key: bytes) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and entry.record.expires_at <= self.validator.clock():
            del self._entries[key]
            return None
        return entry

    def _cull(self) -> None:
        now = self.validator.clock()
        for key in [k for k, e in self._entries.items() if e.record.expires_at <= now]:
            del self._entries[key]

    # -- kademlia.storage.IStorage -------------------------------------------------

    def __setitem__(self, key: bytes, value: object) -> None:
        reason = self.offer(key, value)
        if reason is not None:
            log.info("not storing %s: %s", key.hex()[:16], reason)

    def __getitem__(self, key: bytes) -> bytes:
        entry = self._live(key)
        if entry is None:
            raise KeyError(key)
        return entry.raw

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:
        entry = self._live(key)
        return default if entry is None else entry.raw

    def iter_older_than(self, seconds_old: float) -> list[tuple[bytes, bytes]]:
        self._cull()
        cutoff = time.monotonic() - seconds_old
        return [(k, e.raw) for k, e in self._entries.items() if e.stored_at <= cutoff]

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        self._cull()
        return iter([(k, e.raw) for k, e in self._entries.items()])

    def __len__(self) -> int:
        self._cull()
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes) and self._live(key) is not None
