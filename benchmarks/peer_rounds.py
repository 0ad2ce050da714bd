"""Round time in peer mode next to the in-process simulation, and where it goes.

::

    python -m benchmarks.peer_rounds [--rounds 4] [--datasets digits fmnist]

For each data set, one run of the same federation (4 participants, flp2p's default
strategy, the same genesis parameters) twice, one after the other:

* **simulation**: ``flp2p.simulate`` on the in-process engine (one process, the
  clients trained one after another); its round time is the gap between two rows
  of ``metrics.csv``;
* **peer mode**: ``examples/localhost/run.py``'s federation on loopback — a founder,
  two aggregator-eligible peers and 4 participants, each its own ``python -m
  flp2p.client`` with a Flower SuperNode, one ClientApp process per participant and
  round.

Every process notes its phases in ``$FLP2P_TIMINGS`` (:mod:`flp2p.round_timings`).
A peer round runs from one ``round-sent`` of training instructions to the next; for
the participant whose reply came last it splits into

* **launch**: instructions sent → its ClientApp process exists (the SuperNode's pull
  and the SuperExec's task poll, process creation);
* **start-up**: → the app's mods get the instruction (interpreter, Flower, importing
  the ClientApp, pulling the message);
* **data**: → its partition is ready (ledger sync of the mods, settings, the data);
* **training**: local training (the round's *slowest* training among participants is
  what the overhead is measured against);
* **reply**: → the mods return the reply (signing);
* **return**: → the ServerApp has the last reply (pushing it, the SuperNode's and the
  ServerApp's polls, the ClientApp's exit in between);
* **aggregation**: → the next round's instructions (aggregation, central
  evaluation, checkpoint, ledger block).

**Overhead** = round time − slowest local training. The row below each data set
gives the CPU seconds the slowest participant's ClientApp spent in each of its
phases (a cold process counts its interpreter start in *start-up*): on a machine
shared with other work, the part of the wall time that is this federation's own.
The first round also waits for every participant to connect and the last has no
next round to end it: both are left out, and the table shows medians over the
others. Measured on whatever shares
the machine: run it on a quiet one.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from flp2p.round_timings import TIMINGS_ENV

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "localhost" / "run.py"
CLIENTS = 4
DATASET_PARAMS = {
    "digits": (),
    # One epoch of 15,000 images per participant takes minutes on two cores with
    # four trainings at once; the overhead does not depend on it.
    "fmnist": ("train.max_steps=40",),
}
PHASES = ("launch", "start-up", "data", "training", "reply", "return", "aggregation")


def localhost_example() -> ModuleType:
    """``examples/localhost/run.py`` as a module (the examples are no package)."""
    spec = importlib.util.spec_from_file_location("localhost_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def read_events(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a timings file (none if nothing was written)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def overrides(dataset: str, rounds: int) -> list[str]:
    """The federation's parameters (as the localhost example's founder sets them)."""
    return [
        f"rounds={rounds}",
        f"clients={CLIENTS}",
        f"dataset={dataset}",
        "strategy=trusted",
        "output.progress=false",
        "output.plot=false",
        *DATASET_PARAMS[dataset],
    ]


@dataclass
class Measured:
    """One mode's rounds: seconds per round and per phase (rounds ≥ 2)."""

    rounds: list[float] = field(default_factory=list)
    training: list[float] = field(default_factory=list)
    """Slowest participant's local training, per round."""
    phases: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    cpu: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    """CPU seconds of the ClientApp phases (start-up, data, training, reply) of the
    slowest participant: what the wall times would shrink to on an idle machine."""
    warm: int = 0
    cold: int = 0
    """ClientApps forked by the warm executor, and started cold (peer mode)."""

    def median(self, values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    @property
    def round_seconds(self) -> float:
        return self.median(self.rounds)

    @property
    def overhead(self) -> float:
        pairs = zip(self.rounds, self.training, strict=True)
        return self.median([r - t for r, t in pairs])


def simulate(dataset: str, rounds: int, work_dir: Path) -> Measured:
    """The in-process simulation of the federation; round times from metrics.csv."""
    from flp2p.config import RunSettings, compose
    from flp2p.simulate import simulate as run_simulation

    output = work_dir / f"simulation-{dataset}"
    timings = work_dir / f"simulation-{dataset}.jsonl"
    os.environ[TIMINGS_ENV] = str(timings)
    try:
        settings = RunSettings.from_config(
            compose([*overrides(dataset, rounds), "simulation.backend=in_process"])
        )
        run_simulation(settings, output)
    finally:
        del os.environ[TIMINGS_ENV]
    return simulation_rounds(work_dir, dataset)


def simulation_rounds(work_dir: Path, dataset: str) -> Measured:
    """Round times (``metrics.csv``) and training times of a finished simulation."""
    output = work_dir / f"simulation-{dataset}"
    timings = work_dir / f"simulation-{dataset}.jsonl"
    with (output / "metrics.csv").open() as stream:
        elapsed = [float(row["seconds"]) for row in csv.DictReader(stream)]
    measured = Measured(rounds=[b - a for a, b in itertools.pairwise(elapsed)][1:])
    trained: dict[str, list[float]] = defaultdict(list)
    ready: dict[tuple[str, Any], float] = {}
    for event in read_events(timings):
        key = (event["round"], event["partition"])
        if event["event"] == "data-ready":
            ready[key] = event["t"]
        elif event["event"] == "trained" and key in ready:
            trained[event["round"]].append(event["t"] - ready[key])
    # Sequential clients: a round trains them all, one after another.
    measured.training = [sum(trained[str(r)]) for r in range(2, len(elapsed))]
    return measured


def peer_rounds(events: list[dict[str, Any]]) -> Measured:
    """Round times and the slowest participant's phases from a peer run's events."""
    sent = sorted(
        (float(e["t"]), e["round"])
        for e in events
        if e["event"] == "round-sent" and e["type"] == "train"
    )
    received = {
        e["round"]: float(e["t"])
        for e in events
        if e["event"] == "round-received" and e["type"] == "train"
    }
    client: dict[tuple[str, Any], dict[str, float]] = defaultdict(dict)
    cpu: dict[tuple[str, Any], dict[str, float]] = defaultdict(dict)
    for e in events:
        if e["event"].startswith("clientapp-") and e.get("type") != "train":
            continue
        if e["event"] in {
            "clientapp-process",
            "clientapp-entry",
            "data-ready",
            "trained",
            "clientapp-exit",
        }:
            client[(e["round"], e["partition"])][e["event"]] = float(e["t"])
            if "cpu" in e:
                cpu[(e["round"], e["partition"])][e["event"]] = float(e["cpu"])
    measured = Measured()
    entries = [e for e in events if e["event"] == "clientapp-entry"]
    measured.warm = sum(1 for e in entries if e.get("warm"))
    measured.cold = len(entries) - measured.warm
    for (start, label), (next_start, _) in itertools.pairwise(sent[1:]):
        keys = [k for k, s in client.items() if k[0] == label and len(s) == 5]
        stamps = [client[k] for k in keys]
        if not stamps or label not in received:
            continue
        slowest = max(keys, key=lambda k: client[k]["clientapp-exit"])
        last = client[slowest]
        used = cpu.get(slowest, {})
        if len(used) == 4:  # every ClientApp stamp but the process start
            steps = ["clientapp-entry", "data-ready", "trained", "clientapp-exit"]
            values = [0.0, *(used[step] for step in steps)]
            spans = itertools.pairwise(values)
            for phase, (a, b) in zip(PHASES[1:5], spans, strict=True):
                measured.cpu[phase].append(b - a)
        measured.rounds.append(next_start - start)
        measured.training.append(max(s["trained"] - s["data-ready"] for s in stamps))
        marks = [
            start,
            last["clientapp-process"],
            last["clientapp-entry"],
            last["data-ready"],
            last["trained"],
            last["clientapp-exit"],
            received[label],
            next_start,
        ]
        for phase, (a, b) in zip(PHASES, itertools.pairwise(marks), strict=True):
            measured.phases[phase].append(b - a)
    return measured


def peer(dataset: str, rounds: int, work_dir: Path, timeout: float) -> Measured:
    """The federation in peer mode on loopback (examples/localhost/run.py)."""
    example = localhost_example()
    timings = work_dir / f"peer-{dataset}.jsonl"
    os.environ[TIMINGS_ENV] = str(timings)
    federation = example.LocalFederation(
        work_dir / f"peer-{dataset}",
        clients=CLIENTS,
        rounds=rounds,
        dataset=dataset,
        parameters=DATASET_PARAMS[dataset],
    )
    try:
        federation.start()
        codes = federation.wait_clients(timeout)
    finally:
        federation.stop()
        del os.environ[TIMINGS_ENV]
    if any(code != 0 for code in codes.values()):
        raise RuntimeError(f"peer run failed {codes}; logs in {federation.work_dir}")
    return peer_rounds(read_events(timings))


def table(results: dict[str, tuple[Measured, Measured]]) -> str:
    """The side-by-side table (seconds, medians over rounds ≥ 2)."""
    header = (
        f"{'dataset':8} {'sim round':>9} {'peer round':>10} {'overhead':>8} | "
        + " ".join(f"{p:>11}" for p in PHASES)
    )
    lines = [header, "-" * len(header)]
    for dataset, (sim, peers) in results.items():
        cells = " ".join(f"{peers.median(peers.phases[p]):11.2f}" for p in PHASES)
        lines.append(
            f"{dataset:8} {sim.round_seconds:9.2f} {peers.round_seconds:10.2f} "
            f"{peers.overhead:8.2f} | {cells}"
        )
        if peers.cpu:
            cpu = " ".join(
                f"{peers.median(peers.cpu[p]):11.2f}" if p in peers.cpu else " " * 11
                for p in PHASES
            )
            lines.append(f"{'  CPU s':39} | {cpu}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run both modes for each data set and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--datasets", nargs="+", default=["digits", "fmnist"])
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument(
        "--analyze", action="store_true",
        help="run nothing: print the table of the runs already in --work-dir",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.analyze and args.work_dir is None:
        parser.error("--analyze needs --work-dir")
    if args.rounds < 3:
        parser.error("--rounds must be at least 3 (round 1 and the last are left out)")
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="flp2p-peer-rounds-"))
    work_dir = work_dir.resolve()
    results: dict[str, tuple[Measured, Measured]] = {}
    started = time.monotonic()
    for dataset in args.datasets:
        if args.analyze:
            if not (work_dir / f"peer-{dataset}.jsonl").exists():
                continue
            sim = simulation_rounds(work_dir, dataset)
            peers = peer_rounds(read_events(work_dir / f"peer-{dataset}.jsonl"))
        else:
            sim = simulate(dataset, args.rounds, work_dir)
            peers = peer(dataset, args.rounds, work_dir, args.timeout)
        results[dataset] = (sim, peers)
        print(
            f"{dataset}: simulation rounds {[round(r, 2) for r in sim.rounds]} s, "
            f"peer rounds {[round(r, 2) for r in peers.rounds]} s "
            f"({peers.warm} ClientApps forked warm, {peers.cold} started cold)",
            flush=True,
        )
    load = os.getloadavg()[0]
    print(
        f"\n{CLIENTS} participants, {args.rounds} rounds, loopback; medians over "
        f"rounds 2–{args.rounds}; load average {load:.2f} at the end; "
        f"{time.monotonic() - started:.0f} s in all; work dir {work_dir}\n"
    )
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
