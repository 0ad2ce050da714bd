"""Lease lookups that can say why a lease was refused.

:class:`flp2p.dht.AddressBook` drops every record that fails validation, so a lookup
for a forged lease simply finds nothing. A participant deserves to know the
difference between "no aggregator yet" and "somebody served a lease with a bad
signature"; :class:`LeaseWatch` keeps the reasons the validator gave for lease values
it refused.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from flp2p.dht import AddressBook, Lease, RecordRejected, SignedRecord
from flp2p.dht.codec import record_key
from flp2p.peer.addresses import split_host_port

Check = Callable[[bytes, object], Awaitable[SignedRecord | None]]


class LeaseWatch:
    """Looks up the lease of one federation and remembers refused lease values.

    Parameters
    ----------
    book
        The peer's address book (its record server's check is wrapped, once).
    federation_id
        The federation whose lease is watched.
    """

    def __init__(self, book: AddressBook, federation_id: str) -> None:
        self.book = book
        self.federation_id = federation_id
        self.lease_key = record_key(Lease.KIND, federation_id)
        self.rejections: list[str] = []
        original: Check = book.server.check

        async def check(dht_key: bytes, raw: object) -> SignedRecord | None:
            record = await original(dht_key, raw)
            if record is None and dht_key == self.lease_key:
                self.rejections.append(self._reason(dht_key, raw))
            return record

        # The crawl calls `server.check` per value found; wrapping it is the one place
        # that sees refused values together with the validator's reason.
        book.server.check = check  # type: ignore[method-assign]

    def _reason(self, dht_key: bytes, raw: object) -> str:
        try:
            self.book.validator.check(dht_key, raw)
        except RecordRejected as rejected:
            return str(rejected)
        return "refused"

    async def current(self) -> Lease | None:
        """The newest valid, unexpired lease, or ``None``."""
        return await self.book.get_lease(self.federation_id)


async def probe_superlink(address: str, timeout: float = 1.0) -> bool | None:
    """Whether the SuperLink at ``address`` accepts TCP connections.

    Returns
    -------
    bool or None
        ``True`` if it accepts, ``False`` if the connection is refused (nothing
        listens: the process is gone), ``None`` if there is no answer in time (a
        host that died, or one too busy to answer: no conclusion).
    """
    try:
        host, port = split_host_port(address)
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except ConnectionRefusedError:
        return False
    except (OSError, asyncio.TimeoutError, ValueError):
        return None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
