"""Iterative lookups that never wait for their slowest peer, and trust valid records.

kademlia 2.2.3 crawls in lock-step rounds: it sends α requests, waits for *all* of them
(``asyncio.gather``), and only then sends the next α. One dead contact in a round
costs the whole lookup a full RPC timeout. Maymounkov & Mazières (2002, §2.3) instead
keep α requests in flight and treat a node that "fails to respond quickly" as out of
consideration until and unless it responds: :class:`Lookup` does exactly that. A request
not answered within the stall timeout (RFC 6298's RTO from this node's measured
round-trip times, at most ``stall_timeout``, far below the RPC timeout) no longer
occupies one of the α slots, its contact is marked as a suspect on the
protocol so that later lookups skip it, and the lookup goes on with the next closest
contact; if the answer still arrives before the RPC timeout it is used as usual.

Value lookups validate every answer (invalid ones count as "no value", and the crawl
goes on) and return the newest valid record among the first ``quorum`` valid answers:
kademlia's own ``ValueSpiderCrawl`` takes a majority over the first round that yields
anything, so a single peer answering garbage (or a list, which crashes its
``Counter``) decided the result, and stopping at the very first valid answer would let
one peer serving a stale (but validly signed) version win the race.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kademlia.crawling import RPCFindResponse
from kademlia.node import Node

from flp2p.dht.codec import SignedRecord

if TYPE_CHECKING:
    from flp2p.dht.protocol import ValidatingProtocol

log = logging.getLogger(__name__)

RecordCheck = Callable[[bytes, object], Awaitable[SignedRecord | None]]
"""``(dht_key, raw) -> record or None``; may fetch a genesis, hence async."""
DEFAULT_QUORUM = 2
"""Valid answers a value lookup collects before it settles on the newest.

Two: one peer serving a stale (validly signed) version cannot decide the result by
answering first, and the lookup costs as many requests as kademlia's first round.
"""
SPARE_REQUESTS = 1
"""Requests a value lookup keeps in flight beyond the answers it still needs, so one
dead contact among them does not hold it up until the stall timeout."""
KADEMLIA_ID_BYTES = 20
"""Kademlia ids and keys are 160 bits."""

_RpcResult = tuple[bool, Any]
_Rpc = Callable[[Node, Node], Coroutine[Any, Any, _RpcResult]]


def newest(records: list[tuple[SignedRecord, bytes]]) -> tuple[SignedRecord, bytes]:
    """The (record, raw) pair with the highest sequence number (first on ties)."""
    return max(records, key=lambda pair: pair[0].seq)


@dataclass
class LookupStats:
    """What one lookup did; tests and benchmarks read it.

    Attributes
    ----------
    sent : int
        Requests sent.
    answered : int
        Answers used (late answers from stalled contacts included).
    stalled : int
        Requests that outlived ``stall_timeout`` and stopped holding a slot.
    timeouts_waited : int
        Requests whose full RPC timeout the lookup sat through before it could
        finish (only when nothing else was left to try and no result was found yet).
    abandoned : int
        Requests still unanswered when the lookup finished; they run on in the
        background (a contact that never answers is evicted when its RPC times out).
    asked : list[bytes]
        Kademlia ids of the contacts asked, in order.
    """

    sent: int = 0
    answered: int = 0
    stalled: int = 0
    timeouts_waited: int = 0
    abandoned: int = 0
    asked: list[bytes] = field(default_factory=list)


@dataclass
class _Query:
    contact: Node
    stall_at: float
    stalled: bool = False


class Lookup:
    """One iterative FIND_NODE / FIND_VALUE for ``target`` with α requests in flight.

    Parameters
    ----------
    protocol : ValidatingProtocol
        Sends the requests, runs them as tracked tasks, keeps suspects.
    target : Node
        The id looked up.
    peers : Iterable[Node]
        Start set (the k closest known contacts, paper §2.3).
    ksize, alpha : int
        Kademlia k and α.
    stall_timeout : float
        Longest wait (s) before an unanswered request stops holding one of the α
        slots; the protocol's RTT estimate usually makes it much shorter.
    check : RecordCheck, optional
        Validates values (required for :meth:`find_value`).
    quorum : int
        Valid answers a value lookup waits for before it settles.

    Notes
    -----
    At most α requests are in flight (a value lookup also keeps no more than the
    valid answers it still needs, plus one spare). The lookup ends (paper §2.3) once
    the k closest contacts still in consideration, i.e. not failed and not stalled,
    have all answered; a value lookup ends earlier, at ``quorum`` valid values.
    Stalled requests are waited for only if the lookup would otherwise end
    empty-handed: a slow peer is then better than no answer.
    """

    def __init__(
        self,
        protocol: ValidatingProtocol,
        target: Node,
        peers: Iterable[Node],
        ksize: int,
        alpha: int,
        stall_timeout: float,
        check: RecordCheck | None = None,
        quorum: int = DEFAULT_QUORUM,
    ) -> None:
        self.protocol = protocol
        self.target = target
        self.ksize = ksize
        self.alpha = alpha
        self.stall_timeout = stall_timeout
        self.quorum = quorum
        self.stats = LookupStats()
        self._check = check
        self._known: dict[bytes, Node] = {}
        self._contacted: set[bytes] = set()
        self._answered: set[bytes] = set()
        self._out: set[bytes] = set()  # failed, or stalled and not answered (yet)
        self._without_value: list[Node] = []
        self._values: list[tuple[SignedRecord, bytes]] = []
        self._add(peers)
        if self._known and self._out >= self._known.keys():
            # Every contact stalled once and stayed silent since. A full node hears
            # from its contacts unprompted, which clears them; a client-only node
            # hears only answers to what it asks, so skipping all of them would
            # keep it from ever asking again (and from finding anything): ask.
            self._out.clear()

    # -- public --------------------------------------------------------------------

    async def find_nodes(self) -> list[Node]:
        """The k closest contacts to the target that answered, closest first."""
        await self._crawl(self.protocol.call_find_node, want_value=False)
        return self._closest(self._answered)

    async def find_value(self) -> SignedRecord | None:
        """The newest valid record found for the target, or ``None``."""
        if self._check is None:
            raise TypeError("find_value needs a record check")
        await self._crawl(self.protocol.call_find_value, want_value=True)
        if not self._values:
            return None
        record, raw = newest(self._values)
        # Paper §2.3: cache the value at the closest node seen that lacked it; in the
        # background, since the caller already has what it asked for.
        lacking = self._closest(n.id for n in self._without_value)
        if lacking:
            store = self.protocol.call_store(lacking[0], self.target.id, raw)
            self.protocol.spawn(store)
        return record

    # -- crawl ---------------------------------------------------------------------

    async def _crawl(self, rpc: _Rpc, want_value: bool) -> None:
        loop = asyncio.get_running_loop()
        pending: dict[asyncio.Future[_RpcResult], _Query] = {}
        while True:
            now = loop.time()
            for query in pending.values():
                if not query.stalled and now >= query.stall_at:
                    self._stall(query)
            active = sum(not q.stalled for q in pending.values())
            for contact in self._next(self._slots(want_value) - active):
                stall = self.protocol.stall_after(self.stall_timeout)
                query = _Query(contact, now + stall)
                pending[self._send(rpc, contact, stall)] = query
            stalled_left = any(q.stalled for q in pending.values())
            if not pending or self._finished(want_value, stalled_left):
                break
            deadlines = [q.stall_at for q in pending.values() if not q.stalled]
            # No deadline: only stalled requests are left, and we need their answers.
            timeout = max(0.0, min(deadlines) - now) if deadlines else None
            done, _ = await asyncio.wait(
                pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for future in done:
                query = pending.pop(future)
                answered = await self._absorb(query, future, want_value)
                if not answered and timeout is None:
                    self.stats.timeouts_waited += 1
        self.stats.abandoned = len(pending)

    def _slots(self, want_value: bool) -> int:
        """Requests to keep in flight: α, or fewer when few answers are missing.

        A value lookup needs ``quorum`` answers; more requests in flight than that
        (plus a spare) would only be abandoned, and they cost the peers asked.
        """
        if not want_value:
            return self.alpha
        return min(self.alpha, self.quorum - len(self._values) + SPARE_REQUESTS)

    def _send(
        self, rpc: _Rpc, contact: Node, stall: float
    ) -> asyncio.Future[_RpcResult]:
        self._contacted.add(contact.id)
        self.stats.sent += 1
        self.stats.asked.append(contact.id)
        request = self.protocol.spawn(self._timed(rpc, contact))
        # Also after this lookup has finished: a contact that stalls an abandoned
        # request is as suspect as one that stalled a running lookup.
        timer = asyncio.get_running_loop().call_later(
            stall, self._suspect_if_pending, request, contact
        )
        request.add_done_callback(lambda _: timer.cancel())
        return request

    def _suspect_if_pending(
        self, request: asyncio.Future[_RpcResult], contact: Node
    ) -> None:
        if not request.done():
            self.protocol.mark_suspect(contact)

    async def _timed(self, rpc: _Rpc, contact: Node) -> _RpcResult:
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await rpc(contact, self.target)
        if result[0]:
            self.protocol.observe_rtt(loop.time() - started)
        return result

    def _stall(self, query: _Query) -> None:
        query.stalled = True
        self.stats.stalled += 1
        self._out.add(query.contact.id)
        self.protocol.mark_suspect(query.contact)

    def _finished(self, want_value: bool, stalled_left: bool) -> bool:
        if want_value and len(self._values) >= self.quorum:
            return True
        candidates = self._closest(k for k in self._known if k not in self._out)
        if any(c.id not in self._answered for c in candidates):
            return False  # uncontacted or in flight
        # The k closest in consideration all answered (paper §2.3). Stop, unless we
        # would return nothing while stalled requests might still bring it.
        found = bool(self._values) if want_value else bool(self._answered)
        return found or not stalled_left

    async def _absorb(
        self, query: _Query, future: asyncio.Future[_RpcResult], want_value: bool
    ) -> bool:
        contact = query.contact
        try:
            result = future.result()
        except asyncio.CancelledError:  # the node is stopping
            result = (False, None)
        except Exception as error:  # e.g. a peer handed out an unusable address
            log.info("request to %s failed: %r", contact, error)
            result = (False, None)
        response = RPCFindResponse(result)
        if not response.happened():
            self._out.add(contact.id)
            return False
        self.stats.answered += 1
        self._answered.add(contact.id)
        self._out.discard(contact.id)  # a late answer brings it back (paper §2.3)
        if want_value and response.has_value():
            value = response.response[1].get("value")
            assert self._check is not None
            record = await self._check(self.target.id, value)
            if record is not None and isinstance(value, bytes):
                self._values.append((record, value))
            else:
                log.info("dropping invalid value from %s", contact)
            return True
        try:
            contacts = response.get_node_list()
        except (TypeError, ValueError, AttributeError):
            log.info("dropping malformed node list from %s", contact)
            return True
        self._without_value.append(contact)
        self._add(contacts)
        return True

    # -- candidates ----------------------------------------------------------------

    def _add(self, contacts: Iterable[Node]) -> None:
        own = self.protocol.source_node.id
        for contact in contacts:
            if (
                isinstance(contact.id, bytes)
                and len(contact.id) == KADEMLIA_ID_BYTES
                and contact.id != own
                and contact.id not in self._known
            ):
                self._known[contact.id] = contact
                if self.protocol.is_suspect(contact):
                    # Stalled in an earlier lookup and silent since: skip it, like a
                    # contact that stalled in this one.
                    self._out.add(contact.id)

    def _closest(self, ids: Iterable[bytes]) -> list[Node]:
        nodes = [self._known[i] for i in ids if i in self._known]
        nodes.sort(key=self.target.distance_to)
        return nodes[: self.ksize]

    def _next(self, count: int) -> list[Node]:
        if count <= 0:
            return []
        candidates = self._closest(k for k in self._known if k not in self._out)
        return [c for c in candidates if c.id not in self._contacted][:count]
