"""Failover across hosts: ``kill -9`` of the aggregator, timed (issue 12, item 6).

Seven Linux network namespaces on one bridge stand in for seven machines
(:mod:`benchmarks.netns_hosts`): the founder, two aggregator-eligible peers
(listening on the wildcard, so they advertise the address that routes to the
founder) and four participants (DHT clients), digits, 3 rounds, TLS. Once the lease
advertises round 1, the holder's whole process tree gets SIGKILL; an observer on
the founder's host then times, from the kill,

* the successor's lease (epoch 2) appearing in the DHT,
* every participant's SuperNode started against the successor's SuperLink (from
  the participants' logs),
* the next round finishing (the lease advertising round 2).

The same measurement on 127.0.0.1 is ``examples/localhost/run.py --clients 4
--rounds 3 --kill-aggregator-after 1``.

    sudo .venv/bin/python -m benchmarks.failover_hosts            # one run, ~2 min
    sudo .venv/bin/python -m benchmarks.failover_hosts --runs 3

Needs root (``ip netns``); elsewhere it says so in one line and exits with 1.
Prints a table and writes ``benchmarks/results/failover_hosts.json`` (with the load
average: times are wall clock on whatever else the machine does).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.netns_hosts import (
    Hosts,
    NamespacesUnavailable,
    localhost_example,
    namespace_federation,
)
from flp2p.peer.participant import configure_logging

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "failover_hosts.json"
CLIENTS = 4
ROUNDS = 3
KILL_AFTER_ROUND = 1
TIMEOUT = 600.0
HOST_NAMES = ["founder", "eligible-a", "eligible-b"] + [
    f"client-{i}" for i in range(CLIENTS)
]
MEASURES = (
    ("new_lease_s", "new lease (epoch 2) in the DHT"),
    ("supernodes_moved_s", "all SuperNodes on the new SuperLink"),
    ("next_round_s", "next round finished"),
)


def one_run(hosts: Hosts, work_dir: Path) -> dict[str, Any]:
    """One federation through one kill; seconds after it (``None``: never)."""
    example = localhost_example()
    federation = namespace_federation(hosts, work_dir, clients=CLIENTS, rounds=ROUNDS)
    started = time.monotonic()
    try:
        federation.start()
        failover = example.kill_holder_and_watch(federation, KILL_AFTER_ROUND, TIMEOUT)
        codes = federation.wait_clients(TIMEOUT)
        moved = example.supernodes_moved_after(federation, failover)
    finally:
        federation.stop()
    return {
        "new_lease_s": failover.new_lease_after,
        "supernodes_moved_s": moved,
        "next_round_s": failover.next_round_after,
        "killed_after_round": failover.killed_after_round,
        "successor_epoch": failover.successor_epoch,
        "victim_superlink": failover.victim_superlink,
        "successor_superlink": failover.successor_superlink,
        "clients_finished": sum(code == 0 for code in codes.values()),
        "total_s": time.monotonic() - started,
    }


def table(runs: list[dict[str, Any]]) -> str:
    """Markdown table: each measure's median (and range) over the runs."""
    lines = [
        f"| after `kill -9` of the aggregator | s, median of {len(runs)} | range |",
        "|---|---|---|",
    ]
    for key, label in MEASURES:
        values = [run[key] for run in runs if run[key] is not None]
        if not values:
            lines.append(f"| {label} | never | — |")
            continue
        span = f"{min(values):.2f}–{max(values):.2f}"
        lines.append(f"| {label} | {statistics.median(values):.2f} | {span} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    # The peers run from this checkout, whatever the editable install points at.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
    )
    configure_logging(verbose=False)  # the observer's DHT node is chatty otherwise
    runs: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    for index in range(args.runs):
        hosts = Hosts(f"flp2pbench{os.getpid()}", HOST_NAMES)
        try:
            hosts.__enter__()
        except NamespacesUnavailable as reason:
            print(
                f"failover_hosts: cannot make network namespaces here ({reason}); "
                "run it as root on Linux with iproute2",
                file=sys.stderr,
            )
            return 1
        try:
            with tempfile.TemporaryDirectory(prefix="flp2p-failover-") as work:
                run = one_run(hosts, Path(work))
        finally:
            hosts.close()
        print(f"run {index + 1}: {json.dumps(run)}", flush=True)
        runs.append(run)
    print(table(runs))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "clients": CLIENTS,
                "rounds": ROUNDS,
                "killed_after_round": KILL_AFTER_ROUND,
                "dataset": "digits",
                "runs": runs,
                "load_average_before": load_before,
                "load_average_after": os.getloadavg(),
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
            },
            indent=2,
        )
        + "\n"
    )
    finished = all(run["clients_finished"] == CLIENTS for run in runs)
    return 0 if finished else 1


if __name__ == "__main__":
    sys.exit(main())
