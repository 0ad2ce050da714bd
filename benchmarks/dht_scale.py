"""DHT at scale: signed put/get success and latency on loopback, then under churn.

Goals (issue 4): 100 % get success with signed records (≥ 99 % after 25 % of the
nodes die) and median get latency below 50 ms. All nodes run in one process and one
event loop on 127.0.0.1, so latencies include every other node's work on the same
core; they are an upper bound for a node on its own host (minus the network).

Phases:

1. ``steady``: every node publishes its signed node record (one put each), then
   random readers get random records.
2. ``churn``: a random quarter of the nodes stop without warning; survivors get the
   records of survivors and republish their own, before any contact was evicted.
   Lookups do not wait for dead contacts (:mod:`flp2p.dht.crawling`): a request
   unanswered after the stall timeout frees its slot, so the gets run one at a time
   like the steady ones, and their latencies compare directly.
3. ``swept``: every survivor runs one ping sweep (the contact check of a heartbeat),
   then the same measurements again.

The nodes' own background heartbeats are kept out of the run (``--record-ttl`` 1 h,
so the first one would come after 10 minutes): with the library's 300 s lifetime they
fire 50–100 s after start, and 750 heartbeats in one process (a ping to every
contact each: ~80,000 pings) starve the measured lookups, which on separate hosts
they would not. At 1,000 nodes that happened mid-run and made gets fail for ~30 s.

    .venv/bin/python -m benchmarks.dht_scale                   # 200 nodes, ~1 min
    .venv/bin/python -m benchmarks.dht_scale --stock-routing   # kademlia's router
    .venv/bin/python -m benchmarks.dht_scale --nodes 1000      # ~4 min, 600 MiB

Writes ``benchmarks/results/dht_scale.json`` (or ``--output``; the 1,000-node run is
published as ``dht_scale_1000.json``, which the notebook shows when present).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import resource
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

from kademlia.routing import RoutingTable
from rich.console import Console
from rich.table import Table

from flp2p.dht import AddressBook, NodeRecord
from flp2p.dht.crawling import LookupStats
from flp2p.identity import Identity

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_RECORD_TTL = 3600.0
"""Long enough that no node's own heartbeat fires during a run (see the docstring)."""


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100]) of a non-empty sample."""
    if not samples:
        raise ValueError("percentile of an empty sample")
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n q / 100), at least 1
    return ordered[int(rank) - 1]


@dataclass(frozen=True)
class OpStats:
    """Success rate and latency of one kind of operation in one phase."""

    phase: str
    op: str
    count: int
    success_rate: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    requests_mean: float | None = None
    """Gets only: lookup requests sent per get (``LookupStats.sent``)."""
    stalled_mean: float | None = None
    """Gets only: requests per get that outlived the stall timeout."""


def max_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def summarise(phase: str, op: str, results: list[tuple[bool, float]]) -> OpStats:
    """Turn (succeeded, seconds) pairs into :class:`OpStats`."""
    latencies = [seconds * 1000.0 for _, seconds in results]
    return OpStats(
        phase=phase,
        op=op,
        count=len(results),
        success_rate=sum(ok for ok, _ in results) / len(results),
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        max_ms=max(latencies),
    )


async def timed(operation: Awaitable[bool]) -> tuple[bool, float]:
    """Await ``operation``; return whether it succeeded and how long it took."""
    start = time.perf_counter()
    ok = await operation
    return ok, time.perf_counter() - start


async def run_all(
    operations: Sequence[Callable[[], Awaitable[bool]]], concurrency: int
) -> list[tuple[bool, float]]:
    """Time each operation, at most ``concurrency`` in flight at once.

    Sequential (1) gives clean latencies; under churn, where each operation may wait
    for RPC timeouts, running several at once keeps the benchmark short.
    """
    slots = asyncio.Semaphore(concurrency)

    async def one(operation: Callable[[], Awaitable[bool]]) -> tuple[bool, float]:
        async with slots:
            return await timed(operation())

    return list(await asyncio.gather(*(one(op) for op in operations)))


def expected_record(book: AddressBook) -> NodeRecord:
    """The node record each benchmark node publishes about itself."""
    host, port = book.address
    return NodeRecord(book.identity.node_id, f"{host}:{port}", ("client",))


async def start_network(
    count: int,
    rpc_timeout: float,
    stock_routing: bool,
    rng: random.Random,
    record_ttl: float = DEFAULT_RECORD_TTL,
) -> list[AddressBook]:
    """Start ``count`` nodes; each joins through a random node already up."""
    books: list[AddressBook] = []
    for _ in range(count):
        book = AddressBook(
            Identity.generate(), rpc_timeout=rpc_timeout, record_ttl=record_ttl
        )
        await book.start("127.0.0.1", 0)
        if stock_routing:
            # Comparison only: kademlia 2.2.3's bucket-walk neighbour selection.
            protocol = book.server.protocol
            protocol.router = RoutingTable(
                protocol, book.server.ksize, book.server.node
            )
        if books:
            await book.bootstrap([rng.choice(books).address])
        books.append(book)
    return books


async def put(book: AddressBook) -> bool:
    """Publish ``book``'s own record; success: at least one peer holds it."""
    return await book.publish(expected_record(book)) > 0


async def get(reader: AddressBook, target: AddressBook) -> bool:
    """Look up ``target``'s record from ``reader``; success: what it published."""
    return await reader.get_node(target.identity.node_id) == expected_record(target)


async def puts(
    phase: str, books: Sequence[AddressBook], concurrency: int = 1
) -> OpStats:
    """Each node publishes (or republishes) its own record."""
    operations = [partial(put, book) for book in books]
    return summarise(phase, "put", await run_all(operations, concurrency))


async def gets(
    phase: str,
    readers: Sequence[AddressBook],
    targets: Sequence[AddressBook],
    count: int,
    rng: random.Random,
    concurrency: int = 1,
) -> OpStats:
    """``count`` lookups of random targets' records by random readers."""
    lookups: list[LookupStats] = []

    async def get_and_note(reader: AddressBook, target: AddressBook) -> bool:
        ok = await get(reader, target)
        if reader.server.last_lookup is not None:
            lookups.append(reader.server.last_lookup)
        return ok

    operations = [
        partial(get_and_note, rng.choice(readers), rng.choice(targets))
        for _ in range(count)
    ]
    stats = summarise(phase, "get", await run_all(operations, concurrency))
    if not lookups:
        return stats
    return replace(
        stats,
        requests_mean=round(sum(s.sent for s in lookups) / len(lookups), 2),
        stalled_mean=round(sum(s.stalled for s in lookups) / len(lookups), 3),
    )


async def benchmark(args: argparse.Namespace, progress: Console) -> dict[str, object]:
    """Run the three phases; return everything measured."""
    rng = random.Random(args.seed)
    rss_before_mib = max_rss_mib()
    started = time.perf_counter()
    cpu_before = cpu_seconds()
    books = await start_network(
        args.nodes, args.rpc_timeout, args.stock_routing, rng, args.record_ttl
    )
    bootstrap_s = time.perf_counter() - started
    progress.log(f"{len(books)} nodes up in {bootstrap_s:.1f} s")
    phase_started = time.perf_counter()
    phase_s: dict[str, float] = {}

    def phase_done(name: str) -> None:
        nonlocal phase_started
        now = time.perf_counter()
        phase_s[name] = round(now - phase_started, 2)
        phase_started = now
        progress.log(f"{name} phase done in {phase_s[name]:.1f} s")

    stats = [await puts("steady", books)]
    stats.append(await gets("steady", books, books, args.gets, rng))
    phase_done("steady")

    victims = set(rng.sample(range(len(books)), int(len(books) * args.churn)))
    for index in victims:
        await books[index].stop()
    survivors = [b for i, b in enumerate(books) if i not in victims]
    parallel = args.churn_concurrency
    stats.append(
        await gets("churn", survivors, survivors, args.churn_gets, rng, parallel)
    )
    stats.append(await puts("churn", survivors, parallel))
    progress.log(f"{len(victims)} nodes were killed before the churn phase")
    phase_done("churn")

    sweep_started = time.perf_counter()
    evicted = sum(
        await asyncio.gather(*(b.server.protocol.sweep_contacts() for b in survivors))
    )
    sweep_s = time.perf_counter() - sweep_started
    progress.log(f"sweep done in {sweep_s:.1f} s, {evicted} contacts evicted")
    phase_started = time.perf_counter()
    stats.append(await gets("swept", survivors, survivors, args.gets, rng))
    stats.append(await puts("swept", survivors))
    phase_done("swept")

    for book in survivors:
        await book.stop()
    return {
        "nodes": args.nodes,
        "killed": len(victims),
        "routing": "stock" if args.stock_routing else "xor-exact",
        "rpc_timeout_s": args.rpc_timeout,
        "record_ttl_s": args.record_ttl,
        "seed": args.seed,
        "churn_concurrency": args.churn_concurrency,
        "bootstrap_all_s": round(bootstrap_s, 3),
        "sweep_s": round(sweep_s, 3),
        "phase_s": phase_s,
        "contacts_evicted_by_sweep": evicted,
        "max_rss_mib": max_rss_mib(),
        "rss_before_network_mib": rss_before_mib,
        "load_average": os.getloadavg(),
        # CPU share this process got: far below 1 means the host starved the event
        # loop, and RPC timeouts then fire on live peers.
        "cpu_share": round(
            (cpu_seconds() - cpu_before) / (time.perf_counter() - started), 2
        ),
        "python": platform.python_version(),
        "stats": [asdict(s) for s in stats],
    }


def render(result: dict[str, object], console: Console) -> None:
    """Print the measurements as a table."""
    table = Table(
        title=f"DHT on loopback: {result['nodes']} nodes, {result['routing']} routing, "
        f"{result['killed']} killed before 'churn'"
    )
    for column in ("phase", "op", "count", "success", "p50 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="right" if column != "phase" else "left")
    for row in result["stats"]:  # type: ignore[attr-defined]
        table.add_row(
            row["phase"],
            row["op"],
            str(row["count"]),
            f"{100 * row['success_rate']:.1f} %",
            f"{row['p50_ms']:.1f}",
            f"{row['p99_ms']:.1f}",
            f"{row['max_ms']:.1f}",
        )
    console.print(table)
    console.print(
        f"bootstrap of all nodes {result['bootstrap_all_s']} s, sweep "
        f"{result['sweep_s']} s ({result['contacts_evicted_by_sweep']} dead contacts "
        f"evicted), max RSS {result['max_rss_mib']} MiB "
        f"({result['rss_before_network_mib']} MiB before starting the nodes), "
        f"CPU share {result['cpu_share']}, load average {result['load_average']}"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--gets", type=int, default=1000, help="gets per steady phase")
    parser.add_argument("--churn-gets", type=int, default=300)
    parser.add_argument("--churn", type=float, default=0.25, help="share killed")
    parser.add_argument(
        "--churn-concurrency",
        type=int,
        default=1,
        help="operations in flight during the churn phase (others run one at a time; "
        "measurements before 2026-11 used 32, when each get waited for timeouts)",
    )
    parser.add_argument("--rpc-timeout", type=float, default=0.5)
    parser.add_argument(
        "--record-ttl",
        type=float,
        default=DEFAULT_RECORD_TTL,
        help="record lifetime (s); the background heartbeat runs every ttl/6 to "
        "ttl/3, so the default keeps it out of the run (the sweep phase stands for it)",
    )
    parser.add_argument("--stock-routing", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.nodes < 2 or not 0 <= args.churn < 1:
        parser.error("need --nodes ≥ 2 and 0 ≤ --churn < 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark, print a table and write the JSON."""
    args = parse_args(argv)
    # Dead contacts make rpcudp log an error per timeout; they are expected here.
    logging.getLogger("rpcudp").setLevel(logging.CRITICAL)
    logging.getLogger("kademlia").setLevel(logging.CRITICAL)
    console = Console()
    result = asyncio.run(benchmark(args, console))
    render(result, console)
    default_name = "dht_scale_stock.json" if args.stock_routing else "dht_scale.json"
    output = args.output or RESULTS / default_name
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {output}")


if __name__ == "__main__":
    main()
