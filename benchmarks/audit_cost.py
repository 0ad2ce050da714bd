"""What auditing a round costs: extra bytes and CPU per round (issue 15, item 7).

For k = 0, 1, 3, 5 auditors and 4 and 20 participants, at the function level (no
federation): the aggregator encodes the round's signed replies once and sends them
to each auditor (:func:`flp2p.audit.recompute.encode_replies`); each auditor decodes
them, re-runs the round with the default strategy
(:class:`strategies.TrustedFedAvg`, public sketch seed, signatures checked) and
signs a statement (:func:`flp2p.audit.recompute.audit_round`). Extra bytes per
round = k × (batch + request header + statement); extra CPU = encoding + k × one
audit (the committee's CPU, summed over its members; they run in parallel, so the
round waits about one audit).

    .venv/bin/python -m benchmarks.audit_cost                # ~1 min
    .venv/bin/python -m benchmarks.audit_cost --parameters 20000 --repeats 1
    .venv/bin/python -m benchmarks.audit_cost --lie alter    # + a real run, minutes

``--lie`` also times a real localhost federation (``examples/localhost/run.py``:
four eligible peers, k = 3, three clients, two rounds of digits, exact median)
whose first aggregator tells that lie in round 1: seconds from the lie's
detection (the first auditor's accusation, one recomputation after the lie) to the
lease's revocation (the first eligible peer that counted ⌈2k/3⌉ accusations) and
to the next final honest round (the successor's lease, epoch 2, advertising
round 1: it does so only once that round's block is final). Times come from the
peers' log stamps and the observer's clock, on the same host.

Writes ``benchmarks/results/audit_cost.json``. Times are wall clock (median of
``--repeats``) on whatever else the machine is doing; the load average is recorded.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity

from benchmarks.netns_hosts import localhost_example
from benchmarks.result_files import write_result
from flp2p.audit.recompute import (
    audit_round,
    decode_replies,
    encode_replies,
    public_sketch_seed,
    recompute_round,
)
from flp2p.identity import ContributionAuthenticator, Identity
from flp2p.peer.round_audit import LIES
from flp2p.signatures import contribution_message
from strategies import TrustedFedAvg
from strategies.records import (
    ARRAYS_KEY,
    IDENTITY_ID,
    IDENTITY_KEY,
    IDENTITY_PUBLIC_KEY,
    IDENTITY_SIGNATURE,
    METRICS_KEY,
    NUM_EXAMPLES_KEY,
    InMemoryStore,
    update_sha256,
)

RESULTS = Path(__file__).resolve().parent / "results"
FEDERATION = "a" * 64
ROUND = 1
COMMITTEES = (0, 1, 3, 5)
PARTICIPANTS = (4, 20)


def _make_strategy(store: InMemoryStore) -> TrustedFedAvg:
    return TrustedFedAvg(
        recorder=store,
        authenticator=ContributionAuthenticator(FEDERATION),
        sketch_seed=public_sketch_seed(FEDERATION),
    )


def _signed_replies(
    model: dict[str, np.ndarray], count: int, rng: np.random.Generator
) -> list[Message]:
    # Replies built outside a Flower run need the task identity the engine sets.
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    replies = []
    for node in range(count):
        participant = Identity.generate()
        update = {
            k: (v + 0.01 * rng.standard_normal(v.shape)).astype(v.dtype)
            for k, v in model.items()
        }
        signature = participant.sign(
            contribution_message(FEDERATION, ROUND, update_sha256(update))
        )
        content = RecordDict(
            {
                ARRAYS_KEY: ArrayRecord({k: Array(v) for k, v in update.items()}),
                METRICS_KEY: MetricRecord({NUM_EXAMPLES_KEY: 100}),
                IDENTITY_KEY: ConfigRecord(
                    {
                        IDENTITY_ID: participant.node_id,
                        IDENTITY_PUBLIC_KEY: participant.public_key,
                        IDENTITY_SIGNATURE: signature,
                    }
                ),
            }
        )
        instruction = Message(
            RecordDict(), dst_node_id=node + 1, message_type=MessageType.TRAIN
        )
        replies.append(Message(content, reply_to=instruction))
    return replies


def _median_seconds(repeats: int, work: Any) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        work()
        times.append(time.process_time() - start)
    return statistics.median(times)


def measure(parameters: int, repeats: int) -> list[dict[str, Any]]:
    """One row per (participants, committee size)."""
    rng = np.random.default_rng(0)
    model = {"weight": rng.standard_normal(parameters).astype(np.float32)}
    rows = []
    for count in PARTICIPANTS:
        rows += _measure_round(model, _signed_replies(model, count, rng), repeats)
    return rows


def _measure_round(
    model: dict[str, np.ndarray], replies: list[Message], repeats: int
) -> list[dict[str, Any]]:
    auditor = Identity.generate()
    honest = recompute_round(model, replies, _make_strategy, ROUND)
    batch = encode_replies(replies)
    encode_cpu = _median_seconds(repeats, lambda: encode_replies(replies))

    def one_audit() -> None:
        outcome = audit_round(
            auditor,
            FEDERATION,
            ROUND,
            honest.model_sha256,
            honest.inputs_sha256,
            "b" * 64,
            lambda: recompute_round(
                model, decode_replies(batch), _make_strategy, ROUND
            ),
        )
        assert outcome.statement is not None, outcome.reason

    audit_cpu = _median_seconds(repeats, one_audit)
    statement = audit_round(
        auditor,
        FEDERATION,
        ROUND,
        honest.model_sha256,
        honest.inputs_sha256,
        "b" * 64,
        lambda: honest,
    ).statement
    assert statement is not None
    statement_bytes = len(json.dumps(statement.to_json())) + 1
    header_bytes = 400  # kind, federation, size, claim: five hashes and a round
    round_cpu = _median_seconds(
        repeats, lambda: recompute_round(model, replies, _make_strategy, ROUND)
    )
    update_bytes = sum(a.nbytes for a in model.values())
    return [
        {
            "participants": len(replies),
            "committee": k,
            "parameters": int(sum(a.size for a in model.values())),
            "round_bytes": len(replies) * update_bytes,
            "extra_bytes": k * (len(batch) + header_bytes + statement_bytes),
            "aggregation_cpu_s": round_cpu,
            "extra_cpu_s": (encode_cpu if k else 0.0) + k * audit_cpu,
            "audit_cpu_s_each": audit_cpu if k else 0.0,
        }
        for k in COMMITTEES
    ]


LIE_RUN_TIMEOUT = 900.0


def _first_stamp(logs: list[Path], marker: str) -> float | None:
    """Unix time of the earliest line holding ``marker`` in ``logs`` (``None``)."""
    example = localhost_example()
    stamps = [
        datetime.datetime.strptime(line[:23], example.LOG_TIME_FORMAT).timestamp()
        for log in logs
        for line in log.read_text(errors="replace").splitlines()
        if marker in line and line[:4].isdigit()
    ]
    return min(stamps, default=None)


def lie_to_recovery(lie: str, work_dir: Path) -> dict[str, Any]:
    """Seconds from a Byzantine aggregator's detected lie to its revocation and to
    the next final honest round, in a real localhost run (module docstring)."""
    example = localhost_example()
    federation = example.LocalFederation(
        work_dir,
        clients=3,
        rounds=2,
        strategy="median",
        insecure=True,
        eligible_peers=4,
        parameters=("audit.committee_size=3",),
        byzantine_aggregator=lie,
    )
    started = time.time()
    try:
        federation.start()
        replaced = federation.observe(
            example.watch_lease(
                federation,
                lambda lease: lease.epoch >= 2 and lease.last_round >= 1,
                LIE_RUN_TIMEOUT,
            )
        )
        honest_final_at = time.time()
        codes = federation.wait_clients(LIE_RUN_TIMEOUT)
    finally:
        federation.stop()
    if replaced is None or set(codes.values()) != {0}:
        raise SystemExit(f"the {lie} run did not complete: {codes}")
    logs = [work_dir / f"{name}.log" for name in federation.eligible]
    detected = _first_stamp(logs, "differs; accusing")
    revoked = _first_stamp(logs, ": revoked")
    if detected is None or revoked is None:
        raise SystemExit(f"the {lie} run logged no accusation or revocation")
    return {
        "lie": lie,
        "eligible_peers": 4,
        "committee": 3,
        "clients": 3,
        "lie_detected_after_start_s": round(detected - started, 2),
        "revocation_after_lie_s": round(revoked - detected, 2),
        "next_final_honest_round_after_lie_s": round(honest_final_at - detected, 2),
        "run_s": round(time.time() - started, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parameters", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--lie", choices=LIES, help="also time a real run with this lie (minutes)"
    )
    args = parser.parse_args()
    logging.disable(logging.INFO)
    recovery = None
    if args.lie is not None:
        with tempfile.TemporaryDirectory(prefix="audit-cost-") as folder:
            recovery = lie_to_recovery(args.lie, Path(folder))
        print(
            f"{recovery['lie']}: lease revoked {recovery['revocation_after_lie_s']} s "
            "after the lie was detected, next final honest round after "
            f"{recovery['next_final_honest_round_after_lie_s']} s"
        )
    rows = measure(args.parameters, args.repeats)
    for row in rows:
        print(
            f"n={row['participants']:>2} k={row['committee']}: "
            f"+{row['extra_bytes'] / 1e6:7.2f} MB "
            f"(round's updates {row['round_bytes'] / 1e6:.2f} MB), "
            f"+{row['extra_cpu_s']:.3f} s CPU "
            f"(aggregation {row['aggregation_cpu_s']:.3f} s)"
        )
    record: dict[str, Any] = {"rows": rows}
    if recovery is not None:
        record["lie_to_recovery"] = recovery
    write_result(RESULTS, "audit_cost.json", record, None)


if __name__ == "__main__":
    main()
