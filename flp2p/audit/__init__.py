"""Verifiable aggregation (issue 15): who audits a round, what auditors sign, and
when a block is final or its aggregator revoked.

Every function here is pure: peers that see the same public inputs (the ledger's
previous block, the genesis' eligible ids, reputation tiers, signed statements and
DHT records) reach the same answer without exchanging a message.

* :mod:`~flp2p.audit.committee` — :func:`draw_committee`, tier-weighted, seeded;
* :mod:`~flp2p.audit.statements` — :class:`AuditStatement`, the co-signature;
* :mod:`~flp2p.audit.finality` — :func:`block_finality`, ⌈2k/3⌉ co-signatures;
* :mod:`~flp2p.audit.recompute` — :func:`recompute_round` and :func:`audit_round`,
  an auditor re-running a round from the signed replies (:func:`encode_replies`);
* :mod:`~flp2p.audit.revocation` — :func:`revocation` from accusation records and
  the election filter :func:`without_revoked`.

The complaint and accusation records themselves are DHT kinds
(:class:`flp2p.dht.kinds.Complaint`, :class:`flp2p.dht.kinds.Accusation`).
"""

from __future__ import annotations

from .committee import (
    COMMITTEE_TIER_WEIGHTS,
    DEFAULT_COMMITTEE_SIZE,
    Committee,
    draw_committee,
    finality_threshold,
)
from .finality import BlockTarget, Finality, block_finality, statement_refusal
from .statements import (
    NO_MODEL_SHA256,
    AuditStatement,
    StatementError,
    inputs_sha256,
    sign_statement,
    verify_statement,
)

__all__ = [
    "COMMITTEE_TIER_WEIGHTS",
    "DEFAULT_COMMITTEE_SIZE",
    "NO_MODEL_SHA256",
    "AuditStatement",
    "BlockTarget",
    "Committee",
    "Finality",
    "StatementError",
    "block_finality",
    "draw_committee",
    "finality_threshold",
    "inputs_sha256",
    "sign_statement",
    "statement_refusal",
    "verify_statement",
]
