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
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="100,300,1000")
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    console = Console(width=110)
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
    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "memory_metric": "peak resident bytes during the call above those before it "
        "(sampled every 2 ms), fresh process per row",
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "numpy": np.__version__,
        },
        "rows": rows,
    }
    path = args.out / "many_clients.json"
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
