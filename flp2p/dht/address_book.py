"""The address book peers use: publish and find signed records over the DHT.

One :class:`AddressBook` per peer. It signs what it publishes with the peer's
:class:`~flp2p.identity.Identity`, gives each version a fresh sequence number and a
bounded lifetime, and republishes its own records from a heartbeat before they
expire; a peer that stops heart-beating drops out of everyone's view on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable

from flp2p.dht.codec import SignedRecord, sign_record
from flp2p.dht.kinds import AnyRecord, Genesis, Lease, NodeRecord
from flp2p.dht.record_validation import RecordRejected, RecordValidator
from flp2p.dht.server import DEFAULT_RPC_TIMEOUT, RecordServer
from flp2p.identity import Identity

log = logging.getLogger(__name__)

DEFAULT_RECORD_TTL = 300.0
"""Seconds a published node record or lease lives without a heartbeat."""
DEFAULT_GENESIS_TTL = 7 * 24 * 3600.0
"""Seconds a genesis lives (it never changes; the founder renews it rarely)."""


def fresh_seq(previous: int | None, now: float) -> int:
    """Next sequence number: wall-clock microseconds, strictly above ``previous``.

    Clock-based so a restarted peer that lost its counter still supersedes what it
    published before (as long as its clock does not jump back).
    """
    candidate = int(now * 1_000_000)
    return candidate if previous is None or candidate > previous else previous + 1


HEARTBEAT_JITTER = 0.5
"""Each beat waits between ``1 - HEARTBEAT_JITTER`` and 1 times the interval."""


def heartbeat_interval(ttl: float) -> float:
    """Republish at a third of the lifetime: two heartbeats may be lost in a row."""
    return ttl / 3.0


def heartbeat_delay(ttl: float, rng: random.Random) -> float:
    """Seconds until the next beat: the interval, shortened by a random share.

    Peers started together would otherwise beat together forever, each beat a ping
    sweep and a republish (at 1,000 nodes in one process, ~80,000 pings at once that
    starved lookups for ~30 s). Floyd & Jacobson (1994, "The Synchronization of
    Periodic Routing Messages") show that randomising each period breaks such
    synchronisation; only shortening keeps the two-missed-beats margin.
    """
    return heartbeat_interval(ttl) * rng.uniform(1.0 - HEARTBEAT_JITTER, 1.0)


class AddressBook:
    """Signed node records, genesis and leases of one peer, over kademlia.

    Parameters
    ----------
    identity : Identity
        Signs everything this peer publishes.
    record_ttl : float
        Lifetime of node records and leases (s); the heartbeat renews them every
        ``record_ttl / 6`` to ``record_ttl / 3`` (at random, see
        :func:`heartbeat_delay`).
    rpc_timeout : float
        Seconds to wait for one RPC.
    stall_timeout : float, optional
        Seconds after which a lookup stops waiting for one contact and asks the next
        closest instead (default: a fifth of ``rpc_timeout``); the late answer is
        still used if it comes.
    ksize, alpha : int
        Kademlia replication / lookup parallelism.
    clock : Callable[[], float]
        Unix time (tests and benchmarks may replace it).
    client_only : bool
        Join the DHT as a client, for a peer others cannot reach (behind NAT, no
        open port): it looks up and publishes (its own records included) through
        the peers it bootstraps from, needs outbound UDP only, and never appears
        in anyone's routing table, so lookups never wait for it. It holds no
        records and answers no requests, so others cannot bootstrap through it.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        record_ttl: float = DEFAULT_RECORD_TTL,
        rpc_timeout: float = DEFAULT_RPC_TIMEOUT,
        stall_timeout: float | None = None,
        ksize: int = 20,
        alpha: int = 3,
        clock: Callable[[], float] = time.time,
        client_only: bool = False,
    ) -> None:
        if record_ttl <= 0:
            raise ValueError(f"record_ttl must be positive, got {record_ttl}")
        self.identity = identity
        self.record_ttl = record_ttl
        self.clock = clock
        self.validator = RecordValidator(clock=clock)
        # Kademlia ids are 160 bits; deriving ours from the identity keeps one name.
        self.server = RecordServer(
            self.validator,
            node_id=bytes.fromhex(identity.node_id)[:20],
            ksize=ksize,
            alpha=alpha,
            rpc_timeout=rpc_timeout,
            stall_timeout=stall_timeout,
            client_only=client_only,
        )
        self._own: dict[tuple[str, str], AnyRecord] = {}
        self._last_seq: dict[tuple[str, str], int] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._jitter = random.Random()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen on ``host:port`` (0: an ephemeral port) and start the heartbeat.

        Returns
        -------
        tuple[str, int]
            The address actually bound.
        """
        await self.server.listen(port, interface=host)
        self._heartbeat = asyncio.ensure_future(self._beat())
        return self.server.address()

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) this peer listens on."""
        return self.server.address()

    @property
    def client_only(self) -> bool:
        """Whether this peer joined as a client (see the class parameters)."""
        return self.server.client_only

    async def bootstrap(self, peers: Iterable[tuple[str, int]]) -> int:
        """Join the DHT through known peers (IP addresses, not host names).

        Returns
        -------
        int
            Number of contacts in the routing table afterwards.

        Raises
        ------
        ConnectionError
            If none of ``peers`` answered.
        """
        known = list(peers)
        await self.server.bootstrap(known)
        contacts = sum(len(b) for b in self.server.protocol.router.buckets)
        if contacts == 0:
            raise ConnectionError(f"no bootstrap peer answered among {known}")
        return contacts

    async def publish(self, record: AnyRecord, ttl: float | None = None) -> int:
        """Sign ``record`` with a fresh sequence number and store it in the DHT.

        The record is remembered and republished by the heartbeat until
        :meth:`withdraw` or :meth:`stop`.

        Returns
        -------
        int
            Number of peers that accepted it (0: nobody holds it).

        Raises
        ------
        RecordRejected
            If the record would be refused by every honest peer (e.g. a lease by a
            node the genesis does not allow, or a genesis not founded by this peer).
        """
        signed = self._sign(record, ttl)
        self._own[(record.KIND, record.subject)] = record
        return await self.server.put_record(signed)

    def withdraw(self, record: AnyRecord) -> None:
        """Stop republishing ``record``; it disappears when its expiry passes."""
        self._own.pop((record.KIND, record.subject), None)

    def _sign(self, record: AnyRecord, ttl: float | None) -> SignedRecord:
        slot = (record.KIND, record.subject)
        now = self.clock()
        default_ttl = (
            DEFAULT_GENESIS_TTL if isinstance(record, Genesis) else self.record_ttl
        )
        seq = fresh_seq(self._last_seq.get(slot), now)
        self._last_seq[slot] = seq
        return sign_record(
            self.identity,
            record.KIND,
            record.subject,
            record.to_payload(),
            seq,
            now + (default_ttl if ttl is None else ttl),
        )

    async def get_node(self, node_id: str) -> NodeRecord | None:
        """The live node record of ``node_id``, or ``None``."""
        signed = await self.server.get_record(NodeRecord.KIND, node_id)
        return None if signed is None else NodeRecord.from_payload(signed.payload)

    async def get_genesis(self, federation_id: str) -> Genesis | None:
        """The genesis whose hash is ``federation_id``, or ``None``."""
        signed = await self.server.get_record(Genesis.KIND, federation_id)
        return None if signed is None else Genesis.from_payload(signed.payload)

    async def get_lease(self, federation_id: str) -> Lease | None:
        """The newest live lease of ``federation_id``, checked against its genesis."""
        signed = await self.server.get_record(Lease.KIND, federation_id)
        return None if signed is None else Lease.from_payload(signed.payload)

    async def heartbeat(self) -> int:
        """Republish every own record now and evict contacts that stopped answering.

        Returns
        -------
        int
            Number of own records that at least one peer accepted.
        """
        await self.server.protocol.sweep_contacts()
        accepted = 0
        for record in list(self._own.values()):
            try:
                accepted += await self.server.put_record(self._sign(record, None)) > 0
            except RecordRejected as error:  # e.g. the genesis vanished: keep beating
                log.warning("not republishing %s record: %s", record.KIND, error)
        return accepted

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(heartbeat_delay(self.record_ttl, self._jitter))
            try:
                await self.heartbeat()
            except Exception:  # a failed beat must not stop the next one
                log.exception("heartbeat failed")

    async def stop(self) -> None:
        """Stop the heartbeat, close the socket and end every task this peer started.

        Records expire on their own. Lookups still running in callers' tasks end
        with "not found" (their pending requests count as unanswered).
        """
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        await self.server.close()
