"""When a block is final: ⌈2k/3⌉ valid co-signatures from the round's committee.

A co-signature is an :class:`~flp2p.audit.statements.AuditStatement`. It counts
toward a block only if it verifies, is by a member of that round's committee, and
names that block exactly (federation, round, model hash and body hash); each member
counts once, however many statements it signed. Everything that does not count is
listed with the reason, so a report can say why a block is not final.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .committee import Committee
from .statements import AuditStatement


@dataclass(frozen=True)
class BlockTarget:
    """What a co-signature must name to count for one block.

    ``inputs_sha256`` is ``None`` when the verifier cannot recompute it (then any
    value is accepted; the body hash still pins the block's contributions).
    """

    federation: str
    server_round: int
    model_sha256: str
    body_sha256: str
    inputs_sha256: str | None = None


@dataclass(frozen=True)
class Finality:
    """How one block stands with its committee.

    Attributes
    ----------
    cosigners : tuple[str, ...]
        Node ids of the committee members whose co-signature counts, sorted.
    threshold : int
        Co-signatures needed (:attr:`Committee.threshold`).
    refused : tuple[str, ...]
        One reason per co-signature that does not count.
    """

    cosigners: tuple[str, ...]
    threshold: int
    refused: tuple[str, ...] = ()

    @property
    def valid(self) -> int:
        """Number of counting co-signatures."""
        return len(self.cosigners)

    @property
    def is_final(self) -> bool:
        """Whether the block is final (a committee of no one finalises nothing)."""
        return self.threshold > 0 and self.valid >= self.threshold


def statement_refusal(
    statement: AuditStatement, target: BlockTarget, committee: Committee
) -> str | None:
    """Why ``statement`` is no co-signature of ``target`` by ``committee``, or None."""
    who = statement.auditor[:12]
    if not statement.signature_is_valid():
        return f"{who}: signature does not verify"
    if statement.auditor not in committee:
        return f"{who}: not a member of the round's committee"
    if statement.federation != target.federation:
        return f"{who}: signed for another federation"
    if statement.server_round != target.server_round:
        return (
            f"{who}: signed round {statement.server_round}, not {target.server_round}"
        )
    if statement.body_sha256 != target.body_sha256:
        return f"{who}: signed another block body"
    if statement.model_sha256 != target.model_sha256:
        return f"{who}: signed another model"
    if target.inputs_sha256 not in (None, statement.inputs_sha256):
        return f"{who}: signed other inputs than the block lists"
    return None


def block_finality(
    target: BlockTarget, committee: Committee, statements: Iterable[AuditStatement]
) -> Finality:
    """Count the co-signatures of ``statements`` that finalise ``target``."""
    cosigners: set[str] = set()
    refused: list[str] = []
    for statement in statements:
        reason = statement_refusal(statement, target, committee)
        if reason is not None:
            refused.append(reason)
        elif statement.auditor in cosigners:
            refused.append(f"{statement.auditor[:12]}: counted once already")
        else:
            cosigners.add(statement.auditor)
    return Finality(tuple(sorted(cosigners)), committee.threshold, tuple(refused))
