"""Builders shared by the DHT tests: identities, signed records, a fake clock, and
a real DHT on loopback (:class:`LoopbackDht`)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from kademlia.storage import ForgetfulStorage

from flp2p.dht import (
    AddressBook,
    Genesis,
    Lease,
    NodeRecord,
    RecordServer,
    RecordValidator,
    SignedRecord,
    sign_record,
)
from flp2p.dht.kinds import AnyRecord
from flp2p.identity import Identity

NOW = 1_700_000_000.0


@dataclass
class FakeClock:
    """Unix time that only moves when a test says so."""

    now: float = NOW

    def __call__(self) -> float:
        return self.now


def node_record(identity: Identity, port: int = 9000) -> NodeRecord:
    return NodeRecord(identity.node_id, f"127.0.0.1:{port}", ("client",))


def genesis_for(founder: Identity, *eligible: Identity) -> Genesis:
    return Genesis(
        founder=founder.node_id,
        parameters={"rounds": 10, "strategy": "trusted", "lr": 0.05},
        eligible=tuple(e.node_id for e in eligible),
        created_at=NOW,
    )


def lease_for(genesis: Genesis, holder: Identity, epoch: int = 1) -> Lease:
    return Lease(
        federation_id=genesis.federation_id,
        holder=holder.node_id,
        superlink_address="127.0.0.1:9092",
        tls_fingerprint="ab" * 32,
        epoch=epoch,
        last_round=4,
        model_sha256="cd" * 32,
    )


def signed(
    signer: Identity,
    record: AnyRecord,
    seq: int = 1,
    expires_at: float = NOW + 600,
) -> SignedRecord:
    return sign_record(
        signer, record.KIND, record.subject, record.to_payload(), seq, expires_at
    )


T = TypeVar("T")


class LoopbackDht:
    """A founder's DHT node (plus helpers) on an event loop in its own thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.founder = Identity.generate()
        self.eligible = Identity.generate()
        self.genesis = Genesis(
            founder=self.founder.node_id,
            parameters={"rounds": 2, "dataset": "digits", "clients": 2},
            eligible=(self.eligible.node_id,),
            created_at=time.time(),
        )
        self.books: list[AddressBook] = []
        self.eligible_book: AddressBook | None = None
        self.evil: RecordServer | None = None
        book = self.call(self._book(self.founder))
        self.address = "{}:{}".format(*book.address)
        self.call(book.publish(self.genesis))

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    async def _book(self, identity: Identity, **options: Any) -> AddressBook:
        book = AddressBook(identity, rpc_timeout=1.0, **options)
        await book.start()
        if self.books:
            await book.bootstrap([self.books[0].address])
        self.books.append(book)
        return book

    def publish_lease(self, address: str, fingerprint: str, epoch: int = 1) -> None:
        """A valid lease by the eligible peer (its DHT node joins on the first)."""
        lease = self.lease(self.eligible, address, fingerprint, epoch)
        if self.eligible_book is None:
            self.eligible_book = self.call(self._book(self.eligible))
        self.call(self.eligible_book.publish(lease))

    def lease(
        self, holder: Identity, address: str, fingerprint: str, epoch: int = 1
    ) -> Lease:
        return Lease(
            federation_id=self.genesis.federation_id,
            holder=holder.node_id,
            superlink_address=address,
            tls_fingerprint=fingerprint,
            epoch=epoch,
            last_round=0,
            model_sha256="cd" * 32,
        )

    def serve_forged_lease(self, signer: Identity, break_signature: bool) -> None:
        """A node speaking flp2p's protocol (so it answers client-only askers, as
        stock kademlia does not) that validates nothing, holding a forged lease."""
        lease = self.lease(signer, "127.0.0.1:9", "ab" * 32)
        record = sign_record(
            signer, Lease.KIND, lease.subject, lease.to_payload(), 1, time.time() + 600
        )
        if break_signature:
            record = dataclasses.replace(record, signature=bytes(64))

        async def start() -> RecordServer:
            evil = RecordServer(RecordValidator())
            evil.storage = ForgetfulStorage()  # type: ignore[assignment]
            await evil.listen(0, interface="127.0.0.1")
            await evil.bootstrap([self.books[0].address])
            evil.storage[record.dht_key] = record.encode()
            return evil

        self.evil = self.call(start())

    def stop_nodes(self) -> None:
        """Stop every DHT node (the loop keeps running): nobody answers any more."""

        async def stop() -> None:
            for book in self.books:
                await book.stop()
            if self.evil is not None:
                await self.evil.close()

        self.call(stop())
        self.books.clear()
        self.evil = None

    def close(self) -> None:
        self.stop_nodes()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
