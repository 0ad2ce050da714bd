"""Bytes per round and accuracy of compressed updates, side by side in one run.

The same federation (data, partition, seed, strategy, rounds) once per codec of
``conf/compression/`` on the in-process engine (clients one after another, the
same results for a seed), counting the bytes of every training reply's arrays as
they leave the client (the serialised ``.npy`` payloads, headers included: what
Flower puts on the wire), and the central test accuracy after the last round.

    .venv/bin/python -m benchmarks.compression                       # digits
    .venv/bin/python -m benchmarks.compression --dataset fmnist --rounds 10 \\
        --clients 20 --codecs none,int8,topk --topk-fraction 0.01

Writes ``benchmarks/results/compression.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message, MessageType
from rich.console import Console
from rich.table import Table

from benchmarks.result_files import write_result
from flp2p.app import REPLICA_DIR, make_client_app, make_server_app
from flp2p.config import RunSettings, compose
from flp2p.data import partition_indices
from flp2p.engine import run_federation_in_process
from flp2p.local_training import CONFIG_KEY, instruction_number
from strategies.records import ARRAYS_KEY

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class ReplyBytes:
    """A ClientApp that counts the bytes of its training replies' arrays."""

    client_app: Callable[[Message, Context], Message]
    per_round: dict[int, int] = field(default_factory=dict)

    def __call__(self, message: Message, context: Context) -> Message:
        reply = self.client_app(message, context)
        if message.metadata.message_type != MessageType.TRAIN or reply.has_error():
            return reply
        config = message.content.config_records[CONFIG_KEY]
        server_round = int(instruction_number(config, "server-round", 0))
        record = reply.content.array_records[ARRAYS_KEY]
        sent = sum(len(record[name].data) for name in record)
        self.per_round[server_round] = self.per_round.get(server_round, 0) + sent
        return reply


def run_codec(overrides: list[str], codec: str, out: Path) -> dict[str, Any]:
    """One federation with ``compression=codec``: bytes per round and accuracy."""
    extra = [f"compression={codec}"]
    if codec == "topk":
        extra += [o for o in overrides if o.startswith("compression.")]
    common = [o for o in overrides if not o.startswith("compression.")]
    settings = RunSettings.from_config(compose(common + extra))
    data = settings.data.load()
    partitions = tuple(
        partition_indices(
            data.train.labels,
            settings.clients,
            settings.partition_scheme,
            settings.alpha,
            settings.seed,
        )
    )
    counter = ReplyBytes(make_client_app(settings, partitions, out / REPLICA_DIR))
    started = time.perf_counter()
    run_federation_in_process(
        make_server_app(settings, out),
        counter,  # type: ignore[arg-type]
        num_clients=settings.clients,
        seed=settings.seed,
    )
    seconds = time.perf_counter() - started
    summary = json.loads((out / "summary.json").read_text())
    rounds = sorted(counter.per_round)
    return {
        "codec": codec,
        "settings": repr(settings.compression),
        "bytes_per_round": [counter.per_round[r] for r in rounds],
        "mean_bytes_per_round": float(np.mean([counter.per_round[r] for r in rounds])),
        "final_accuracy": float(summary["final_accuracy"]),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--codecs", default="none,int8,topk")
    parser.add_argument("--topk-fraction", type=float, default=0.01)
    parser.add_argument(
        "--max-steps", type=int, default=0, help="local steps per round (0: an epoch)"
    )
    parser.add_argument("--strategy", default="trusted")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    console = Console(width=110)
    overrides = [
        f"dataset={args.dataset}",
        f"rounds={args.rounds}",
        f"clients={args.clients}",
        f"strategy={args.strategy}",
        f"seed={args.seed}",
        f"train.max_steps={args.max_steps or 'null'}",
        "simulation.backend=in_process",
        "output.progress=false",
        "output.plot=false",
        f"compression.fraction={args.topk_fraction}",
    ]
    rows = []
    for codec in args.codecs.split(","):
        console.log(f"{args.dataset}, {args.clients} clients × {args.rounds}: {codec}")
        with tempfile.TemporaryDirectory() as folder:
            rows.append(run_codec(overrides, codec, Path(folder)))
    baseline = next((row for row in rows if row["codec"] == "none"), rows[0])
    table = Table(
        title=f"Compressed updates: {args.dataset}, {args.clients} clients, "
        f"{args.rounds} rounds, strategy={args.strategy}, seed {args.seed}"
    )
    for header in ("codec", "KiB / round", "× none", "accuracy", "Δ pp", "s"):
        table.add_column(header, justify="left" if header == "codec" else "right")
    for row in rows:
        ratio = row["mean_bytes_per_round"] / baseline["mean_bytes_per_round"]
        row["bytes_ratio"] = ratio
        row["accuracy_delta_pp"] = 100 * (
            row["final_accuracy"] - baseline["final_accuracy"]
        )
        table.add_row(
            row["codec"],
            f"{row['mean_bytes_per_round'] / 1024:,.1f}",
            f"{ratio:.3f}",
            f"{row['final_accuracy']:.2%}",
            f"{row['accuracy_delta_pp']:+.1f}",
            f"{row['seconds']:.0f}",
        )
    console.print(table)
    record = {
        "bytes_metric": "serialised bytes of every training reply's arrays, summed "
        "per round (the .npy payloads Flower sends), mean over rounds",
        "config": vars(args) | {"out": str(args.out)},
        "rows": rows,
    }
    write_result(args.out, "compression.json", record, console)


if __name__ == "__main__":
    main()
