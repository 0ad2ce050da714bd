"""``flp2p status --dht HOST:PORT --federation ID``: a federation as its DHT shows it.

Asks through any live peer — the founder is not needed — for the genesis, the
current aggregator lease (checked like a participant checks it: signature, signer
entitled by the genesis, expiry) and the DHT nodes that answer. The asking node
joins as a DHT client: it publishes nothing, holds nothing and appears in nobody's
routing table, so looking does not change what is looked at.

Kademlia ids are the first 160 bits of a peer's node id
(:class:`flp2p.dht.AddressBook`), so each answering node is named by that prefix
and, where the genesis or the lease names it, by its role.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from flp2p.dht import AddressBook, Genesis, Lease, NodeRecord
from flp2p.identity import Identity
from flp2p.peer.addresses import join_host_port

KADEMLIA_ID_HEX = 40
"""Hex digits of a kademlia id: the node-id prefix a DHT contact shows."""


@dataclass(frozen=True)
class LivePeer:
    """A DHT node that answered, with what the federation's records say of it."""

    address: str
    node_id_prefix: str
    roles: tuple[str, ...]


@dataclass(frozen=True)
class FederationStatus:
    """What one look at the DHT found; ``genesis`` is ``None`` when nothing was."""

    federation_id: str
    asked: tuple[str, ...]
    genesis: Genesis | None
    lease: Lease | None
    peers: tuple[LivePeer, ...]
    eligible_records: dict[str, NodeRecord | None]
    problem: str | None = None

    def lines(self) -> list[str]:
        """The report, one line each (what ``flp2p status --dht`` prints)."""
        if self.genesis is None:
            return [f"nothing found: {self.problem}"]
        rounds = self.genesis.parameters.get("rounds", "?")
        out = [
            f"federation   {self.federation_id}",
            f"founder      {self.genesis.founder[:12]}  rounds {rounds}",
        ]
        if self.lease is None:
            out.append("lease        none live (no aggregator right now)")
        else:
            lease = self.lease
            out.append(
                f"lease        holder {lease.holder[:12]}  epoch {lease.epoch}  "
                f"round {lease.last_round}/{rounds}  SuperLink "
                f"{lease.superlink_address}  model {lease.model_sha256[:12]}"
            )
        for node_id, record in self.eligible_records.items():
            where = "not live" if record is None else record.address
            out.append(f"eligible     {node_id[:12]}  {where}")
        out.append(f"live peers   {len(self.peers)} answering the DHT")
        for peer in self.peers:
            roles = ",".join(peer.roles) or "participant"
            out.append(f"  {peer.address:<22} {peer.node_id_prefix[:12]}  {roles}")
        return out


def _roles(prefix: str, genesis: Genesis, lease: Lease | None) -> tuple[str, ...]:
    roles = []
    if genesis.founder.startswith(prefix):
        roles.append("founder")
    if any(n.startswith(prefix) for n in genesis.eligible):
        roles.append("eligible")
    if lease is not None and lease.holder.startswith(prefix):
        roles.append(f"aggregator (epoch {lease.epoch})")
    return tuple(roles)


async def federation_status(
    bootstrap: Sequence[tuple[str, int]], federation_id: str, rpc_timeout: float = 2.0
) -> FederationStatus:
    """Look the federation up through ``bootstrap`` (any live peers, tried at once)."""
    book = AddressBook(Identity.generate(), rpc_timeout=rpc_timeout, client_only=True)
    asked = tuple(join_host_port(h, p) for h, p in bootstrap)
    empty = FederationStatus(federation_id, asked, None, None, (), {})
    await book.start("0.0.0.0", 0)
    try:
        try:
            await book.bootstrap(bootstrap)
        except ConnectionError:
            problem = f"no DHT peer answered at {', '.join(asked)}"
            return dataclasses.replace(empty, problem=problem)
        genesis = await book.get_genesis(federation_id)
        if genesis is None:
            problem = f"no genesis of federation {federation_id[:16]}… in the DHT"
            return dataclasses.replace(empty, problem=problem)
        lease = await book.get_lease(federation_id)
        eligible = list(genesis.eligible)
        records = await asyncio.gather(*(book.get_node(n) for n in eligible))
        found = await book.server.lookup(book.server.node.id).find_nodes()
        # Every node that answered one of this look's requests joined the routing
        # table: a lookup may settle before a slow (loaded) peer's answer arrives,
        # and that peer is live all the same.
        answered = [
            contact
            for bucket in book.server.protocol.router.buckets
            for contact in bucket.nodes.values()
        ]
        contacts = {node.id: node for node in [*found, *answered]}.values()
        peers = sorted(
            {
                LivePeer(
                    join_host_port(node.ip, node.port),
                    node.id.hex(),
                    _roles(node.id.hex(), genesis, lease),
                )
                for node in contacts
            },
            key=lambda peer: peer.address,
        )
        return FederationStatus(
            federation_id,
            asked,
            genesis,
            lease,
            tuple(peers),
            dict(zip(eligible, records, strict=True)),
        )
    finally:
        await book.stop()
