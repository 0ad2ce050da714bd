"""Baseline figure: FedAvg on Fashion-MNIST, 20 clients, Dirichlet α = 0.5.

Runs the default federation of ``python -m flp2p.simulate`` and reports test accuracy
per round, wall time, and when (round, seconds) the target accuracy was first reached.

    .venv/bin/python -m benchmarks.baseline_fedavg            # 20 rounds, ~5-9 min
    .venv/bin/python -m benchmarks.baseline_fedavg --rounds 5 --target 0.8

Writes ``metrics.csv``, ``summary.json`` and ``accuracy.png`` to
``benchmarks/results/baseline_fedavg/`` and a one-file record with the machine it ran
on to ``benchmarks/results/baseline_fedavg.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from pathlib import Path

from flp2p.config import RunSettings, compose
from flp2p.reporting import RoundRow
from flp2p.simulate import simulate

RESULTS = Path(__file__).resolve().parent / "results"


def first_reaching(rows: list[RoundRow], target: float) -> RoundRow | None:
    """The first round whose test accuracy is at least ``target``."""
    return next((row for row in rows if row.accuracy >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", type=float, default=0.85)
    args = parser.parse_args()

    out = RESULTS / "baseline_fedavg"
    settings = RunSettings.from_config(
        compose(
            [
                "strategy=fedavg",
                f"rounds={args.rounds}",
                f"clients={args.clients}",
                f"partition.alpha={args.alpha}",
                f"seed={args.seed}",
            ]
        )
    )
    started = time.perf_counter()
    summary = simulate(settings, out)
    wall = time.perf_counter() - started

    with (out / "metrics.csv").open() as stream:
        rows = [
            RoundRow(
                int(r["round"]),
                float(r["accuracy"]),
                float(r["loss"]),
                float(r["seconds"]),
            )
            for r in csv.DictReader(stream)
        ]
    hit = first_reaching(rows, args.target)
    record = {
        "command": "python -m benchmarks.baseline_fedavg "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "final_accuracy": summary["final_accuracy"],
        "best_accuracy": summary["best_accuracy"],
        "wall_seconds_total": round(wall, 1),
        "target": args.target,
        "target_round": hit.round if hit else None,
        "target_seconds": hit.seconds if hit else None,
        "accuracy_per_round": [round(r.accuracy, 4) for r in rows],
    }
    (RESULTS / "baseline_fedavg.json").write_text(json.dumps(record, indent=2) + "\n")
    reached = (
        f"reached {args.target:.0%} at round {hit.round} after {hit.seconds:.0f} s"
        if hit
        else f"did not reach {args.target:.0%}"
    )
    print(
        f"FedAvg final accuracy {summary['final_accuracy']:.2%} in {wall:.0f} s; "
        f"{reached}"
    )


if __name__ == "__main__":
    main()
