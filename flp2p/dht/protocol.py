"""The kademlia RPC protocol with validation on STORE, exact routing, short timeouts.

``rpc_store`` is the entry point of every remote write; it validates before storing
and answers ``False`` on refusal, so the writer learns its record was not kept
(kademlia's stock ``Server.set`` counts any answer as success).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

from kademlia.node import Node
from kademlia.protocol import KademliaProtocol

from flp2p.dht.routing import XorRoutingTable
from flp2p.dht.storage import ValidatingStorage
from flp2p.dht.validation import UnknownFederation

log = logging.getLogger(__name__)

SWEEP_CONCURRENCY = 8
"""Pings one sweep keeps in flight."""
SWEEP_ATTEMPTS = 2
"""Pings a contact may miss in one sweep before it is a suspect."""
LIVENESS_WINDOW_TIMEOUTS = 2.0
"""A contact heard from within this many RPC timeouts is not evicted for one miss."""
LIVENESS_MEMORY_S = 600.0
"""How long a sweep remembers when an address was last heard from."""
KADEMLIA_ID_BYTES = 20
"""Kademlia ids and keys are 160 bits."""
GenesisFetcher = Callable[[str], Awaitable[object]]
"""Fetches (and thereby caches in the validator) the genesis of a federation id."""


class ValidatingProtocol(KademliaProtocol):
    """``KademliaProtocol`` that refuses invalid records and routes by XOR distance.

    Parameters
    ----------
    source_node : Node
        This node.
    storage : ValidatingStorage
        This node's storage (its validator is used for STORE).
    ksize : int
        Kademlia k.
    rpc_timeout : float
        Seconds to wait for an answer. Stock rpcudp waits 5 s; a dead contact then
        stalls a lookup round for that long, and is only evicted after it timed out.
    """

    def __init__(
        self,
        source_node: Node,
        storage: ValidatingStorage,
        ksize: int,
        rpc_timeout: float,
    ) -> None:
        super().__init__(source_node, storage, ksize)
        self._wait_timeout = rpc_timeout
        self.router = XorRoutingTable(self, ksize, source_node)
        self.fetch_genesis: GenesisFetcher | None = None
        # asyncio keeps only weak references to tasks; hold them until done.
        self._handoffs: set[asyncio.Task[object]] = set()
        self._last_heard: dict[tuple[str, int], float] = {}

    async def rpc_store(
        self, sender: tuple[str, int], nodeid: bytes, key: bytes, value: object
    ) -> bool:
        """Store ``value`` if valid and newer; return whether it was stored."""
        if not (_is_kademlia_id(nodeid) and _is_kademlia_id(key)):
            return False
        self.welcome_if_new(Node(nodeid, sender[0], sender[1]))
        reason = self.storage.offer(key, value)
        if isinstance(reason, UnknownFederation) and self.fetch_genesis is not None:
            # A lease can only be judged against its genesis: fetch it, then retry.
            await self.fetch_genesis(reason.federation_id)
            reason = self.storage.offer(key, value)
        if reason is not None:
            log.info("refused STORE from %s:%s: %s", sender[0], sender[1], reason)
        return reason is None

    def welcome_if_new(self, node: Node) -> None:
        """Add ``node`` to the routing table and hand it the records it should hold.

        Same rule as kademlia (paper §2.5), with one fix: stored keys are already
        160-bit digests, but the original hashes them again before measuring
        distances, so it handed new nodes the wrong records.
        """
        if not self.router.is_new_node(node):
            return
        for key, value in self.storage:
            keynode = Node(key)
            neighbors = self.router.find_neighbors(keynode)
            if neighbors:
                new_node_close = node.distance_to(keynode) < neighbors[-1].distance_to(
                    keynode
                )
                this_closest = self.source_node.distance_to(keynode) < neighbors[
                    0
                ].distance_to(keynode)
            if not neighbors or (new_node_close and this_closest):
                task = asyncio.ensure_future(self.call_store(node, key, value))
                self._handoffs.add(task)
                task.add_done_callback(self._handoffs.discard)
        self.router.add_contact(node)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        """Note that ``addr`` is alive, then handle the datagram as rpcudp does."""
        # Any datagram proves its sender alive, even a reply that came after its
        # timeout: on a loaded host that is a slow contact, not a dead one.
        self._last_heard[(addr[0], addr[1])] = time.monotonic()
        super().datagram_received(data, addr)

    def silent_since(self, node: Node, since: float) -> bool:
        """Whether nothing came from ``node``'s address since ``since`` (monotonic)."""
        return self._last_heard.get((node.ip, node.port), -math.inf) < since

    def handle_call_response(self, result: tuple[bool, object], node: Node) -> object:
        """As kademlia (evict on no answer), unless the contact spoke very recently."""
        window = LIVENESS_WINDOW_TIMEOUTS * self._wait_timeout
        if not result[0] and not self.silent_since(node, time.monotonic() - window):
            return result
        return super().handle_call_response(result, node)

    async def sweep_contacts(
        self, concurrency: int = SWEEP_CONCURRENCY, attempts: int = SWEEP_ATTEMPTS
    ) -> int:
        """Evict every contact that stayed silent through ``attempts`` pings.

        Kademlia evicts a dead contact only after a lookup waited for it in vain;
        sweeping from the heartbeat keeps lookups from paying that timeout. A contact
        counts as dead only if nothing at all arrived from it during the sweep (late
        replies included): evicting a live contact costs far more than keeping a
        dead one a little longer. Pings are rate-limited, since a burst of hundreds
        overflows UDP buffers.

        Returns
        -------
        int
            Number of contacts evicted.
        """
        started = time.monotonic()
        contacts = [c for bucket in self.router.buckets for c in bucket.nodes.values()]
        slots = asyncio.Semaphore(concurrency)

        async def answers(contact: Node) -> bool:
            async with slots:
                for _ in range(attempts):
                    answered, _ = await self.ping(
                        (contact.ip, contact.port), self.source_node.id
                    )
                    if answered:
                        return True
                return False

        alive = await asyncio.gather(*(answers(c) for c in contacts))
        suspects = [c for c, ok in zip(contacts, alive, strict=True) if not ok]
        if suspects:
            await asyncio.sleep(self._wait_timeout)  # grace for late replies
        dead = [c for c in suspects if self.silent_since(c, started)]
        for contact in dead:
            self.router.remove_contact(contact)
        self._forget_heard_before(started - LIVENESS_MEMORY_S)
        return len(dead)

    def _forget_heard_before(self, cutoff: float) -> None:
        stale = [addr for addr, heard in self._last_heard.items() if heard < cutoff]
        for addr in stale:
            del self._last_heard[addr]


def _is_kademlia_id(value: object) -> bool:
    """Whether ``value`` is a 160-bit id (anything else would crash ``Node``)."""
    return isinstance(value, bytes) and len(value) == KADEMLIA_ID_BYTES
