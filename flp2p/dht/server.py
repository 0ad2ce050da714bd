"""A kademlia ``Server`` that speaks only signed records.

Wires :class:`ValidatingStorage`, :class:`ValidatingProtocol` and
:class:`ValidatingValueCrawl` together and replaces ``get``/``set`` by record-level
calls that validate on both sides and report honestly how many peers kept a record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from kademlia.crawling import NodeSpiderCrawl
from kademlia.network import Server
from kademlia.node import Node

from flp2p.dht.codec import SignedRecord, record_key
from flp2p.dht.crawling import ValidatingValueCrawl
from flp2p.dht.kinds import Genesis
from flp2p.dht.protocol import ValidatingProtocol
from flp2p.dht.storage import ValidatingStorage
from flp2p.dht.validation import RecordRejected, RecordValidator, UnknownFederation

log = logging.getLogger(__name__)

RejectionListener = Callable[[bytes, RecordRejected], None]
"""Told about each value a lookup refused, e.g. to tell "no lease" from "forged"."""
GENESIS_RETRY_S = 30.0
"""Seconds before a genesis that could not be found is looked up again."""
MAX_MISSING_GENESES = 1024
"""Bound on the memory of missing geneses (forgotten all at once when reached)."""
DEFAULT_RPC_TIMEOUT = 1.0
"""Seconds to wait for one RPC (stock: 5 s, which a dead contact costs every lookup)."""


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
    """

    protocol_class = ValidatingProtocol

    def __init__(
        self,
        validator: RecordValidator,
        *,
        node_id: bytes | None = None,
        ksize: int = 20,
        alpha: int = 3,
        rpc_timeout: float = DEFAULT_RPC_TIMEOUT,
    ) -> None:
        super().__init__(ksize=ksize, alpha=alpha, node_id=node_id)
        # Assigned after, not passed: Server uses `storage or ForgetfulStorage()`, and
        # an empty storage is falsy.
        self.storage = ValidatingStorage(validator)
        self.validator = validator
        self.rpc_timeout = rpc_timeout
        self._missing_geneses: dict[str, float] = {}
        self.rejection_listeners: list[RejectionListener] = []
        """Called with ``(dht_key, reason)`` for every value a lookup refused."""

    def _create_protocol(self) -> ValidatingProtocol:
        protocol = ValidatingProtocol(
            self.node, self.storage, self.ksize, rpc_timeout=self.rpc_timeout
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

    async def get_record(self, kind: str, subject: str) -> SignedRecord | None:
        """Look up the newest valid record of ``kind`` about ``subject``."""
        dht_key = record_key(kind, subject)
        local = await self._local(dht_key)
        nearest = self.protocol.router.find_neighbors(Node(dht_key))
        if not nearest:
            return local
        crawl = ValidatingValueCrawl(
            self.protocol, Node(dht_key), nearest, self.ksize, self.alpha, self.check
        )
        remote = await crawl.find()
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
        target = Node(dht_key)
        nearest = self.protocol.router.find_neighbors(target)
        accepted = 0
        closest: list[Node] = []
        if nearest:
            crawl = NodeSpiderCrawl(
                self.protocol, target, nearest, self.ksize, self.alpha
            )
            closest = await crawl.find()
        # Unlike stock kademlia, also hold it while fewer than k peers exist: this
        # node is then among the k closest whatever its distance.
        farthest = max((n.distance_to(target) for n in closest), default=0)
        if len(closest) < self.ksize or self.node.distance_to(target) < farthest:
            accepted += self.storage.offer(dht_key, raw) is None
        answers = await asyncio.gather(
            *(self.protocol.call_store(n, dht_key, raw) for n in closest)
        )
        accepted += sum(1 for ok, stored in answers if ok and stored is True)
        return accepted

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
