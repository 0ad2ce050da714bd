"""Block format: canonical bytes, strict parsing, signatures, chain rules."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from helpers_ledger import FEDERATION, KeySigner, make_report

from flp2p.ledger import Block, BlockFormatError, BlockKind, ChainError
from flp2p.ledger.blocks import ZERO_HASH, contribution_row
from flp2p.ledger.verify import verify_chain
from flp2p.signatures import canonical_ledger_json
from strategies.records import Contribution, Verdict


def genesis(signer: KeySigner, allowed: tuple[str, ...] = ()) -> Block:
    return Block(
        federation=FEDERATION,
        height=0,
        kind=BlockKind.GENESIS,
        previous_hash=ZERO_HASH,
        server_round=0,
        aggregate_sha256=None,
        created_at=1.0,
        signer="",
        allowed_signers=allowed,
    ).signed_by(signer)


def round_block(previous: Block, signer: KeySigner, server_round: int) -> Block:
    report = make_report(server_round)
    return Block(
        federation=previous.federation,
        height=previous.height + 1,
        kind=BlockKind.ROUND,
        previous_hash=previous.block_hash,
        server_round=server_round,
        aggregate_sha256=report.aggregate_sha256,
        created_at=2.5,
        signer="",
        contributions=tuple(contribution_row(c) for c in report.contributions),
    ).signed_by(signer)


def chain(length: int, signer: KeySigner) -> list[Block]:
    blocks = [genesis(signer)]
    for server_round in range(1, length):
        blocks.append(round_block(blocks[-1], signer, server_round))
    return blocks


def test_bytes_round_trip_keeps_hash_and_signature() -> None:
    signer = KeySigner(1)
    block = round_block(genesis(signer), signer, 1)
    parsed = Block.from_bytes(block.to_bytes())
    assert parsed == block
    assert parsed.block_hash == block.block_hash
    assert parsed.signature_valid()
    assert parsed.signer == signer.public_key.hex()


def test_non_finite_scores_survive_serialisation() -> None:
    signer = KeySigner(1)
    block = round_block(genesis(signer), signer, 1)
    poisoned = Contribution(
        "p",
        1,
        5,
        "",
        {"norm": math.inf, "cos": math.nan, "low": -math.inf},
        Verdict.REJECTED,
        "non-finite update",
        0.0,
    )
    odd = replace(block, contributions=(contribution_row(poisoned),))
    parsed = Block.from_bytes(odd.signed_by(signer).to_bytes())
    assert parsed.signature_valid()
    assert parsed.contributions[0]["scores"] == {
        "norm": "inf",
        "cos": "nan",
        "low": "-inf",
    }


def test_altered_body_breaks_signature() -> None:
    signer = KeySigner(1)
    block = round_block(genesis(signer), signer, 1)
    row = {**block.contributions[0], "weight": 0.99}
    assert not replace(block, contributions=(row,)).signature_valid()
    assert not replace(block, server_round=7).signature_valid()
    assert not replace(block, signer=KeySigner(2).public_key.hex()).signature_valid()
    assert not replace(block, signature="zz").signature_valid()


def _mutated(block: Block, change: dict[str, object]) -> bytes:
    decoded = json.loads(block.to_bytes())
    decoded.update(change)
    return canonical_ledger_json(decoded)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "version"),
        ({"height": "1"}, "height"),
        ({"height": True}, "height"),
        ({"created_at": 3}, "created_at"),  # int where the float must stay a float
        ({"kind": "fork"}, "kind"),
        ({"extra": 1}, "unknown"),
        ({"contributions": [{"identity": "x"}]}, "missing"),
    ],
)
def test_from_bytes_refuses_malformed(change: dict[str, object], message: str) -> None:
    signer = KeySigner(1)
    data = _mutated(round_block(genesis(signer), signer, 1), change)
    with pytest.raises(BlockFormatError, match=message):
        Block.from_bytes(data)


def test_from_bytes_refuses_garbage_and_non_canonical() -> None:
    signer = KeySigner(1)
    block = genesis(signer)
    with pytest.raises(BlockFormatError, match="not JSON"):
        Block.from_bytes(b"\xff\x00")
    pretty = json.dumps(json.loads(block.to_bytes()), indent=2).encode()
    with pytest.raises(BlockFormatError, match="canonical"):
        Block.from_bytes(pretty)
    row = {**json.loads(round_block(block, signer, 1).to_bytes())}
    row["contributions"][0]["verdict"] = "maybe"
    with pytest.raises(BlockFormatError, match="verdict"):
        Block.from_bytes(canonical_ledger_json(row))


def test_verify_chain_accepts_valid_and_returns_tip() -> None:
    blocks = chain(5, KeySigner(1))
    tip = verify_chain(blocks, FEDERATION)
    assert tip is not None
    assert tip.last == blocks[-1]
    assert tip.genesis == blocks[0]
    assert verify_chain([], FEDERATION) is None


def test_verify_chain_names_first_bad_block_of_reordered_list() -> None:
    blocks = chain(6, KeySigner(1))
    reordered = [*blocks[:2], blocks[3], blocks[2], *blocks[4:]]
    with pytest.raises(ChainError, match="missing") as error:
        verify_chain(reordered, FEDERATION)
    assert error.value.height == 2
    with pytest.raises(ChainError, match="out of order") as error:
        verify_chain([*blocks[:3], blocks[2]], FEDERATION)
    assert error.value.height == 3


def test_verify_chain_refuses_foreign_federation_and_wrong_genesis() -> None:
    signer = KeySigner(1)
    with pytest.raises(ChainError, match="federation") as error:
        verify_chain(chain(3, signer), "another-federation")
    assert error.value.height == 0
    first = genesis(signer)
    bad = replace(round_block(first, signer, 1), height=0, previous_hash=ZERO_HASH)
    with pytest.raises(ChainError, match="round block cannot be here"):
        verify_chain([bad.signed_by(signer)], FEDERATION)


def test_allowed_signers_from_genesis_bind_every_block() -> None:
    founder, successor, outsider = KeySigner(1), KeySigner(2), KeySigner(3)
    allowed = (founder.public_key.hex(), successor.public_key.hex())
    first = genesis(founder, allowed)
    second = round_block(first, founder, 1)
    third = round_block(second, successor, 2)
    assert verify_chain([first, second, third], FEDERATION) is not None
    intruder = round_block(second, outsider, 2)
    with pytest.raises(ChainError, match="not allowed") as error:
        verify_chain([first, second, intruder], FEDERATION)
    assert error.value.height == 2
