"""Kademlia routing that returns the k XOR-closest contacts.

kademlia 2.2.3's ``RoutingTable.find_neighbors`` walks buckets outward from the
target's bucket and stops after k contacts, which are then sorted: the result is the
first k found, not the k closest (3,582 of 4,000 checks differed; 2–6 % of gets missed
at 200 nodes, see /work/shared/LIBRARY-NOTES.md). Maymounkov & Mazières (2002, §2.3)
define the lookup start set as the k closest known contacts; we compute exactly that.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from kademlia.node import Node
from kademlia.routing import RoutingTable


def k_closest(target: Node, candidates: Iterable[Node], k: int) -> list[Node]:
    """The ``k`` nodes of ``candidates`` closest to ``target`` in XOR distance.

    Ties (impossible between distinct ids) keep the input order.
    """
    return heapq.nsmallest(k, candidates, key=target.distance_to)


class XorRoutingTable(RoutingTable):
    """``RoutingTable`` whose ``find_neighbors`` is exact (all buckets, sorted)."""

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
