"""Ledger speed: appending large rounds and verifying a long chain.

Goals (issue 5): append a round of 1,000 contributions in under 100 ms, and time
``verify`` over 10,000 blocks. Also times a replica appending a received
1,000-contribution block (parse + verify + write).

    .venv/bin/python -m benchmarks.ledger_bench                  # ~1-2 min
    .venv/bin/python -m benchmarks.ledger_bench --blocks 2000    # quicker

Writes ``benchmarks/results/ledger_bench.json``. Timings are wall clock on whatever
else the machine is doing; the JSON records the load average next to them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from flp2p.ledger import Ledger
from strategies.records import (
    Contribution,
    ReputationState,
    RoundReport,
    Tier,
    Verdict,
)

RESULTS = Path(__file__).resolve().parent / "results"
FEDERATION = "ledger-bench"


class BenchSigner:
    """A throwaway Ed25519 key with the ledger's ``Signer`` interface."""

    def __init__(self) -> None:
        self._key = Ed25519PrivateKey.generate()
        self.public_key = self._key.public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw
        )
        self.node_id = hashlib.sha256(self.public_key).hexdigest()

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


def round_report(
    server_round: int, peers: int
) -> tuple[RoundReport, list[ReputationState]]:
    """A round in which every tenth peer is rejected; weights by example count."""
    accepted = [i for i in range(peers) if i % 10 != 9]
    total = sum(100 + i for i in accepted)
    contributions = tuple(
        Contribution(
            identity=hashlib.sha256(f"peer-{i}".encode()).hexdigest(),
            node_id=10**18 + i,
            num_examples=100 + i,
            update_sha256=hashlib.sha256(f"{server_round}/{i}".encode()).hexdigest(),
            scores={"norm": 0.01 * i, "cosine": 1.0 - 0.001 * i, "krum": 3.5},
            verdict=Verdict.ACCEPTED if i in accepted else Verdict.REJECTED,
            reason="" if i in accepted else "norm outlier",
            weight=(100 + i) / total if i in accepted else 0.0,
            metrics={"train_loss": 0.5, "epsilon": 1.2},
        )
        for i in range(peers)
    )
    reputations = [
        ReputationState(
            c.identity,
            0.7 if c.weight else 0.2,
            Tier.GOLD if c.weight else Tier.BRONZE,
            1,
            server_round,
            server_round,
        )
        for c in contributions
    ]
    return RoundReport(server_round, contributions, "ab" * 32), reputations


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def time_appends(directory: Path, rounds: int, peers: int) -> dict[str, object]:
    """Aggregator appends and replica appends of ``peers``-contribution rounds."""
    signer = BenchSigner()
    aggregator = Ledger.open(
        directory / "append.db", federation=FEDERATION, signer=signer, create=True
    )
    replica = Ledger.open(directory / "replica.db", federation=FEDERATION, create=True)
    record_ms, record_cpu_ms, replica_ms = [], [], []
    for server_round in range(1, rounds + 1):
        report, reputations = round_report(server_round, peers)
        started, started_cpu = time.perf_counter(), time.process_time()
        aggregator.record_round(report, reputations)
        record_ms.append(1000 * (time.perf_counter() - started))
        record_cpu_ms.append(1000 * (time.process_time() - started_cpu))
        for block_bytes in aggregator.blocks_bytes_after(
            -1 if replica.height is None else replica.height
        ):
            started = time.perf_counter()
            replica.append_block(block_bytes)
            replica_ms.append(1000 * (time.perf_counter() - started))
    replica_ms = replica_ms[1:]  # the first is the tiny genesis
    aggregator.close()
    replica.close()
    return {
        "contributions_per_round": peers,
        "rounds": rounds,
        "record_round_ms": summary(record_ms),
        # CPU time of this process: what the append costs when the machine is
        # not shared (wall time above includes waiting for the CPU and fsync).
        "record_round_cpu_ms": summary(record_cpu_ms),
        "replica_append_block_ms": summary(replica_ms),
    }


def time_verify(directory: Path, blocks: int, peers: int) -> dict[str, object]:
    """Build a chain of ``blocks`` blocks, then time a full ``verify``."""
    path = directory / "verify.db"
    signer = BenchSigner()
    started = time.perf_counter()
    with Ledger.open(path, federation=FEDERATION, signer=signer, create=True) as led:
        # Setup only: skip the per-commit fsync so building the chain is quick.
        led.db.conn.execute("PRAGMA synchronous=OFF")
        report, reputations = round_report(1, peers)
        for server_round in range(1, blocks):
            led.record_round(
                RoundReport(server_round, report.contributions, None), reputations
            )
    build_s = time.perf_counter() - started
    with Ledger.open(path) as ledger:
        started, started_cpu = time.perf_counter(), time.process_time()
        checked = ledger.verify()
        verify_s = time.perf_counter() - started
        verify_cpu_s = time.process_time() - started_cpu
    return {
        "blocks": checked,
        "contributions_per_block": peers,
        "database_mib": round(path.stat().st_size / 2**20, 1),
        "build_seconds": round(build_s, 1),
        "verify_seconds": round(verify_s, 2),
        "verify_cpu_seconds": round(verify_cpu_s, 2),
        "verify_blocks_per_second": round(checked / verify_s),
    }


def summary(values: list[float]) -> dict[str, float]:
    """Median, p90, min and max in milliseconds."""
    return {
        "median": round(statistics.median(values), 1),
        "p90": round(percentile(values, 0.9), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--blocks", type=int, default=10_000)
    parser.add_argument("--peers-per-block", type=int, default=10)
    args = parser.parse_args()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        appends = time_appends(Path(scratch), args.rounds, args.peers)
        verify = time_verify(Path(scratch), args.blocks, args.peers_per_block)
    record = {
        "command": "python -m benchmarks.ledger_bench "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_1m_before_after": [
                round(load_before[0], 2),
                round(os.getloadavg()[0], 2),
            ],
        },
        "append": appends,
        "verify": verify,
        "goal_append_ms": 100,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ledger_bench.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
