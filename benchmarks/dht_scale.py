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
3. ``swept``: every survivor runs one heartbeat (ping sweep + republish), then the
   same measurements again.

    .venv/bin/python -m benchmarks.dht_scale                   # 200 nodes, ~1 min
    .venv/bin/python -m benchmarks.dht_scale --stock-routing   # kademlia's router
    .venv/bin/python -m benchmarks.dht_scale --nodes 1000

Writes ``benchmarks/results/dht_scale.json`` (or ``--output``).
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
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from kademlia.routing import RoutingTable
from rich.console import Console
from rich.table import Table

from flp2p.dht import AddressBook, NodeRecord
from flp2p.identity import Identity

RESULTS = Path(__file__).resolve().parent / "results"


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
    count: int, rpc_timeout: float, stock_routing: bool, rng: random.Random
) -> list[AddressBook]:
    """Start ``count`` nodes; each joins through a random node already up."""
    books: list[AddressBook] = []
    for _ in range(count):
        book = AddressBook(Identity.generate(), rpc_timeout=rpc_timeout)
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
    operations = [
        partial(get, rng.choice(readers), rng.choice(targets)) for _ in range(count)
    ]
    return summarise(phase, "get", await run_all(operations, concurrency))


async def benchmark(args: argparse.Namespace, progress: Console) -> dict[str, object]:
    """Run the three phases; return everything measured."""
    rng = random.Random(args.seed)
    rss_before_mib = max_rss_mib()
    started = time.perf_counter()
    cpu_before = cpu_seconds()
    books = await start_network(args.nodes, args.rpc_timeout, args.stock_routing, rng)
    bootstrap_s = time.perf_counter() - started
    progress.log(f"{len(books)} nodes up in {bootstrap_s:.1f} s")
    stats = [await puts("steady", books)]
    stats.append(await gets("steady", books, books, args.gets, rng))
    progress.log("steady phase done")

    victims = set(rng.sample(range(len(books)), int(len(books) * args.churn)))
    for index in victims:
        await books[index].stop()
    survivors = [b for i, b in enumerate(books) if i not in victims]
    parallel = args.churn_concurrency
    stats.append(
        await gets("churn", survivors, survivors, args.churn_gets, rng, parallel)
    )
    stats.append(await puts("churn", survivors, parallel))
    progress.log(f"churn phase done ({len(victims)} nodes killed)")

    sweep_started = time.perf_counter()
    evicted = sum(
        await asyncio.gather(*(b.server.protocol.sweep_contacts() for b in survivors))
    )
    sweep_s = time.perf_counter() - sweep_started
    progress.log(f"sweep done in {sweep_s:.1f} s, {evicted} contacts evicted")
    stats.append(await gets("swept", survivors, survivors, args.gets, rng))
    stats.append(await puts("swept", survivors))

    for book in survivors:
        await book.stop()
    return {
        "nodes": args.nodes,
        "killed": len(victims),
        "routing": "stock" if args.stock_routing else "xor-exact",
        "rpc_timeout_s": args.rpc_timeout,
        "seed": args.seed,
        "churn_concurrency": args.churn_concurrency,
        "bootstrap_all_s": round(bootstrap_s, 3),
        "sweep_s": round(sweep_s, 3),
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
        default=32,
        help="operations in flight during the churn phase (others run one at a time)",
    )
    parser.add_argument("--rpc-timeout", type=float, default=0.5)
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
