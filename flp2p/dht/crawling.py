"""A value lookup that believes only valid records and returns the newest.

kademlia's ``ValueSpiderCrawl`` stops at the first round that yields any value and
takes the most common one, so a single peer answering garbage (or a list, which
crashes its ``Counter``) decides the result. Here every answer is validated; invalid
answers count as "no value" and the crawl goes on, and among valid answers the highest
sequence number wins.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from kademlia.crawling import RPCFindResponse, ValueSpiderCrawl
from kademlia.node import Node

from flp2p.dht.codec import SignedRecord

log = logging.getLogger(__name__)

RecordCheck = Callable[[bytes, object], Awaitable[SignedRecord | None]]
"""``(dht_key, raw) -> record or None``; may fetch a genesis, hence async."""


def newest(records: list[tuple[SignedRecord, bytes]]) -> tuple[SignedRecord, bytes]:
    """The (record, raw) pair with the highest sequence number (first on ties)."""
    return max(records, key=lambda pair: pair[0].seq)


class ValidatingValueCrawl(ValueSpiderCrawl):
    """Iterative FIND_VALUE that drops invalid values and keeps the newest valid one.

    Parameters
    ----------
    protocol, node, peers, ksize, alpha
        As for ``kademlia.crawling.ValueSpiderCrawl``.
    check : RecordCheck
        Validates one value found for ``node.id``.
    """

    def __init__(
        self,
        protocol: Any,
        node: Node,
        peers: list[Node],
        ksize: int,
        alpha: int,
        check: RecordCheck,
    ) -> None:
        super().__init__(protocol, node, peers, ksize, alpha)
        self._check = check

    async def find(self) -> SignedRecord | None:
        """Return the newest valid record found, or ``None``."""
        return await self._find(self.protocol.call_find_value)

    async def _nodes_found(self, responses: dict[bytes, Any]) -> SignedRecord | None:
        unresponsive = []
        found: list[tuple[SignedRecord, bytes]] = []
        for peer_id, raw_response in responses.items():
            response = RPCFindResponse(raw_response)
            if not response.happened():
                unresponsive.append(peer_id)
                continue
            peer = self.nearest.get_node(peer_id)
            if response.has_value():
                value = response.response[1].get("value")
                record = await self._check(self.node.id, value)
                if record is not None and isinstance(value, bytes):
                    found.append((record, value))
                    continue
                log.info("dropping invalid value from %s", peer)
                continue
            try:
                contacts = response.get_node_list()
            except (TypeError, ValueError, AttributeError):
                log.info("dropping malformed node list from %s", peer)
                continue
            if peer is not None:
                self.nearest_without_value.push(peer)
            self.nearest.push(contacts)
        self.nearest.remove(unresponsive)

        if found:
            return await self._settle(found)
        if self.nearest.have_contacted_all():
            return None
        return await self.find()

    async def _settle(self, found: list[tuple[SignedRecord, bytes]]) -> SignedRecord:
        record, raw = newest(found)
        # Kademlia §2.3: cache the value at the closest node that lacked it.
        peer = self.nearest_without_value.popleft()
        if peer is not None:
            await self.protocol.call_store(peer, self.node.id, raw)
        return record
