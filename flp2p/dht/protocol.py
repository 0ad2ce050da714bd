"""The kademlia RPC protocol with validation on STORE, exact routing, short timeouts.

``rpc_store`` is the entry point of every remote write; it validates before storing
and answers ``False`` on refusal, so the writer learns its record was not kept
(kademlia's stock ``Server.set`` counts any answer as success).

Every task the protocol starts (handling a datagram, handing records to a new contact,
a lookup's requests still in flight, a ping of a full bucket's head) is held in one
set and started through :meth:`ValidatingProtocol.spawn`, so :meth:`close` can cancel
and await them all; rpcudp starts its own with ``ensure_future`` and forgets them,
which left tasks running after a node stopped and logged "Task exception was never
retrieved" for every malformed datagram.

A *client-only* protocol (``client_only=True``) is for a peer that others cannot
reach, e.g. behind NAT: it sends requests and reads the answers, but names itself
with :data:`CLIENT_ONLY_SENDER` instead of its id, so no receiver adds it to its
routing table (it would hand the address out to lookups that then wait for it in
vain), and it ignores requests. As hivemind's ``client_mode``: the node queries and
publishes through others and holds no records. Every protocol, client or not,
serves client-only askers without adding them.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import umsgpack  # type: ignore[import-untyped]  # rpcudp's codec, untyped
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol

from flp2p.dht.record_validation import UnknownFederation
from flp2p.dht.routing import XorRoutingTable
from flp2p.dht.storage import ValidatingStorage

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
MAX_SUSPECTS = 4096
"""Bound on remembered suspects (the oldest is forgotten first)."""
STALL_FLOOR_S = 0.01
"""Lowest adaptive stall timeout (the RTO's clock-granularity term, RFC 6298)."""
RPC_HEADER_BYTES = 21
"""rpcudp datagrams: one type byte, a 20-byte message id, then msgpack."""
CLIENT_ONLY_SENDER = b""
"""Sender id of a client-only node's requests: "do not add me as a contact".

Real ids are 20 bytes, so it cannot be mistaken for one. Stock kademlia cannot
build a contact from it and drops the request: a client-only node needs peers that
run this protocol.
"""
T = TypeVar("T")
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
    client_only : bool
        Never become anyone's contact and serve nothing (see the module notes).
    """

    def __init__(
        self,
        source_node: Node,
        storage: ValidatingStorage,
        ksize: int,
        rpc_timeout: float,
        *,
        client_only: bool = False,
    ) -> None:
        super().__init__(source_node, storage, ksize)
        self._wait_timeout = rpc_timeout
        self.client_only = client_only
        self.router = XorRoutingTable(ksize, source_node)
        self.fetch_genesis: GenesisFetcher | None = None
        # asyncio keeps only weak references to tasks; hold them until done, and
        # until close() cancels them.
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._last_heard: dict[tuple[str, int], float] = {}
        self._suspects: dict[tuple[str, int], float] = {}
        self._srtt: float | None = None
        self._rttvar = 0.0
        self.stall_floor = STALL_FLOOR_S
        """Lowest stall timeout :meth:`stall_after` returns."""

    # -- tasks ---------------------------------------------------------------------

    def spawn(self, coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``coroutine`` as a task that :meth:`close` will cancel and await.

        After :meth:`close` the task is cancelled before it starts (a lookup still
        running in a caller's task then sees "no answer" and ends).
        """
        task = asyncio.ensure_future(coroutine)
        if self._closed:
            task.cancel()
            return task
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("DHT task failed: %r", task.exception())

    @property
    def running_tasks(self) -> int:
        """Tasks started by this protocol and not finished yet."""
        return len(self._tasks)

    def tasks(self) -> list[asyncio.Task[Any]]:
        """The tasks counted by :attr:`running_tasks`, to await them."""
        return list(self._tasks)

    async def close(self) -> None:
        """Fail every RPC still waiting, then cancel and await every task started.

        The transport is closed by the server; this leaves nothing of ours behind.
        """
        self._closed = True
        for future, timer in self._outstanding.values():
            timer.cancel()
            if not future.done():
                future.set_result((False, None))
        self._outstanding.clear()
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- rpcudp, made safe against garbage, late answers and cancellation ----------

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        """Note that ``addr`` is alive, then handle the datagram in a tracked task."""
        # Any datagram proves its sender alive, even a reply that came after its
        # timeout: on a loaded host that is a slow contact, not a dead one.
        key = (addr[0], addr[1])
        self._last_heard[key] = time.monotonic()
        self._suspects.pop(key, None)
        if not self._closed:
            self.spawn(self._solve_datagram(data, addr))

    async def _solve_datagram(self, datagram: bytes, address: tuple[str, int]) -> None:
        """rpcudp's dispatch, but requests run in this task and garbage is dropped."""
        if len(datagram) <= RPC_HEADER_BYTES:
            log.info("dropping runt datagram from %s:%s", *address)
            return
        msg_id = datagram[1:RPC_HEADER_BYTES]
        if self.client_only and datagram[:1] == b"\x00":
            log.debug("client-only node ignores a request from %s:%s", *address)
            return
        try:
            data = umsgpack.unpackb(datagram[RPC_HEADER_BYTES:])
            if datagram[:1] == b"\x00":
                await self._accept_request(msg_id, data, address)
            elif datagram[:1] == b"\x01":
                self._accept_response(msg_id, data, address)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a peer's garbage must not surface as our error
            log.info("dropping bad datagram from %s:%s: %r", *address, error)

    def _accept_response(
        self, msg_id: bytes, data: object, address: tuple[str, int]
    ) -> None:
        entry = self._outstanding.pop(msg_id, None)
        if entry is None:
            log.debug("late or unknown answer from %s:%s", *address)
            return
        future, timer = entry
        timer.cancel()
        if not future.done():  # the caller may have been cancelled meanwhile
            future.set_result((True, data))

    def _timeout(self, msg_id: bytes) -> None:
        entry = self._outstanding.pop(msg_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_result((False, None))

    # -- round-trip times -----------------------------------------------------------

    def observe_rtt(self, seconds: float) -> None:
        """Fold one answered request's round-trip time into the estimate.

        Jacobson & Karels (1988), as in RFC 6298 §2: smoothed RTT and mean deviation.
        """
        if self._srtt is None:
            self._srtt, self._rttvar = seconds, seconds / 2
            return
        self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - seconds)
        self._srtt = 0.875 * self._srtt + 0.125 * seconds

    def stall_after(self, ceiling: float) -> float:
        """Seconds a lookup waits for one answer before asking the next contact.

        RFC 6298's retransmission timeout ``srtt + 4 rttvar`` (a reply later than that
        is unusual for this node's own recent experience), within
        ``[stall_floor, ceiling]``; ``ceiling`` until anything was measured.
        """
        if self._srtt is None:
            return ceiling
        estimate = self._srtt + 4 * self._rttvar
        return min(ceiling, max(self.stall_floor, estimate))

    # -- suspects ------------------------------------------------------------------

    def mark_suspect(self, node: Node) -> None:
        """Note that ``node`` did not answer a lookup quickly (paper §2.3).

        Lookups skip it until anything arrives from its address again.
        """
        key = (str(node.ip), int(node.port))
        self._suspects.pop(key, None)
        self._suspects[key] = time.monotonic()
        if len(self._suspects) > MAX_SUSPECTS:
            del self._suspects[next(iter(self._suspects))]

    def is_suspect(self, node: Node) -> bool:
        """Whether ``node`` stalled a lookup and has been silent since."""
        return (node.ip, node.port) in self._suspects

    # -- who this node says it is, and whom it welcomes ---------------------------

    @property
    def sender_id(self) -> bytes:
        """The id this node puts in its requests (:data:`CLIENT_ONLY_SENDER` if so)."""
        return CLIENT_ONLY_SENDER if self.client_only else self.source_node.id

    async def call_find_node(self, node_to_ask: Node, node_to_find: Node) -> Any:
        """As kademlia, naming this node by :attr:`sender_id`."""
        address = (node_to_ask.ip, node_to_ask.port)
        result = await self.find_node(address, self.sender_id, node_to_find.id)
        return self.handle_call_response(result, node_to_ask)

    async def call_find_value(self, node_to_ask: Node, node_to_find: Node) -> Any:
        """As kademlia, naming this node by :attr:`sender_id`."""
        address = (node_to_ask.ip, node_to_ask.port)
        result = await self.find_value(address, self.sender_id, node_to_find.id)
        return self.handle_call_response(result, node_to_ask)

    async def call_ping(self, node_to_ask: Node) -> Any:
        """As kademlia, naming this node by :attr:`sender_id`."""
        address = (node_to_ask.ip, node_to_ask.port)
        result = await self.ping(address, self.sender_id)
        return self.handle_call_response(result, node_to_ask)

    async def call_store(self, node_to_ask: Node, key: bytes, value: object) -> Any:
        """As kademlia, naming this node by :attr:`sender_id`."""
        address = (node_to_ask.ip, node_to_ask.port)
        result = await self.store(address, self.sender_id, key, value)
        return self.handle_call_response(result, node_to_ask)

    def _welcome_asker(self, sender: tuple[str, int], nodeid: object) -> Node | None:
        """The asker as a contact (welcomed if new); ``None`` for a client-only one.

        Raises
        ------
        ValueError
            If ``nodeid`` is neither a 160-bit id nor :data:`CLIENT_ONLY_SENDER`
            (the datagram is then dropped unanswered, as before).
        """
        if nodeid == CLIENT_ONLY_SENDER:
            return None
        if not _is_kademlia_id(nodeid):
            raise ValueError(f"malformed sender id {nodeid!r}")
        asker = Node(nodeid, sender[0], sender[1])
        self.welcome_if_new(asker)
        return asker

    def rpc_ping(self, sender: tuple[str, int], nodeid: bytes) -> bytes:
        """Answer with this node's id (the asker learns whom it reached)."""
        self._welcome_asker(sender, nodeid)
        return bytes(self.source_node.id)

    def rpc_find_node(
        self, sender: tuple[str, int], nodeid: bytes, key: bytes
    ) -> list[tuple[bytes, str, int]]:
        """The k contacts closest to ``key`` (never the asker itself)."""
        asker = self._welcome_asker(sender, nodeid)
        return self._neighbors(key, asker)

    def rpc_find_value(
        self, sender: tuple[str, int], nodeid: bytes, key: bytes
    ) -> dict[str, bytes] | list[tuple[bytes, str, int]]:
        """The value stored at ``key``, else the k contacts closest to it."""
        asker = self._welcome_asker(sender, nodeid)
        value = self.storage.get(key, None)
        if value is None:
            return self._neighbors(key, asker)
        return {"value": value}

    def _neighbors(
        self, key: bytes, asker: Node | None
    ) -> list[tuple[bytes, str, int]]:
        neighbors = self.router.find_neighbors(Node(key), exclude=asker)
        return [tuple(contact) for contact in neighbors]

    async def rpc_store(
        self, sender: tuple[str, int], nodeid: bytes, key: bytes, value: object
    ) -> bool:
        """Store ``value`` if valid and newer; return whether it was stored."""
        if not (
            (nodeid == CLIENT_ONLY_SENDER or _is_kademlia_id(nodeid))
            and _is_kademlia_id(key)
        ):
            return False
        self._welcome_asker(sender, nodeid)
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

        Same rule as kademlia (paper §2.5): hand over a record if ``node`` is closer
        to its key than the k-th closest contact and this node is closer than all of
        them. Two fixes: stored keys are already 160-bit digests, but the original
        hashes them again before measuring distances, so it handed new nodes the
        wrong records; and it ran a full k-closest search per stored key, which at
        1,000 nodes took most of the CPU (every message from a new contact pays it).
        Here distances are plain integer XORs, and the k-th closest is only sought
        for the few keys this node is the closest to.
        """
        if not self.router.is_new_node(node):
            return
        contacts = [
            contact.long_id
            for bucket in self.router.buckets
            for contact in bucket.nodes.values()
        ]
        for key, value in self.storage:
            if self._should_hand_over(node.long_id, key, contacts):
                self.spawn(self.call_store(node, key, value))
        stale = self.router.add_contact(node)
        if stale is not None:
            # Paper §2.2: a full bucket keeps its head while the head answers.
            self.spawn(self.call_ping(stale))

    def _should_hand_over(self, newcomer: int, key: bytes, contacts: list[int]) -> bool:
        target = int.from_bytes(key, "big")
        distances = [c ^ target for c in contacts if c != target]
        if not distances:
            return True
        if self.source_node.long_id ^ target >= min(distances):
            return False  # a known contact is closer: it hands the record over
        kth = heapq.nsmallest(self.router.ksize, distances)[-1]
        return newcomer ^ target < kth

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
                        (contact.ip, contact.port), self.sender_id
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
        for memory in (self._last_heard, self._suspects):
            stale = [addr for addr, heard in memory.items() if heard < cutoff]
            for addr in stale:
                del memory[addr]


def _is_kademlia_id(value: object) -> bool:
    """Whether ``value`` is a 160-bit id (anything else would crash ``Node``)."""
    return isinstance(value, bytes) and len(value) == KADEMLIA_ID_BYTES
