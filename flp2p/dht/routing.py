"""Kademlia routing that returns the k XOR-closest contacts.

kademlia 2.2.3's ``RoutingTable.find_neighbors`` walks buckets outward from the
target's bucket and stops after k contacts, which are then sorted: the result is the
first k found, not the k closest (3,582 of 4,000 checks differed; 2–6 % of gets missed
at 200 nodes, see /work/shared/LIBRARY-NOTES.md). Maymounkov & Mazières (2002, §2.3)
define the lookup start set as the k closest known contacts; we compute exactly that.

Two more changes. A contact waiting in a full bucket's replacement list counted as
"new" every time it sent anything, so each of its messages re-ran the hand-over of
records (§2.5: one STORE per record it should hold, and a k-closest search per stored
key) and re-pinged the bucket's head: at 1,000 nodes most traffic comes from such
contacts. Here a contact is new only if neither list holds it. And the head ping runs
as a task of the protocol, which stops it with the node.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import TYPE_CHECKING

from kademlia.node import Node
from kademlia.routing import RoutingTable

if TYPE_CHECKING:
    from flp2p.dht.protocol import ValidatingProtocol


def k_closest(target: Node, candidates: Iterable[Node], k: int) -> list[Node]:
    """The ``k`` nodes of ``candidates`` closest to ``target`` in XOR distance.

    Ties (impossible between distinct ids) keep the input order.
    """
    return heapq.nsmallest(k, candidates, key=target.distance_to)


class XorRoutingTable(RoutingTable):
    """``RoutingTable`` whose ``find_neighbors`` is exact (all buckets, sorted)."""

    protocol: ValidatingProtocol

    def is_new_node(self, node: Node) -> bool:
        """Whether ``node`` is in neither the contacts nor the replacements."""
        bucket = self.buckets[self.get_bucket_for(node)]
        return node.id not in bucket.nodes and node.id not in bucket.replacement_nodes

    def add_contact(self, node: Node) -> None:
        """As kademlia (paper §2.2, §4.2), with the head ping as a protocol task."""
        index = self.get_bucket_for(node)
        bucket = self.buckets[index]
        if bucket.add_node(node):
            return
        if bucket.has_in_range(self.node) or bucket.depth() % 5 != 0:
            self.split_bucket(index)
            self.add_contact(node)
        else:
            self.protocol.spawn(self.protocol.call_ping(bucket.head()))

    def find_neighbors(
        self, node: Node, k: int | None = None, exclude: Node | None = None
    ) -> list[Node]:
        """Return the ``k`` (default ksize) known contacts XOR-closest to ``node``.

        The node itself and contacts at the same address as ``exclude`` (the asker)
        are left out, as in the original.
        """
        candidates = (
            contact
            for bucket in self.buckets
            for contact in bucket.nodes.values()
            if contact.id != node.id
            and (exclude is None or not contact.same_home_as(exclude))
        )
        return k_closest(node, candidates, k or self.ksize)
