"""Record encoding, typed kinds, validation rules, versioned storage and routing."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
import umsgpack
from helpers_dht import (
    NOW,
    FakeClock,
    genesis_for,
    lease_for,
    node_record,
    signed,
)
from kademlia.node import Node
from kademlia.routing import RoutingTable

from flp2p.dht import (
    MAX_RECORD_BYTES,
    Genesis,
    Lease,
    NodeRecord,
    RecordError,
    RecordRejected,
    RecordValidator,
    SignedRecord,
    record_key,
    routing,
    sign_record,
)
from flp2p.dht.record_validation import UnknownFederation
from flp2p.dht.routing import XorRoutingTable
from flp2p.dht.storage import ValidatingStorage
from flp2p.identity import Identity
from flp2p.signatures import canonical_dht_json

# -- encoding -----------------------------------------------------------------------


def test_record_round_trips_through_bytes() -> None:
    record = signed(Identity.generate(), node_record(Identity.generate()))
    assert SignedRecord.decode(record.encode()) == record
    assert record.signature_is_valid()


@pytest.mark.parametrize(
    "raw",
    [
        "a str",
        [1, 2],
        b"\xff\xfe",
        b"[]",
        b'{"kind":"node"}',
        b'{"kind":"node","subject":"s","payload":{},"public_key":"zz","seq":1,'
        b'"expires_at":1,"signature":""}',
        b'{"kind":"node","subject":"s","payload":{},"public_key":"","seq":true,'
        b'"expires_at":1,"signature":""}',
        b'{"kind":"node","subject":"s","payload":{},"public_key":"","seq":1,'
        b'"expires_at":1,"signature":"","extra":0}',
        b'{"kind":"node","subject":"s","payload":{},"public_key":"","seq":1,'
        b'"expires_at":NaN,"signature":""}',
        b'{"kind":"node","subject":"s","payload":{"x":Infinity},"public_key":"",'
        b'"seq":1,"expires_at":1,"signature":""}',
    ],
)
def test_decode_rejects_malformed_values(raw: object) -> None:
    with pytest.raises(RecordError):
        SignedRecord.decode(raw)


def test_record_key_depends_on_kind_and_subject() -> None:
    keys = {record_key(k, s) for k in ("node", "lease") for s in ("a", "b")}
    assert len(keys) == 4
    assert all(len(k) == 20 for k in keys)


def test_max_record_fits_one_kademlia_store_request() -> None:
    """Measure rpcudp's limit: [name, (sender id, key, value)] ≤ 8192 B msgpack."""
    ids = (b"\x00" * 20, b"\x00" * 20)

    def fits(size: int) -> bool:
        return len(umsgpack.packb(["store", (*ids, b"\x00" * size)])) <= 8192

    largest = max(n for n in range(8000, 8200) if fits(n))
    assert largest == 8137  # the figure in docs/library-notes.md
    assert fits(MAX_RECORD_BYTES)


def test_sign_record_refuses_oversized_payload() -> None:
    identity = Identity.generate()
    with pytest.raises(RecordError, match="limit"):
        sign_record(identity, "node", identity.node_id, {"x": "a" * 8000}, 1, NOW)


# -- kinds ---------------------------------------------------------------------------


def test_kinds_round_trip_through_payloads() -> None:
    founder, aggregator = Identity.generate(), Identity.generate()
    node = NodeRecord(founder.node_id, "10.0.0.1:9093", ("client", "aggr"), b"\x07" * 4)
    genesis = genesis_for(founder, aggregator)
    lease = lease_for(genesis, aggregator)
    for typed in (node, genesis, lease):
        payload = json.loads(canonical_dht_json(typed.to_payload()))
        assert type(typed).from_payload(payload) == typed


def test_federation_id_is_sha256_of_sorted_compact_genesis_json() -> None:
    founder, aggregator = Identity.generate(), Identity.generate()
    genesis = genesis_for(founder, aggregator)
    reference = json.dumps(
        {
            "created_at": NOW,
            "eligible": [aggregator.node_id],
            "founder": founder.node_id,
            "parameters": {"lr": 0.05, "rounds": 10, "strategy": "trusted"},
        },
        separators=(",", ":"),
    ).encode()
    assert genesis.federation_id == hashlib.sha256(reference).hexdigest()
    changed = replace(genesis, parameters={**genesis.parameters, "rounds": 11})
    assert changed.federation_id != genesis.federation_id


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        (NodeRecord, {"identity": "0" * 64, "address": "h:1", "roles": []}),
        (
            NodeRecord,
            {
                "identity": "0" * 64,
                "address": "no-port",
                "roles": [],
                "supernode_public_key": None,
            },
        ),
        (
            NodeRecord,
            {
                "identity": "XYZ",
                "address": "h:1",
                "roles": [],
                "supernode_public_key": None,
            },
        ),
        (
            Genesis,
            {"founder": "0" * 64, "parameters": {}, "eligible": [], "created_at": 0},
        ),
        (
            Lease,
            {
                "federation_id": "0" * 64,
                "holder": "0" * 64,
                "superlink_address": "h:1",
                "tls_fingerprint": "0" * 64,
                "epoch": "1",
                "last_round": 0,
                "model_sha256": "0" * 64,
            },
        ),
    ],
)
def test_from_payload_is_strict(kind: type, payload: dict[str, object]) -> None:
    with pytest.raises(RecordError):
        kind.from_payload(payload)


# -- validation ----------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def validator(clock: FakeClock) -> RecordValidator:
    return RecordValidator(clock=clock, max_ttl=3600)


def test_valid_node_record_passes(validator: RecordValidator) -> None:
    alice = Identity.generate()
    record = signed(alice, node_record(alice))
    assert validator.check(record.dht_key, record.encode()) == record


def test_rejections_name_their_reason(validator: RecordValidator) -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    good = signed(alice, node_record(alice))
    tampered = replace(good, payload={**good.payload, "address": "6.6.6.6:1"})
    unsigned = replace(good, signature=b"")
    expired = signed(alice, node_record(alice), expires_at=NOW)
    immortal = signed(alice, node_record(alice), expires_at=NOW + 7200)
    impostor = signed(mallory, node_record(alice))  # mallory writes alice's record
    # json.loads accepts NaN; a record carrying one must be refused, not crash the
    # signature check (which cannot encode it).
    not_a_number = good.encode().replace(repr(good.expires_at).encode(), b"NaN")
    cases = {
        "bad signature": (good.dht_key, tampered.encode()),
        "unsigned record": (good.dht_key, unsigned.encode()),
        "expired": (good.dht_key, expired.encode()),
        "max_ttl": (good.dht_key, immortal.encode()),
        "not stored under the key": (record_key("node", "0" * 64), good.encode()),
        "not signed by the node": (good.dht_key, impostor.encode()),
        "oversized": (good.dht_key, good.encode() + b" " * MAX_RECORD_BYTES),
        "not a signed record": (good.dht_key, ["list", "value"]),
        "JSON does not allow": (good.dht_key, not_a_number),
    }
    for reason, (key, raw) in cases.items():
        with pytest.raises(RecordRejected, match=reason):
            validator.check(key, raw)


def test_unknown_kind_is_rejected(validator: RecordValidator) -> None:
    alice = Identity.generate()
    record = sign_record(alice, "blob", "x", {"a": 1}, 1, NOW + 60)
    with pytest.raises(RecordRejected, match="unknown record kind"):
        validator.check(record.dht_key, record.encode())


def test_genesis_must_be_signed_by_its_founder(validator: RecordValidator) -> None:
    founder, mallory = Identity.generate(), Identity.generate()
    genesis = genesis_for(founder, founder)
    forged = signed(mallory, genesis)
    with pytest.raises(RecordRejected, match="founder"):
        validator.check(forged.dht_key, forged.encode())
    assert validator.known_genesis(genesis.federation_id) is None
    good = signed(founder, genesis)
    validator.check(good.dht_key, good.encode())
    assert validator.known_genesis(genesis.federation_id) == genesis


def test_lease_needs_known_genesis_and_eligible_holder(
    validator: RecordValidator,
) -> None:
    founder, aggregator, mallory = (Identity.generate() for _ in range(3))
    genesis = genesis_for(founder, aggregator)
    lease = signed(aggregator, lease_for(genesis, aggregator))
    with pytest.raises(UnknownFederation) as unknown:
        validator.check(lease.dht_key, lease.encode())
    assert unknown.value.federation_id == genesis.federation_id

    genesis_record = signed(founder, genesis)
    validator.check(genesis_record.dht_key, genesis_record.encode())
    assert validator.check(lease.dht_key, lease.encode()) == lease

    usurper = signed(mallory, lease_for(genesis, mallory))
    with pytest.raises(RecordRejected, match="not eligible"):
        validator.check(usurper.dht_key, usurper.encode())
    on_behalf = signed(mallory, lease_for(genesis, aggregator))
    with pytest.raises(RecordRejected, match="not signed by its holder"):
        validator.check(on_behalf.dht_key, on_behalf.encode())


# -- storage -------------------------------------------------------------------------


def test_storage_keeps_only_newer_versions(
    validator: RecordValidator, clock: FakeClock
) -> None:
    alice = Identity.generate()
    storage = ValidatingStorage(validator)
    v1, v2, v3 = (signed(alice, node_record(alice, 9000 + s), seq=s) for s in (1, 2, 3))
    twin = signed(alice, node_record(alice, 9999), seq=2)
    key = v1.dht_key
    assert storage.offer(key, v2.encode()) is None
    assert storage.offer(key, v2.encode()) is None  # republishing the same bytes
    assert "stale" in str(storage.offer(key, v1.encode()))
    assert "stale" in str(storage.offer(key, twin.encode()))
    assert storage.record(key) == v2
    assert storage.offer(key, v3.encode()) is None
    assert storage[key] == v3.encode()
    assert list(storage) == [(key, v3.encode())]

    clock.now = v3.expires_at
    assert storage.get(key) is None
    assert list(storage) == []
    assert key not in storage


def test_storage_setitem_drops_invalid_silently(validator: RecordValidator) -> None:
    storage = ValidatingStorage(validator)
    storage[b"\x00" * 20] = b"not a record"
    assert len(storage) == 0


# -- routing -------------------------------------------------------------------------


class _QuietProtocol:
    """Stock kademlia's table pings a full bucket's head itself; nobody answers."""

    async def call_ping(self, node: Node) -> None:
        return None


def _filled(
    table_type: type[RoutingTable], contacts: list[Node], me: Node
) -> RoutingTable:
    async def fill() -> RoutingTable:
        if table_type is XorRoutingTable:
            table = XorRoutingTable(8, me)
        else:
            table = table_type(_QuietProtocol(), 8, me)
        for contact in contacts:
            table.add_contact(contact)
        await asyncio.sleep(0)
        return table

    return asyncio.run(fill())


def test_find_neighbors_returns_exactly_the_k_xor_closest() -> None:
    rng = random.Random(7)
    me = Node(rng.randbytes(20))
    contacts = [Node(rng.randbytes(20), "127.0.0.1", 1000 + i) for i in range(400)]
    table = _filled(XorRoutingTable, contacts, me)
    stock = _filled(RoutingTable, contacts, me)
    known = [c for b in table.buckets for c in b.nodes.values()]
    stock_differs = 0
    for _ in range(200):
        target = Node(rng.randbytes(20))
        brute = sorted(known, key=target.distance_to)[:8]
        assert [n.id for n in table.find_neighbors(target)] == [n.id for n in brute]
        stock_ids = [n.id for n in stock.find_neighbors(target)]
        stock_differs += stock_ids != [n.id for n in brute]
    # The reason the subclass exists: the stock walk misses closer contacts.
    assert stock_differs > 0


def test_table_names_whom_to_ping_and_sends_nothing() -> None:
    me = Node(b"\x00" * 20)
    table = XorRoutingTable(2, me)
    # Far from me, sharing a 5-bit prefix: kademlia does not split that bucket.
    far = [Node(bytes([b]) + b"\x01" * 19, "127.0.0.1", 4000 + b) for b in (0x80, 0x84)]
    assert [table.add_contact(contact) for contact in far] == [None, None]
    waiting = Node(b"\x81" + b"\x01" * 19, "127.0.0.1", 4081)
    head = table.add_contact(waiting)
    assert head is not None and head.id == far[0].id  # least recently seen
    assert waiting.id in table.buckets[-1].replacement_nodes
    assert not hasattr(table, "protocol")  # no way to send anything


def test_routing_imports_no_flp2p_module() -> None:
    """Routing answers questions; the protocol, which imports it, does the talking."""
    tree = ast.parse(Path(str(routing.__file__)).read_text())
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported and not any(str(m).startswith("flp2p") for m in imported)


def test_find_neighbors_excludes_target_and_asker() -> None:
    rng = random.Random(3)
    contacts = [Node(rng.randbytes(20), "127.0.0.1", 2000 + i) for i in range(30)]
    table = _filled(XorRoutingTable, contacts, Node(rng.randbytes(20)))
    target, asker = contacts[0], contacts[1]
    found = table.find_neighbors(target, k=40, exclude=asker)
    assert target.id not in {n.id for n in found}
    assert asker.id not in {n.id for n in found}
    assert len(found) == 28
