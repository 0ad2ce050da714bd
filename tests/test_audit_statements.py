"""Audit statements (the co-signatures) and the finality rule."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from flp2p.audit import (
    AuditStatement,
    BlockTarget,
    Committee,
    StatementError,
    block_finality,
    draw_committee,
    inputs_sha256,
    sign_statement,
    verify_statement,
)
from flp2p.identity import Identity
from flp2p.signatures import AUDIT_STATEMENT_DOMAIN, verify_ed25519

FEDERATION = "ab" * 32
ROUND = 7


def _hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


TARGET = BlockTarget(
    federation=FEDERATION,
    server_round=ROUND,
    model_sha256=_hex("model"),
    body_sha256=_hex("body"),
    inputs_sha256=_hex("inputs"),
)


def _statement(auditor: Identity, target: BlockTarget = TARGET) -> AuditStatement:
    return sign_statement(
        auditor,
        target.federation,
        target.server_round,
        target.inputs_sha256 or _hex("inputs"),
        target.model_sha256,
        target.body_sha256,
    )


# -- inputs hash ---------------------------------------------------------------------


def test_inputs_hash_is_canonical_by_identity() -> None:
    pairs = [("carol", _hex("c")), ("alice", _hex("a")), ("bob", _hex("b"))]
    digest = inputs_sha256(pairs)
    assert inputs_sha256(reversed(pairs)) == digest
    assert inputs_sha256(dict(pairs)) == digest
    reference = (
        '[["alice","' + _hex("a") + '"],["bob","' + _hex("b") + '"],'
        '["carol","' + _hex("c") + '"]]'
    )
    assert digest == hashlib.sha256(reference.encode()).hexdigest()
    # Dropping, altering or moving a digest to another identity changes the hash.
    assert inputs_sha256(pairs[:2]) != digest
    assert inputs_sha256([("carol", _hex("x")), *pairs[1:]]) != digest
    swapped = [("carol", _hex("a")), ("alice", _hex("c")), ("bob", _hex("b"))]
    assert inputs_sha256(swapped) != digest


def test_inputs_hash_refuses_one_identity_twice() -> None:
    with pytest.raises(StatementError, match="twice"):
        inputs_sha256([("alice", _hex("a")), ("alice", _hex("b"))])


# -- statements ----------------------------------------------------------------------


def test_sign_and_verify_round_trip() -> None:
    auditor = Identity.generate()
    statement = _statement(auditor)
    assert statement.auditor == auditor.node_id
    assert statement.signing_bytes().startswith(AUDIT_STATEMENT_DOMAIN)
    assert statement.signature_is_valid() and verify_statement(statement)
    assert AuditStatement.from_json(statement.to_json()) == statement
    assert verify_ed25519(
        auditor.public_key, statement.signature, statement.signing_bytes()
    )


@pytest.mark.parametrize(
    "change",
    [
        {"federation": "cd" * 32},
        {"server_round": ROUND + 1},
        {"inputs_sha256": _hex("other inputs")},
        {"model_sha256": _hex("other model")},
        {"body_sha256": _hex("other body")},
        {"auditor_public_key": Identity.generate().public_key},
        {"signature": b""},
    ],
)
def test_any_changed_field_breaks_the_signature(change: dict[str, object]) -> None:
    forged = replace(_statement(Identity.generate()), **change)
    assert not forged.signature_is_valid()
    assert not verify_statement(forged)


@pytest.mark.parametrize(
    "change",
    [
        {"federation": ""},
        {"federation": "a\nb"},
        {"server_round": -1},
        {"server_round": True},
        {"model_sha256": "AB" * 32},
        {"body_sha256": "ab"},
        {"auditor_public_key": b"\x01" * 31},
        {"signature": b"\x00" * 10},
    ],
)
def test_malformed_statements_cannot_be_built(change: dict[str, object]) -> None:
    with pytest.raises(StatementError):
        replace(_statement(Identity.generate()), **change)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: {**d, "extra": 1},
        lambda d: {k: v for k, v in d.items() if k != "signature"},
        lambda d: {**d, "signature": "zz"},
        lambda d: {**d, "server_round": "7"},
        lambda d: {**d, "model_sha256": None},
        lambda d: [d],
    ],
)
def test_from_json_is_strict(mangle: object) -> None:
    good = _statement(Identity.generate()).to_json()
    with pytest.raises(StatementError):
        AuditStatement.from_json(mangle(good))  # type: ignore[operator]


def test_verify_statement_never_raises() -> None:
    assert not verify_statement("not a statement")
    assert not verify_statement(None)


# -- finality ------------------------------------------------------------------------


def _committee_of(
    auditors: list[Identity], k: int = 3
) -> tuple[list[Identity], Committee]:
    aggregator = Identity.generate()
    committee = draw_committee(
        [a.node_id for a in auditors] + [aggregator.node_id],
        aggregator.node_id,
        _hex("previous block"),
        k=k,
    )
    members = [a for a in auditors if a.node_id in committee]
    return members, committee


def test_two_of_three_committee_members_make_a_block_final() -> None:
    members, committee = _committee_of([Identity.generate() for _ in range(5)])
    assert len(members) == 3
    one = block_finality(TARGET, committee, [_statement(members[0])])
    assert (one.valid, one.threshold, one.is_final) == (1, 2, False)
    two = block_finality(TARGET, committee, [_statement(m) for m in members[:2]])
    assert two.is_final and two.cosigners == tuple(
        sorted(m.node_id for m in members[:2])
    )
    assert two.refused == ()


def test_only_valid_committee_cosignatures_of_this_block_count_once() -> None:
    outsiders = [Identity.generate() for _ in range(5)]
    members, committee = _committee_of(outsiders)
    outsider = next(a for a in outsiders if a not in members)
    honest = _statement(members[0])
    statements = [
        honest,
        honest,  # the same member twice
        _statement(members[0], replace(TARGET, body_sha256=_hex("x"))),
        _statement(outsider),  # valid signature, not on the committee
        _statement(members[1], replace(TARGET, body_sha256=_hex("other body"))),
        _statement(members[1], replace(TARGET, model_sha256=_hex("other model"))),
        _statement(members[1], replace(TARGET, server_round=ROUND + 1)),
        _statement(members[1], replace(TARGET, federation="cd" * 32)),
        _statement(members[1], replace(TARGET, inputs_sha256=_hex("dropped one"))),
        replace(_statement(members[2]), body_sha256=_hex("forged")),  # bad signature
    ]
    finality = block_finality(TARGET, committee, statements)
    assert finality.cosigners == (members[0].node_id,)
    assert not finality.is_final
    reasons = " | ".join(finality.refused)
    for expected in (
        "counted once already",
        "not a member of the round's committee",
        "another block body",
        "another model",
        f"round {ROUND + 1}",
        "another federation",
        "other inputs",
        "signature does not verify",
    ):
        assert expected in reasons
    assert len(finality.refused) == len(statements) - 1


def test_an_empty_committee_finalises_nothing() -> None:
    _, committee = _committee_of([], k=3)
    finality = block_finality(TARGET, committee, [])
    assert (finality.threshold, finality.is_final) == (0, False)
