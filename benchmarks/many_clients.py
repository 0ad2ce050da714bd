"""One aggregation round of the default strategy with many clients: time and memory.

Each client count runs in a fresh subprocess (so its peak resident set is its own),
with :func:`benchmarks.aggregation_speed.measure_isolated`: synthetic replies built
one client at a time, then one ``TrustedFedAvg.aggregate_train`` (validation,
detectors, reputation, norm-bounded mean), its wall time and its peak resident bytes
above what the process held before the call. Beside it, Flower's ``FedAvg`` on the
same replies.

    .venv/bin/python -m benchmarks.many_clients                  # 100, 300, 1000
    .venv/bin/python -m benchmarks.many_clients --clients 100,300 --params 50000

Writes ``benchmarks/results/many_clients.json``.

``--simulation`` runs whole federations instead: ``python -m flp2p.simulate`` on
Fashion-MNIST with 1,000 clients (Dirichlet α = 0.5), 10 % of them training per
round, on the in-process engine, once with the default strategy and once with
Flower's FedAvg, each in its own subprocess; it records every round's wall time and
accuracy (from the run's ``metrics.csv``) and the run's peak resident set (the
child's ``ru_maxrss``). Writes ``benchmarks/results/many_clients_simulation.json``::

    .venv/bin/python -m benchmarks.many_clients --simulation [--rounds 5]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.result_files import write_result

RESULTS = Path(__file__).resolve().parent / "results"
STRATEGIES = ("TrustedFedAvg (default pipeline)", "FedAvg")


def measure(strategy: str, n: int, d: int, repeats: int) -> dict[str, Any]:
    """``strategy`` on ``n`` replies of ``d`` parameters, in a fresh subprocess."""
    command = [
        sys.executable,
        str(Path(__file__).resolve().parent / "aggregation_speed.py"),
        "--isolated",
        strategy,
        "--clients",
        str(n),
        "--params",
        str(d),
        "--repeats",
        str(repeats),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


SIMULATED_STRATEGIES = ("trusted", "fedavg")


def simulate(
    strategy: str, clients: int, rounds: int, fraction: float
) -> dict[str, Any]:
    """One ``flp2p.simulate`` run in a fresh subprocess: round times, accuracy, RSS.

    ``os.wait4`` gives that child's own resource usage, so ``ru_maxrss`` is this
    run's peak resident set, not the largest of all runs so far.
    """
    with tempfile.TemporaryDirectory(prefix="flp2p-many-") as folder:
        command = [
            sys.executable,
            "-m",
            "flp2p.simulate",
            "dataset=fmnist",
            f"strategy={strategy}",
            f"clients={clients}",
            f"fraction_train={fraction}",
            f"rounds={rounds}",
            "simulation.backend=in_process",
            "output.progress=false",
            "output.plot=false",
            f"hydra.run.dir={folder}",
        ]
        started = time.perf_counter()
        with open(Path(folder) / "log.txt", "w", encoding="utf-8") as log:
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        if child.returncode != 0:
            tail = (Path(folder) / "log.txt").read_text(encoding="utf-8")[-2000:]
            raise RuntimeError(f"{' '.join(command)} failed:\n{tail}")
        with open(Path(folder) / "metrics.csv", newline="", encoding="utf-8") as rows:
            metrics = list(csv.DictReader(rows))
    seconds = [float(row["seconds"]) for row in metrics]
    round_seconds = [b - a for a, b in itertools.pairwise(seconds)]
    return {
        "strategy": strategy,
        "clients": clients,
        "fraction_train": fraction,
        "rounds": rounds,
        "round_seconds": round_seconds,
        "median_round_s": sorted(round_seconds)[len(round_seconds) // 2],
        "accuracy": [float(row["accuracy"]) for row in metrics],
        "wall_s": wall,
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "load_average": os.getloadavg(),
    }


def run_simulations(args: argparse.Namespace, console: Console) -> None:
    rows = []
    for strategy in SIMULATED_STRATEGIES:
        console.log(
            f"fmnist, {args.sim_clients} clients, {args.fraction:.0%} per round, "
            f"{args.rounds} rounds: strategy={strategy}"
        )
        rows.append(simulate(strategy, args.sim_clients, args.rounds, args.fraction))
    table = Table(title="Fashion-MNIST federation, in-process engine, one run each")
    for header in ("strategy", "clients", "median round s", "accuracy", "peak RSS"):
        table.add_column(header, justify="left" if header == "strategy" else "right")
    for row in rows:
        table.add_row(
            row["strategy"],
            f"{row['clients']:,}",
            f"{row['median_round_s']:.1f}",
            f"{row['accuracy'][-1]:.1%}",
            f"{row['peak_rss_bytes'] / 2**30:.2f} GiB",
        )
    console.print(table)
    record = {
        "memory_metric": "peak resident set of the run's process (ru_maxrss)",
        "rows": rows,
    }
    write_result(args.out, "many_clients_simulation.json", record, console)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="100,300,1000")
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--simulation",
        action="store_true",
        help="run whole Fashion-MNIST federations instead of one aggregation",
    )
    parser.add_argument("--sim-clients", type=int, default=1000)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    console = Console(width=110)
    if args.simulation:
        run_simulations(args, console)
        return
    rows = []
    for n in (int(count) for count in args.clients.split(",")):
        for strategy in STRATEGIES:
            console.log(f"{n} × {args.params:,}: {strategy}")
            rows.append(measure(strategy, n, args.params, args.repeats))
    table = Table(title="One aggregation round, fresh process per row")
    for header in ("strategy", "clients", "d", "s", "extra MiB", "× replies"):
        table.add_column(header, justify="left" if header == "strategy" else "right")
    for row in rows:
        table.add_row(
            row["name"],
            str(row["n"]),
            f"{row['d']:,}",
            f"{row['median_s']:.2f}",
            f"{row['peak_extra_bytes'] / 2**20:.0f}",
            f"{row['extra_per_reply_byte']:.2f}",
        )
    console.print(table)
    record = {
        "memory_metric": "peak resident bytes during the call above those before it "
        "(sampled every 2 ms), fresh process per row",
        "rows": rows,
    }
    write_result(args.out, "many_clients.json", record, console)


if __name__ == "__main__":
    main()
