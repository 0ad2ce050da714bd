"""Builders shared by the DHT tests: identities, signed records, a fake clock."""

from __future__ import annotations

from dataclasses import dataclass

from flp2p.dht import Genesis, Lease, NodeRecord, SignedRecord, sign_record
from flp2p.dht.kinds import AnyRecord
from flp2p.identity import Identity

NOW = 1_700_000_000.0


@dataclass
class FakeClock:
    """Unix time that only moves when a test says so."""

    now: float = NOW

    def __call__(self) -> float:
        return self.now


def node_record(identity: Identity, port: int = 9000) -> NodeRecord:
    return NodeRecord(identity.node_id, f"127.0.0.1:{port}", ("client",))


def genesis_for(founder: Identity, *eligible: Identity) -> Genesis:
    return Genesis(
        founder=founder.node_id,
        parameters={"rounds": 10, "strategy": "trusted", "lr": 0.05},
        eligible=tuple(e.node_id for e in eligible),
        created_at=NOW,
    )


def lease_for(genesis: Genesis, holder: Identity, epoch: int = 1) -> Lease:
    return Lease(
        federation_id=genesis.federation_id,
        holder=holder.node_id,
        superlink_address="127.0.0.1:9092",
        tls_fingerprint="ab" * 32,
        epoch=epoch,
        last_round=4,
        model_sha256="cd" * 32,
    )


def signed(
    signer: Identity,
    record: AnyRecord,
    seq: int = 1,
    expires_at: float = NOW + 600,
) -> SignedRecord:
    return sign_record(
        signer, record.KIND, record.subject, record.to_payload(), seq, expires_at
    )
