"""Signing domains, canonical JSON, Ed25519 verification, and the bytes on the wire."""

from __future__ import annotations

import hashlib
import itertools
import math

import numpy as np
import pytest
from helpers_ledger import KeySigner, make_report

from flp2p.dht.codec import SignedRecord, sign_record
from flp2p.dht.kinds import Genesis
from flp2p.identity import Identity
from flp2p.ledger.blocks import ZERO_HASH, Block, BlockKind, contribution_row
from flp2p.peer.checkpoints import Checkpoint
from flp2p.peer.standby_sync import checkpoint_header
from flp2p.signatures import (
    AUDIT_STATEMENT_DOMAIN,
    CHECKPOINT_DOMAIN,
    CONTRIBUTION_DOMAIN,
    DHT_RECORD_DOMAIN,
    LEDGER_BLOCK_DOMAIN,
    RUN_RESULTS_DOMAIN,
    SIGNING_DOMAINS,
    NotCanonicalJSON,
    Signer,
    audit_statement_message,
    canonical_dht_json,
    canonical_ledger_json,
    checkpoint_message,
    contribution_message,
    json_float_map,
    run_results_message,
    verify_ed25519,
)
from strategies.records import Contribution, Verdict

# -- domains -------------------------------------------------------------------------


def test_no_domain_is_a_prefix_of_another() -> None:
    domains = list(SIGNING_DOMAINS.values())
    assert len(set(domains)) == len(domains)
    for first, second in itertools.permutations(domains, 2):
        assert not second.startswith(first), (first, second)
    # A closing newline keeps a future domain from extending an existing one.
    assert all(d.startswith(b"flp2p/") and d.endswith(b"\n") for d in domains)


def _ascii_block() -> Block:
    report = make_report(1)
    return Block(
        federation="fed-test",
        height=1,
        kind=BlockKind.ROUND,
        previous_hash=ZERO_HASH,
        server_round=1,
        aggregate_sha256=report.aggregate_sha256,
        created_at=2.5,
        signer="",
        contributions=tuple(contribution_row(c) for c in report.contributions),
    ).signed_by(KeySigner(1))


def test_every_signed_message_starts_with_its_domain() -> None:
    record = sign_record(Identity.generate(), "node", "s", {"a": 1}, 1, 60.0)
    block = _ascii_block()
    signed = {
        CONTRIBUTION_DOMAIN: contribution_message("f", 1, "ab"),
        CHECKPOINT_DOMAIN: checkpoint_message("f", 1, "ab"),
        LEDGER_BLOCK_DOMAIN: block.signing_payload(),
        DHT_RECORD_DOMAIN: record.signing_bytes(),
        AUDIT_STATEMENT_DOMAIN: audit_statement_message(
            "f", 1, "ab" * 32, "cd" * 32, "ef" * 32
        ),
        RUN_RESULTS_DOMAIN: run_results_message("f", 1, "ab"),
    }
    assert set(signed) == set(SIGNING_DOMAINS.values())
    for domain, message in signed.items():
        others = [d for d in SIGNING_DOMAINS.values() if d != domain]
        assert message.startswith(domain)
        assert not any(message.startswith(other) for other in others)


def test_same_fields_under_two_domains_sign_different_bytes() -> None:
    # Contribution and checkpoint messages share their layout; only the domain
    # keeps a checkpoint signature from passing as a contribution of that round.
    holder = Identity.generate()
    signature = holder.sign(checkpoint_message("f", 3, "ab" * 32))
    assert verify_ed25519(
        holder.public_key, signature, checkpoint_message("f", 3, "ab" * 32)
    )
    assert not verify_ed25519(
        holder.public_key, signature, contribution_message("f", 3, "ab" * 32)
    )


def test_identity_is_a_signer() -> None:
    assert isinstance(Identity.generate(), Signer)
    assert isinstance(KeySigner(1), Signer)


# -- canonical JSON (moved from test_ledger_blocks.py and test_dht_records.py) -------


def test_canonical_ledger_json_is_sorted_and_compact() -> None:
    assert (
        canonical_ledger_json({"b": 1, "a": [1.5, "é"]})
        == '{"a":[1.5,"é"],"b":1}'.encode()
    )
    with pytest.raises(ValueError):
        canonical_ledger_json({"x": math.nan})


def test_canonical_dht_json_sorts_keys_and_is_compact() -> None:
    assert canonical_dht_json({"b": 1, "a": [True, None, 0.5]}) == (
        b'{"a":[true,null,0.5],"b":1}'
    )
    assert canonical_dht_json({"x": "é"}) == b'{"x":"\\u00e9"}'


@pytest.mark.parametrize(
    "bad", [{"x": float("nan")}, {"x": float("inf")}, {"x": b"raw"}, {1: "int key"}]
)
def test_canonical_dht_json_refuses_non_canonical_values(bad: object) -> None:
    with pytest.raises(NotCanonicalJSON):
        canonical_dht_json(bad)


def test_the_two_canonical_jsons_differ_only_beyond_ascii() -> None:
    """Why there are two: each is what existing signatures cover.

    On the fixtures' ASCII data they agree byte for byte; a non-ASCII character is
    raw UTF-8 in the ledger and a ``\\u`` escape in the DHT, so neither can replace
    the other without invalidating signed blocks or records.
    """
    block_body = _ascii_block().body()
    record_fields = {
        "payload": {"address": "10.0.0.1:9000", "roles": ["client"], "x": 0.1},
        "seq": 7,
        "expires_at": 1_700_000_600.0,
    }
    for value in (block_body, record_fields, {"scores": json_float_map({"n": 0.5})}):
        assert canonical_ledger_json(value) == canonical_dht_json(value)
    assert canonical_ledger_json({"x": "é"}) != canonical_dht_json({"x": "é"})


# -- verification (moved from test_identity.py) --------------------------------------


@pytest.mark.parametrize(
    ("public_key", "signature", "data"),
    [
        (None, b"\x00" * 64, b"x"),
        (b"\x00" * 32, None, b"x"),
        (b"\x00" * 32, b"\x00" * 64, None),
        (b"\x00" * 5, b"\x00" * 64, b"x"),
        (b"\x00" * 32, b"\x00" * 63, b"x"),
        ("00" * 32, b"\x00" * 64, b"x"),
        (b"\xff" * 32, b"\xff" * 64, b"x"),  # not a curve point
    ],
)
def test_verify_never_raises_on_garbage(
    public_key: object, signature: object, data: object
) -> None:
    assert verify_ed25519(public_key, signature, data) is False  # type: ignore[arg-type]


# -- the bytes on the wire -----------------------------------------------------------
# Known answers recorded with the code before signing moved into flp2p.signatures
# (commit fd117f5): records, blocks and checkpoints signed by peers running that code
# must keep verifying, so these bytes must never change. Ed25519 is deterministic,
# so the signatures are known answers too.

GOLDEN_KEY = Identity.from_private_bytes(hashlib.sha256(b"flp2p/golden").digest())
DIGEST = "ab" * 32


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _golden_block() -> Block:
    contribution = Contribution(
        identity="peer-é",
        node_id=2**64 - 1,
        num_examples=10,
        update_sha256=DIGEST,
        scores={"norm": 0.1, "bad": math.nan, "up": math.inf},
        verdict=Verdict.ACCEPTED,
        reason="ok é",
        weight=1.0,
        metrics={"loss": 0.25},
    )
    return Block(
        federation="fed-é",
        height=1,
        kind=BlockKind.ROUND,
        previous_hash=ZERO_HASH,
        server_round=1,
        aggregate_sha256=DIGEST,
        created_at=1_700_000_000.5,
        signer="",
        contributions=(contribution_row(contribution),),
    ).signed_by(GOLDEN_KEY)


def test_contribution_bytes_are_unchanged() -> None:
    assert GOLDEN_KEY.public_key.hex() == (
        "0f5574bf149681990ccc814c5eb5f946bb104837ce4ec28107ee73dbed1c347b"
    )
    message = contribution_message("fed-é", 3, DIGEST)
    assert message == b"flp2p/contribution/v1\nfed-\xc3\xa9\n3\n" + DIGEST.encode()
    old_signature = bytes.fromhex(
        "f9e94d83550380bf9f9862fa93307557df7f497288d0b2dbd3c63d1c22a8ebfb"
        "5c8c42ae255ab5104905833e4899b477d6a68639e50b6b7cc355764c61b4210c"
    )
    assert verify_ed25519(GOLDEN_KEY.public_key, old_signature, message)


def test_checkpoint_bytes_are_unchanged() -> None:
    message = checkpoint_message("fed-é", 3, DIGEST)
    assert message == b"flp2p/checkpoint/v1\nfed-\xc3\xa9\n3\n" + DIGEST.encode()
    assert _sha256(message) == (
        "31bbf242fa6db8d77a654fa7f3d713f7d2cbd69bcac8b660cad83fcfe741d2e9"
    )


def test_checkpoint_header_signs_the_checkpoint_message() -> None:
    checkpoint = Checkpoint(3, {"w": np.zeros(2, dtype=np.float32)})
    header = checkpoint_header(GOLDEN_KEY, "fed", checkpoint, 10)
    message = checkpoint_message("fed", 3, checkpoint.sha256)
    signature = bytes.fromhex(header["signature"])
    assert verify_ed25519(GOLDEN_KEY.public_key, signature, message)


def test_dht_record_bytes_are_unchanged() -> None:
    payload = {"address": "hôte:1", "roles": ["client"], "x": 0.1, "n": None}
    record = sign_record(
        GOLDEN_KEY, "node", GOLDEN_KEY.node_id, payload, 7, 1_700_000_600.0
    )
    assert _sha256(record.signing_bytes()) == (
        "405111f91be2da78017afd82af3e118eeb2a705a901a2a549f20a0da2ed1d523"
    )
    assert _sha256(record.encode()) == (
        "40cb5530602966f46094118850d2c8a14b2493e9e4f4db509023ffd08e03e1a1"
    )
    old_signature = bytes.fromhex(
        "c7a498e306b7d4063efb199c74f03956742dac4a51b40793e0cb8e73d3ff9bc9"
        "f8d1bfc231a0474a6b164fbf757f26d91619358ffb098ecf59772e3e3dc6f20d"
    )
    assert record.signature == old_signature
    assert SignedRecord.decode(record.encode()).signature_is_valid()


def test_federation_id_is_unchanged() -> None:
    genesis = Genesis(
        founder=GOLDEN_KEY.node_id,
        parameters={"rounds": 10, "name": "fédé", "lr": 0.05},
        eligible=(GOLDEN_KEY.node_id,),
        created_at=1_700_000_000.0,
    )
    assert genesis.federation_id == (
        "c4e79b1eeedd51ac58501a6a9018f1545c3334b76c01a1651703ba9d1ef3e422"
    )


def test_ledger_block_bytes_are_unchanged() -> None:
    block = _golden_block()
    assert _sha256(block.signing_payload()) == (
        "1a9ab78f3a312bd761be12a91ee4c721da6f22cc6740082a9a1af734debe9802"
    )
    assert _sha256(block.to_bytes()) == (
        "90d1bbbed2a481466a7a97419c0eba9754e05a6ac89af417a1045beaa963f8e4"
    )
    assert block.block_hash == (
        "b3aee1929e45149899ebd8dacce6b71656745a303423b71f5dd182b5b6c27046"
    )
    assert block.signature == (
        "b601986397683ad4a372747bf12120bedcbedb61bb00cc09e67e84fdf1931f09"
        "b4a15e28140224934d42b25c3e258b19b5cfacb50c82c81151e7791508c18e03"
    )
    assert Block.from_bytes(block.to_bytes()).signature_valid()
