"""Signed, versioned, expiring records over the kademlia DHT.

``kademlia`` provides routing and transport; this package adds what peers that do not
trust each other need: every value is a signed record bound to its key
(:mod:`~flp2p.dht.codec`), checked on STORE and again on read
(:mod:`~flp2p.dht.record_validation`, :mod:`~flp2p.dht.storage`,
:mod:`~flp2p.dht.crawling`),
routed to the truly closest nodes (:mod:`~flp2p.dht.routing`), and published by an
:class:`AddressBook` that renews its own records before they expire.

A peer that others cannot reach (behind NAT) joins with
``AddressBook(identity, client_only=True)``: it looks up and publishes through the
other peers and never becomes their contact (:mod:`~flp2p.dht.protocol`).
"""

from __future__ import annotations

from flp2p.dht.address_book import AddressBook
from flp2p.dht.codec import (
    MAX_RECORD_BYTES,
    RecordError,
    SignedRecord,
    record_key,
    sign_record,
)
from flp2p.dht.kinds import Genesis, Lease, NodeRecord
from flp2p.dht.record_validation import RecordRejected, RecordValidator
from flp2p.dht.server import RecordServer

__all__ = [
    "MAX_RECORD_BYTES",
    "AddressBook",
    "Genesis",
    "Lease",
    "NodeRecord",
    "RecordError",
    "RecordRejected",
    "RecordServer",
    "RecordValidator",
    "SignedRecord",
    "record_key",
    "sign_record",
]
