"""A kademlia ``Server`` that speaks only signed records.

Wires :class:`ValidatingStorage`, :class:`ValidatingProtocol` and
:class:`~flp2p.dht.crawling.Lookup` together and replaces ``get``/``set`` by
record-level calls that validate on both sides and report honestly how many peers kept
a record. Every lookup (get, put, bootstrap, bucket refresh) is a :class:`Lookup`, which
does not wait for dead contacts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from kademlia.network import Server
from kademlia.node import Node

from flp2p.dht.codec import SignedRecord, record_key
from flp2p.dht.crawling import DEFAULT_QUORUM, Lookup, LookupStats
from flp2p.dht.kinds import Genesis
from flp2p.dht.protocol import ValidatingProtocol
from flp2p.dht.record_validation import (
    RecordRejected,
    RecordValidator,
    UnknownFederation,
)
from flp2p.dht.storage import ValidatingStorage

log = logging.getLogger(__name__)

RejectionListener = Callable[[bytes, RecordRejected], None]
"""Told about each value a lookup refused, e.g. to tell "no lease" from "forged"."""
GENESIS_RETRY_S = 30.0
"""Seconds before a genesis that could not be found is looked up again."""
MAX_MISSING_GENESES = 1024
"""Bound on the memory of missing geneses (forgotten all at once when reached)."""
DEFAULT_RPC_TIMEOUT = 1.0
"""Seconds to wait for one RPC (stock: 5 s, which a dead contact costs every lookup)."""
STALL_FRACTION = 0.2
"""Default lookup stall timeout, as a fraction of the RPC timeout."""
REFRESH_INTERVAL_S = 3600.0
"""Bucket refresh and republishing period (paper §2.3, §2.5: one hour)."""


class RecordServer(Server):
    """Kademlia node storing and looking up :class:`SignedRecord` values only.

    Parameters
    ----------
    validator : RecordValidator
        Shared by storage, STORE handling and lookups.
    node_id : bytes, optional
        20-byte kademlia id (random if omitted).
    ksize, alpha : int
        Kademlia k (replication, bucket size) and lookup parallelism.
    rpc_timeout : float
        Seconds to wait for one RPC.
    stall_timeout : float, optional
        Seconds after which a lookup stops waiting for a request and asks the next
        closest contact instead (default: ``STALL_FRACTION * rpc_timeout``).
    client_only : bool
        Join as a client: look up and publish through others, never become their
        contact, serve and hold nothing (:class:`ValidatingProtocol`).
    """

    protocol_class = ValidatingProtocol
    protocol: ValidatingProtocol

    def __init__(
        self,
        validator: RecordValidator,
        *,
        node_id: bytes | None = None,
        ksize: int = 20,
        alpha: int = 3,
        rpc_timeout: float = DEFAULT_RPC_TIMEOUT,
        stall_timeout: float | None = None,
        client_only: bool = False,
    ) -> None:
        if stall_timeout is None:
            stall_timeout = STALL_FRACTION * rpc_timeout
        if not 0 < stall_timeout <= rpc_timeout:
            raise ValueError(
                f"stall_timeout must be in (0, rpc_timeout={rpc_timeout}], "
                f"got {stall_timeout}"
            )
        super().__init__(ksize=ksize, alpha=alpha, node_id=node_id)
        # Assigned after, not passed: Server uses `storage or ForgetfulStorage()`, and
        # an empty storage is falsy.
        self.storage = ValidatingStorage(validator)
        self.validator = validator
        self.rpc_timeout = rpc_timeout
        self.stall_timeout = stall_timeout
        self.client_only = client_only
        self.value_quorum = DEFAULT_QUORUM
        """Valid answers a get collects before it settles on the newest."""
        self.last_lookup: LookupStats | None = None
        """What the most recent lookup of this node did (tests, benchmarks)."""
        self._refresh: asyncio.Task[None] | None = None
        self._missing_geneses: dict[str, float] = {}
        self.rejection_listeners: list[RejectionListener] = []
        """Called with ``(dht_key, reason)`` for every value a lookup refused."""

    def _create_protocol(self) -> ValidatingProtocol:
        protocol = ValidatingProtocol(
            self.node,
            self.storage,
            self.ksize,
            rpc_timeout=self.rpc_timeout,
            client_only=self.client_only,
        )
        protocol.fetch_genesis = self._fetch_genesis
        return protocol

    async def _fetch_genesis(self, federation_id: str) -> None:
        # A lease for an unknown federation costs a lookup; without this back-off a
        # stream of leases naming made-up federations would turn into a lookup each.
        missed_at = self._missing_geneses.get(federation_id)
        if missed_at is not None and time.monotonic() - missed_at < GENESIS_RETRY_S:
            return
        # Validating the genesis record caches it in the validator.
        if await self.get_record(Genesis.KIND, federation_id) is None:
            if len(self._missing_geneses) >= MAX_MISSING_GENESES:
                self._missing_geneses.clear()
            self._missing_geneses[federation_id] = time.monotonic()
        else:
            self._missing_geneses.pop(federation_id, None)

    def _validate(self, dht_key: bytes, raw: object) -> SignedRecord | RecordRejected:
        try:
            return self.validator.check(dht_key, raw)
        except RecordRejected as error:
            return error

    async def _judge(
        self, dht_key: bytes, raw: object
    ) -> SignedRecord | RecordRejected:
        outcome = self._validate(dht_key, raw)
        if isinstance(outcome, UnknownFederation):
            await self._fetch_genesis(outcome.federation_id)
            outcome = self._validate(dht_key, raw)
        return outcome

    async def check(self, dht_key: bytes, raw: object) -> SignedRecord | None:
        """Validate ``raw`` found at ``dht_key``, fetching a lease's genesis."""
        outcome = await self._judge(dht_key, raw)
        if isinstance(outcome, RecordRejected):
            log.info("dropping record at %s: %s", dht_key.hex()[:16], outcome)
            for listener in self.rejection_listeners:
                listener(dht_key, outcome)
            return None
        return outcome

    def lookup(self, target: bytes, peers: list[Node] | None = None) -> Lookup:
        """A lookup of ``target`` starting from the k closest known contacts."""
        if peers is None:
            peers = self.protocol.router.find_neighbors(Node(target))
        found = Lookup(
            self.protocol,
            Node(target),
            peers,
            self.ksize,
            self.alpha,
            self.stall_timeout,
            check=self.check,
            quorum=self.value_quorum,
        )
        self.last_lookup = found.stats
        return found

    async def get_record(self, kind: str, subject: str) -> SignedRecord | None:
        """Look up the newest valid record of ``kind`` about ``subject``."""
        dht_key = record_key(kind, subject)
        local = await self._local(dht_key)
        remote = await self.lookup(dht_key).find_value()
        if local is None or (remote is not None and remote.seq > local.seq):
            return remote
        return local

    async def _local(self, dht_key: bytes) -> SignedRecord | None:
        raw = self.storage.get(dht_key)
        return None if raw is None else await self.check(dht_key, raw)

    async def put_record(self, record: SignedRecord) -> int:
        """Store ``record`` at the k nodes closest to its key.

        Returns
        -------
        int
            How many peers (this node included, if it is among the closest) accepted
            it. Zero means nobody holds it.

        Raises
        ------
        RecordRejected
            If the record is invalid here already (e.g. a lease signed by a node the
            genesis does not allow): every honest peer would refuse it too.
        """
        dht_key = record.dht_key
        raw = record.encode()
        verdict = await self._judge(dht_key, raw)
        if isinstance(verdict, RecordRejected):
            raise verdict
        return await self._store_at_closest(dht_key, raw)

    async def _store_at_closest(self, dht_key: bytes, raw: bytes) -> int:
        target = Node(dht_key)
        # Only contacts that just answered: a STORE to them rarely waits a timeout.
        closest = await self.lookup(dht_key).find_nodes()
        accepted = 0
        # Unlike stock kademlia, also hold it while fewer than k peers exist: this
        # node is then among the k closest whatever its distance. A client holds
        # nothing: nobody can ask it.
        farthest = max((n.distance_to(target) for n in closest), default=0)
        is_close = self.node.distance_to(target) < farthest
        if not self.client_only and (len(closest) < self.ksize or is_close):
            accepted += self.storage.offer(dht_key, raw) is None
        answers = await asyncio.gather(
            *(self.protocol.call_store(n, dht_key, raw) for n in closest)
        )
        accepted += sum(1 for ok, stored in answers if ok and stored is True)
        return accepted

    async def bootstrap_node(self, addr: tuple[str, int]) -> Node | None:
        """Ping ``addr``; the contact there, or ``None`` if it did not answer."""
        answered, node_id = await self.protocol.ping(addr, self.protocol.sender_id)
        return Node(node_id, addr[0], addr[1]) if answered else None

    async def bootstrap(self, addrs: list[tuple[str, int]]) -> list[Node]:
        """Ping ``addrs``, then look up this node's own id through those answering.

        Returns
        -------
        list[Node]
            The closest contacts found (as kademlia's ``bootstrap``).
        """
        answered = await asyncio.gather(*(self.bootstrap_node(a) for a in addrs))
        nodes = [node for node in answered if node is not None]
        return await self.lookup(self.node.id, nodes).find_nodes()

    def refresh_table(self, interval: float = REFRESH_INTERVAL_S) -> None:
        """Start the hourly refresh/republish as a task that :meth:`close` cancels."""
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._refresh_forever(interval))

    async def _refresh_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self._refresh_table()
            except Exception:  # one failed refresh must not stop the next
                log.exception("routing table refresh failed")

    async def _refresh_table(self) -> None:
        """Look up a random id in each bucket idle for an hour, then republish
        records held for an hour (paper §2.3, §2.5)."""
        await asyncio.gather(
            *(self.lookup(i).find_nodes() for i in self.protocol.get_refresh_ids())
        )
        for dht_key, raw in self.storage.iter_older_than(REFRESH_INTERVAL_S):
            await self._store_at_closest(dht_key, raw)

    def stop(self) -> None:
        """Close the socket and cancel the refresh (tasks: see :meth:`close`)."""
        super().stop()
        if self._refresh is not None:
            self._refresh.cancel()

    async def close(self) -> None:
        """Close the socket, then cancel and await every task this node started."""
        self.stop()
        if self._refresh is not None:
            await asyncio.gather(self._refresh, return_exceptions=True)
            self._refresh = None
        if self.protocol is not None:
            await self.protocol.close()

    async def get(self, key: object) -> None:
        """Disabled: raw values are not trusted; use :meth:`get_record`."""
        raise NotImplementedError("RecordServer stores signed records: get_record()")

    async def set(self, key: object, value: object) -> None:
        """Disabled: raw values would be refused; use :meth:`put_record`."""
        raise NotImplementedError("RecordServer stores signed records: put_record()")

    def address(self) -> tuple[str, int]:
        """The (host, port) this node listens on."""
        host, port = self.transport.get_extra_info("sockname")[:2]
        return str(host), int(port)
