"""How long one aggregation takes: our exact rules beside Flower's built-in strategies.

Every contender aggregates the same batch of ``n`` client updates of ``d`` float32
parameters: a plain numpy weighted mean (the baseline), each rule of
:mod:`strategies.aggregators` on the ``(n, d)`` matrix, and each Flower 1.41 strategy's
``aggregate_train`` on the same updates carried as reply :class:`flwr.app.Message`\\ s
(the path a real round takes, records and all). Three *floors* run beside them: the
bare kernels a strategy that computes pairwise distances and records what it
aggregated cannot skip (the float64 and float32 Gram matrices of the rows, the
SHA-256 of every row), so a strategy's ratio to Flower's FedAvg can be read against
the least it could be on this machine.

    .venv/bin/python benchmarks/aggregation_speed.py               # 50 × 1M, ~1-2 min
    .venv/bin/python benchmarks/aggregation_speed.py --large       # 100 × 11M, 25.6M
    .venv/bin/python benchmarks/aggregation_speed.py --only krum   # name filter

``--large`` measures strategies only (ours and Flower's, on reply messages), each in
a fresh subprocess so that its peak resident memory is its own: the child builds the
replies one client at a time (never the whole float32 matrix beside them), samples
its resident set every few milliseconds during the call, and reports the peak above
what it held just before (the replies, the reference). With ``--repeats`` above 1 the
time is the median of the calls after the first (which pays for lazy imports). Sizes
that would not fit in the memory available now are skipped (``MemAvailable``, with
the factor measured for the hungriest contender). Writes
``benchmarks/results/aggregation_large.json``.

Reports, per contender: median seconds over ``--repeats`` timed runs, two ratios —
to the numpy weighted mean (the baseline for a rule on a ready matrix) and to Flower's
``FedAvg.aggregate_train`` (the plain weighted mean as a strategy: the fair reference
for strategies, which decode every reply's records first) — and the peak of memory
*allocated during the call* as seen by :mod:`tracemalloc` (numpy reports its buffers to
it), measured in one extra untimed run so tracing does not distort the timings.
Writes ``benchmarks/results/aggregation_speed.csv`` and ``.json``.

To add a contender (e.g. our default pipeline strategy), append to the list returned
by :func:`default_contenders`, or pass extra ones to :func:`run_benchmark`:
:func:`strategy_contender` wraps any object with Flower's
``aggregate_train(server_round, replies)``.
"""

from __future__ import annotations

import argparse
import csv
import gc
import hashlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as flower
from flwr.supercore.task_identity import TaskIdentity
from rich.console import Console
from rich.table import Table

from strategies.aggregators import (
    Bulyan,
    CenteredClipping,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    Mean,
    MultiKrum,
    TrimmedMean,
)
from strategies.base import ScreenedFedAvg
from strategies.records import ARRAYS_KEY, METRICS_KEY, NUM_EXAMPLES_KEY
from strategies.trusted import TrustedFedAvg

RESULTS = Path(__file__).resolve().parent / "results"
MEMORY_FACTOR = 7.0
"""Peak resident bytes per byte of float32 input, estimated for the whole run.

Estimated for the tracemalloc mode: the input (×1), the reply messages (×1), Flower's
stacked float32 layers and temporaries (×~3) and our own blocks (a small fraction)
are alive at about the same time.
"""


@dataclass(frozen=True)
class Workload:
    """One batch of client updates, in every form a contender may want."""

    updates: np.ndarray
    """``(n, d)`` float32: a shared random model plus small per-client noise."""
    num_examples: np.ndarray
    """``(n,)`` int64 example counts, the FedAvg weights."""
    layer_sizes: tuple[int, ...]
    """How ``d`` is cut into named arrays in the reply messages (like model layers)."""

    @property
    def n(self) -> int:
        return int(self.updates.shape[0])

    @property
    def d(self) -> int:
        return int(self.updates.shape[1])


class TrainAggregator(Protocol):
    """Anything with Flower's Message-API ``aggregate_train``."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]: ...


@dataclass(frozen=True)
class Contender:
    """A named aggregation to time.

    ``prepare`` builds its (untimed) input from the workload; ``run`` is the timed
    call. Flower's FedMedian, FedTrimmedAvg and Bulyan pop the arrays out of the
    replies they aggregate, so their input must be rebuilt before every run.
    """

    name: str
    family: str
    prepare: Callable[[Workload], Any]
    run: Callable[[Any], object]


@dataclass(frozen=True)
class Measurement:
    """What one contender cost on one workload."""

    name: str
    family: str
    n: int
    d: int
    repeats: int
    median_s: float
    min_s: float
    ratio_to_mean: float
    peak_alloc_mib: float
    ratio_to_flower_fedavg: float | None = None


def make_workload(n: int, d: int, seed: int) -> Workload:
    """Synthetic batch: ``base + 0.01·noise`` per client, float32.

    Parameters
    ----------
    n, d : int
        Clients and parameters per client.
    seed : int
        Seed of :func:`numpy.random.default_rng`.
    """
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(d, dtype=np.float32)
    updates = rng.standard_normal((n, d), dtype=np.float32)
    updates *= np.float32(0.01)
    updates += base
    num_examples = rng.integers(50, 500, size=n)
    return Workload(updates, num_examples, split_into_layers(d))


def split_into_layers(d: int) -> tuple[int, ...]:
    """Cut ``d`` parameters into four layers of falling size (½, ¼, ⅛, rest)."""
    sizes = [d // 2, d // 4, d // 8]
    sizes.append(d - sum(sizes))
    return tuple(size for size in sizes if size > 0)


def build_replies(workload: Workload) -> list[Message]:
    """One training reply per client, as a ClientApp would send it."""
    TaskIdentity.run_id = 1
    TaskIdentity.task_id = 1
    TaskIdentity.node_id = 1
    bounds = np.cumsum((0, *workload.layer_sizes))
    replies = []
    for node_id, (row, examples) in enumerate(
        zip(workload.updates, workload.num_examples, strict=True), start=1
    ):
        arrays = ArrayRecord(
            {
                f"layer{k}": Array(row[bounds[k] : bounds[k + 1]])
                for k in range(len(workload.layer_sizes))
            }
        )
        content = RecordDict(
            {
                ARRAYS_KEY: arrays,
                METRICS_KEY: MetricRecord({NUM_EXAMPLES_KEY: int(examples)}),
            }
        )
        instruction = Message(RecordDict(), dst_node_id=node_id, message_type="train")
        replies.append(Message(content, reply_to=instruction))
    return replies


def strategy_contender(
    name: str, make_strategy: Callable[[], TrainAggregator], family: str = "flower"
) -> Contender:
    """Time ``make_strategy().aggregate_train(1, replies)`` on fresh replies.

    The strategy is built during ``prepare`` so its construction is not timed; the
    hook for "ours, default pipeline" (a strategy needing ``set_reference`` can do it
    inside ``make_strategy``).
    """

    def prepare(workload: Workload) -> tuple[TrainAggregator, list[Message]]:
        return make_strategy(), build_replies(workload)

    def run(prepared: tuple[TrainAggregator, list[Message]]) -> object:
        strategy, replies = prepared
        arrays, _ = strategy.aggregate_train(1, replies)
        if arrays is None:
            raise RuntimeError(f"{name} did not aggregate")
        return arrays

    return Contender(name, family, prepare, run)


def rule_contender(name: str, rule: Any, weighted: bool) -> Contender:
    """Time ``rule(updates[, num_examples])`` on the float32 matrix."""

    def prepare(workload: Workload) -> Workload:
        return workload

    def run(workload: Workload) -> object:
        if weighted:
            return rule(workload.updates, workload.num_examples)
        return rule(workload.updates)

    return Contender(name, "ours", prepare, run)


def plain_weighted_mean(workload: Workload) -> np.ndarray:
    """The baseline: one float32 BLAS matrix-vector product."""
    weights = workload.num_examples.astype(np.float32)
    return (weights / weights.sum()) @ workload.updates


def exact_gram(workload: Workload) -> np.ndarray:
    """A floor of any rule on pairwise distances: the ``(n, n)`` Gram matrix of the
    rows in float64 (the cast, then one BLAS ``syrk``), with no centring, no
    blocking and no reply decoding. The default pipeline's distances need at least
    this much arithmetic (:mod:`strategies.delta_matrix`)."""
    rows = workload.updates.astype(np.float64)
    return rows @ rows.T


def float32_gram(workload: Workload) -> np.ndarray:
    """The same Gram matrix in float32: the arithmetic floor of pairwise geometry on
    this machine, though not exact enough to decide near-ties the float64 way."""
    return workload.updates @ workload.updates.T


def reply_digests(workload: Workload) -> list[bytes]:
    """A floor of any strategy that records what it aggregated: the SHA-256 of every
    row's bytes (the ledger's update digests), on one thread."""
    return [hashlib.sha256(row.data).digest() for row in workload.updates]


def screened_contender(name: str, make_strategy: Callable[[], Any]) -> Contender:
    """Time one of our Message-API strategies (validation included) on fresh replies.

    The workload's rows are models; the strategy's reference (the global model the
    deltas are taken from) is all zeros in the same layers.
    """

    def make_with_reference(workload: Workload) -> TrainAggregator:
        strategy = make_strategy()
        strategy.set_reference(
            {
                f"layer{k}": np.zeros(size, dtype=np.float32)
                for k, size in enumerate(workload.layer_sizes)
            }
        )
        return cast(TrainAggregator, strategy)

    def prepare(workload: Workload) -> tuple[TrainAggregator, list[Message]]:
        return make_with_reference(workload), build_replies(workload)

    def run(prepared: tuple[TrainAggregator, list[Message]]) -> object:
        strategy, replies = prepared
        return strategy.aggregate_train(1, replies)

    return Contender(name, "ours", prepare, run)


def default_contenders(f: int, beta: float, tau: float) -> list[Contender]:
    """The baseline, our rules and Flower's built-ins, for ``f`` Byzantine clients."""
    keep = lambda workload: workload  # noqa: E731  # the matrix needs no preparation
    return [
        Contender("weighted mean (numpy)", "baseline", keep, plain_weighted_mean),
        Contender("Gram matrix, float64 (numpy)", "floor", keep, exact_gram),
        Contender("Gram matrix, float32 (numpy)", "floor", keep, float32_gram),
        Contender("SHA-256 of every row (hashlib)", "floor", keep, reply_digests),
        rule_contender("Mean", Mean(), weighted=True),
        rule_contender("CoordinateMedian", CoordinateMedian(), weighted=False),
        rule_contender(f"TrimmedMean(β={beta})", TrimmedMean(beta), weighted=False),
        rule_contender(f"Krum(f={f})", Krum(f), weighted=False),
        rule_contender(f"MultiKrum(f={f}, m=n-f)", _MultiKrumNMinusF(f), weighted=True),
        rule_contender(f"Bulyan(f={f})", Bulyan(f), weighted=False),
        rule_contender("GeometricMedian", GeometricMedian(), weighted=True),
        rule_contender(f"CenteredClipping(τ={tau})", CenteredClipping(tau), True),
        screened_contender("ScreenedFedAvg (strategy)", ScreenedFedAvg),
        screened_contender("TrustedFedAvg (default pipeline)", TrustedFedAvg),
        strategy_contender("FedAvg", lambda: flower.FedAvg()),
        strategy_contender("FedMedian", lambda: flower.FedMedian()),
        strategy_contender(
            f"FedTrimmedAvg(β={beta})", lambda: flower.FedTrimmedAvg(beta=beta)
        ),
        strategy_contender(f"Krum(f={f})", lambda: flower.Krum(num_malicious_nodes=f)),
        strategy_contender(
            f"MultiKrum(f={f}, m=n-f)", lambda: _FlowerMultiKrumNMinusF(f)
        ),
        strategy_contender(
            f"Bulyan(f={f})", lambda: flower.Bulyan(num_malicious_nodes=f)
        ),
    ]


class _MultiKrumNMinusF:
    """Our MultiKrum keeping ``m = n − f``, with ``n`` known only at call time."""

    def __init__(self, f: int) -> None:
        self.f = f

    def __call__(self, updates: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return MultiKrum(self.f, updates.shape[0] - self.f)(updates, weights)


class _FlowerMultiKrumNMinusF:
    """Flower's MultiKrum keeping ``m = n − f``, with ``n`` known only at call time."""

    def __init__(self, f: int) -> None:
        self.f = f

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        strategy = flower.MultiKrum(
            num_malicious_nodes=self.f, num_nodes_to_select=len(replies) - self.f
        )
        return strategy.aggregate_train(server_round, replies)


def time_contender(
    contender: Contender, workload: Workload, repeats: int
) -> tuple[list[float], float]:
    """Wall seconds of ``repeats`` runs, then the traced allocation peak in MiB."""
    seconds = []
    for _ in range(repeats):
        prepared = contender.prepare(workload)
        gc.collect()
        started = time.perf_counter()
        contender.run(prepared)
        seconds.append(time.perf_counter() - started)
        del prepared
    prepared = contender.prepare(workload)
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        contender.run(prepared)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return seconds, (peak - before) / 2**20


def run_benchmark(
    workload: Workload,
    contenders: Sequence[Contender],
    repeats: int,
    console: Console,
) -> list[Measurement]:
    """Time every contender; the first one is the reference of the ratio column."""
    rows: list[Measurement] = []
    reference: float | None = None
    for contender in contenders:
        console.log(
            f"{contender.family:>8} · {contender.name} ({workload.n}×{workload.d})"
        )
        seconds, peak = time_contender(contender, workload, repeats)
        median = statistics.median(seconds)
        reference = median if reference is None else reference
        rows.append(
            Measurement(
                name=contender.name,
                family=contender.family,
                n=workload.n,
                d=workload.d,
                repeats=repeats,
                median_s=median,
                min_s=min(seconds),
                ratio_to_mean=median / reference,
                peak_alloc_mib=peak,
            )
        )
    flower_fedavg = next(
        (r.median_s for r in rows if r.family == "flower" and r.name == "FedAvg"), None
    )
    if flower_fedavg is None:
        return rows
    return [
        replace(row, ratio_to_flower_fedavg=row.median_s / flower_fedavg)
        for row in rows
    ]


def available_memory_bytes() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo``, or ``None`` where there is none."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def fits_in_memory(n: int, d: int) -> tuple[bool, str]:
    """Whether an ``n × d`` run is likely to fit, with the numbers behind the call."""
    needed = MEMORY_FACTOR * n * d * 4
    available = available_memory_bytes()
    if available is None:
        return False, "cannot read available memory"
    verdict = needed < 0.8 * available
    return verdict, f"needs ~{needed / 2**30:.1f} GiB, {available / 2**30:.1f} GiB free"


def render(rows: Sequence[Measurement], console: Console) -> None:
    table = Table(title="Aggregation time per round (median of repeats)")
    headers = (
        "family",
        "contender",
        "n × d",
        "median s",
        "× mean",
        "× FedAvg",
        "peak MiB",
    )
    for header in headers:
        table.add_column(header, justify="left" if header == "contender" else "right")
    for row in rows:
        table.add_row(
            row.family,
            row.name,
            f"{row.n} × {row.d:,}",
            f"{row.median_s:.3f}",
            f"{row.ratio_to_mean:.1f}",
            "–"
            if row.ratio_to_flower_fedavg is None
            else f"{row.ratio_to_flower_fedavg:.2f}",
            f"{row.peak_alloc_mib:.0f}",
        )
    console.print(table)


def write_results(
    rows: Sequence[Measurement], settings: dict[str, Any], out: Path = RESULTS
) -> Path:
    """Write the CSV and the JSON (with machine details); return the CSV path."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "aggregation_speed.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(row) for row in rows)
    record = {
        "settings": settings,
        "memory_metric": "tracemalloc peak allocated during the call (MiB)",
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "numpy": np.__version__,
        },
        "rows": [asdict(row) for row in rows],
    }
    (out / "aggregation_speed.json").write_text(
        json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return csv_path


# ---------------------------------------------------------------- --large, isolated

LARGE_SIZES = ((100, 11_000_000), (100, 25_600_000))
"""ResNet-18 and ResNet-50 per client, 100 clients."""

LARGE_EXTRA_FACTOR = 1.5
"""Bytes a contender may need beyond the replies, per byte of replies (Flower's
FedMedian stacks every reply: ~1.2 measured), used to skip sizes that cannot fit."""


def large_strategies(f: int) -> dict[str, tuple[str, Callable[[], Any]]]:
    """Name → (family, factory) of the strategies ``--large`` times."""
    import strategies as ours

    return {
        "ScreenedFedAvg": ("ours", ScreenedFedAvg),
        "TrustedFedAvg (default pipeline)": ("ours", TrustedFedAvg),
        "DetectorsOnlyFedAvg": ("ours", ours.DetectorsOnlyFedAvg),
        "CentralDP(TrustedFedAvg)": (
            "ours",
            lambda: ours.CentralDP(TrustedFedAvg(), noise_multiplier=1.0, seed=0),
        ),
        "Median": ("ours", ours.Median),
        "TrimmedMean(β=0.2)": ("ours", lambda: ours.TrimmedMean(beta=0.2)),
        "GeometricMedian": ("ours", ours.GeometricMedian),
        "CenteredClipping": ("ours", lambda: ours.CenteredClipping(tau=1.0)),
        f"Krum(f={f})": ("ours", lambda: ours.Krum(num_malicious_nodes=f)),
        f"Bulyan(f={f})": ("ours", lambda: ours.Bulyan(num_malicious_nodes=f)),
        "FedAvg": ("flower", flower.FedAvg),
        "FedMedian": ("flower", flower.FedMedian),
        f"Krum(f={f}) ": ("flower", lambda: flower.Krum(num_malicious_nodes=f)),
    }


def replies_one_by_one(n: int, d: int, seed: int) -> list[Message]:
    """:func:`build_replies` of :func:`make_workload`'s kind of batch, one client at
    a time: only the replies (and one row) are ever alive."""
    TaskIdentity.run_id = 1
    TaskIdentity.task_id = 1
    TaskIdentity.node_id = 1
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(d, dtype=np.float32)
    bounds = np.cumsum((0, *split_into_layers(d)))
    replies = []
    for node_id in range(1, n + 1):
        row = rng.standard_normal(d, dtype=np.float32)
        row *= np.float32(0.01)
        row += base
        arrays = ArrayRecord(
            {
                f"layer{k}": Array(row[bounds[k] : bounds[k + 1]])
                for k in range(len(bounds) - 1)
            }
        )
        del row
        content = RecordDict(
            {
                ARRAYS_KEY: arrays,
                METRICS_KEY: MetricRecord(
                    {NUM_EXAMPLES_KEY: int(rng.integers(50, 500))}
                ),
            }
        )
        instruction = Message(RecordDict(), dst_node_id=node_id, message_type="train")
        replies.append(Message(content, reply_to=instruction))
    return replies


def resident_bytes() -> int:
    """This process's resident set now (``/proc/self/statm``)."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakSampler:
    """Largest resident set seen while the ``with`` block runs (sampled every 2 ms)."""

    def __init__(self) -> None:
        self.peak = resident_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, resident_bytes())

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())


def measure_isolated(name: str, n: int, d: int, f: int, repeats: int) -> dict[str, Any]:
    """In this (fresh) process: seconds and peak extra resident bytes of ``name``."""
    family, factory = large_strategies(f)[name]
    seconds: list[float] = []
    extra = 0
    for _ in range(repeats):
        replies = replies_one_by_one(n, d, seed=0)
        strategy = factory()
        if family == "ours":
            strategy.set_reference(
                {
                    f"layer{k}": np.zeros(size, dtype=np.float32)
                    for k, size in enumerate(split_into_layers(d))
                }
            )
        gc.collect()
        before = resident_bytes()
        with PeakSampler() as sampler:
            started = time.perf_counter()
            arrays, _ = strategy.aggregate_train(1, replies)
            seconds.append(time.perf_counter() - started)
        if arrays is None:
            raise RuntimeError(f"{name} did not aggregate")
        extra = max(extra, sampler.peak - before)
        del replies, strategy, arrays
        gc.collect()
    return {
        "name": name.strip(),
        "family": family,
        "n": n,
        "d": d,
        "repeats": repeats,
        "seconds": seconds,
        # The first call of a process pays for lazy imports and first-touch pages:
        # with repeats, the later calls are the round time of a running server.
        "median_s": statistics.median(seconds[1:] if len(seconds) > 1 else seconds),
        "peak_extra_bytes": extra,
        "replies_bytes": 4 * n * d,
        "extra_per_reply_byte": extra / (4 * n * d),
    }


def run_large(
    sizes: Sequence[tuple[int, int]],
    byzantine: int,
    repeats: int,
    only: str,
    console: Console,
    out: Path,
    before: Path | None = None,
) -> list[dict[str, Any]]:
    """Every ``--large`` contender in its own subprocess, at every size that fits.

    With ``before`` (a copy of older code, e.g. ``git archive REV | tar -x -C
    DIR``), each contender of ours is also run from there, right after the current
    code, so that both see the same load; rows then say which ``code`` ran.
    """
    rows: list[dict[str, Any]] = []
    codes: list[tuple[str, Path]] = [("after", Path(__file__).resolve().parents[1])]
    if before is not None:
        codes.append(("before", before.resolve()))
    for n, d in sizes:
        available = available_memory_bytes() or 0
        needed = (1 + LARGE_EXTRA_FACTOR) * 4 * n * d
        if needed > 0.8 * available:
            console.print(
                f"[yellow]skipping {n} × {d:,}: needs ~{needed / 2**30:.1f} GiB, "
                f"{available / 2**30:.1f} GiB available[/yellow]"
            )
            continue
        f = min(byzantine, (n - 3) // 4)
        for name in large_strategies(f):
            if not _wanted(name, only):
                continue
            for code, root in codes:
                if code == "before" and large_strategies(f)[name][0] != "ours":
                    continue  # Flower's strategies did not change
                console.log(f"{n} × {d:,}: {name} ({code})")
                row = _run_isolated(root, name, n, d, f, repeats, console)
                if row is not None:
                    if before is not None:
                        row["code"] = code
                    row["load_average"] = os.getloadavg()[0]
                    rows.append(row)
    write_large_results(rows, console, out)
    return rows


def _wanted(name: str, only: str) -> bool:
    """Whether ``--only`` (comma-separated substrings, ``=NAME`` for exactly that
    name) selects the strategy ``name``."""
    for part in only.split(","):
        part = part.strip().lower()
        if part.startswith("="):
            if name.strip().lower() == part[1:]:
                return True
        elif part in name.lower():
            return True
    return False


def _run_isolated(
    root: Path, name: str, n: int, d: int, f: int, repeats: int, console: Console
) -> dict[str, Any] | None:
    """One ``--isolated`` measurement by the code under ``root``, or ``None``."""
    command = [
        sys.executable,
        str(root / "benchmarks" / "aggregation_speed.py"),
        "--isolated",
        name,
        "--clients",
        str(n),
        "--params",
        str(d),
        "--byzantine",
        str(f),
        "--repeats",
        str(repeats),
    ]
    environment = os.environ | {"PYTHONPATH": str(root)}
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, env=environment, cwd=root
    )
    if done.returncode != 0:
        console.print(f"[red]{name} failed[/red]: {done.stderr[-400:]}")
        return None
    return cast(dict[str, Any], json.loads(done.stdout.strip().splitlines()[-1]))


def write_large_results(
    rows: list[dict[str, Any]], console: Console, out: Path = RESULTS
) -> None:
    """Add the ratio to Flower's FedAvg, print the table, write the JSON."""
    fedavg = {
        (row["n"], row["d"]): row["median_s"]
        for row in rows
        if row["family"] == "flower" and row["name"] == "FedAvg"
    }
    compared = any("code" in row for row in rows)
    for row in rows:
        reference = fedavg.get((row["n"], row["d"]))
        row["ratio_to_flower_fedavg"] = (
            None if reference is None else row["median_s"] / reference
        )
    table = Table(title="--large: one aggregate_train per fresh process")
    for header in (
        "family",
        "strategy",
        "n × d",
        "s",
        "× FedAvg",
        "extra GiB",
        "× replies",
        "load",
    ):
        table.add_column(header, justify="left" if header == "strategy" else "right")
    for row in rows:
        ratio = row["ratio_to_flower_fedavg"]
        table.add_row(
            row["family"],
            row["name"] + (f" ({row['code']})" if "code" in row else ""),
            f"{row['n']} × {row['d']:,}",
            f"{row['median_s']:.2f}",
            "–" if ratio is None else f"{ratio:.2f}",
            f"{row['peak_extra_bytes'] / 2**30:.2f}",
            f"{row['extra_per_reply_byte']:.2f}",
            f"{row.get('load_average', float('nan')):.1f}",
        )
    console.print(table)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "memory_metric": "peak resident bytes during the call above those before it "
        "(sampled every 2 ms), fresh process per contender",
        "load_average": "1-minute load average when the row was measured",
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "numpy": np.__version__,
        },
        "rows": rows,
    }
    name = (
        "aggregation_large_before_after.json" if compared else "aggregation_large.json"
    )
    (out / name).write_text(
        json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument(
        "--large",
        action="store_true",
        help="strategies at 100 × 11M and 100 × 25.6M, one subprocess each",
    )
    parser.add_argument(
        "--large-sizes",
        default="",
        help="N×D,N×D… in place of --large's sizes (e.g. 50x1000000)",
    )
    parser.add_argument("--isolated", default="", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--byzantine", type=int, default=10, help="f for Krum/Bulyan")
    parser.add_argument("--beta", type=float, default=0.2, help="trim fraction")
    parser.add_argument("--tau", type=float, default=1.0, help="clipping radius")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--only",
        default="",
        help="substring filter on names (--large: a,b,… any; =NAME: that name)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        help="--large: also run our strategies from this copy of older code",
    )
    args = parser.parse_args()

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    logging.getLogger("flwr").setLevel(logging.WARNING)
    console = Console(width=110)

    if args.isolated:
        measured = measure_isolated(
            args.isolated, args.clients, args.params, args.byzantine, args.repeats
        )
        print(json.dumps(measured))
        return
    if args.large or args.large_sizes:
        sizes_large = (
            [
                (int(n), int(d))
                for n, d in (
                    size.lower().split("x") for size in args.large_sizes.split(",")
                )
            ]
            if args.large_sizes
            else list(LARGE_SIZES)
        )
        run_large(
            sizes_large,
            args.byzantine,
            args.repeats,
            args.only,
            console,
            args.out,
            args.before,
        )
        return

    sizes = [(args.clients, args.params)]
    rows: list[Measurement] = []
    for n, d in sizes:
        fits, detail = fits_in_memory(n, d)
        if not fits:
            console.print(f"[yellow]skipping {n} × {d:,}: {detail}[/yellow]")
            continue
        f = min(args.byzantine, (n - 3) // 4)  # Bulyan needs n ≥ 4f + 3
        contenders = [
            contender
            for contender in default_contenders(f, args.beta, args.tau)
            if contender.family in ("baseline", "floor")
            or args.only.lower() in contender.name.lower()
        ]
        console.log(f"{n} × {d:,} float32, f = {f}: {detail}")
        workload = make_workload(n, d, args.seed)
        rows.extend(run_benchmark(workload, contenders, args.repeats, console))
        del workload
        gc.collect()
    if not rows:
        console.print("[red]nothing was measured[/red]")
        return
    render(rows, console)
    settings = {k: v for k, v in vars(args).items() if k != "out"} | {"sizes": sizes}
    console.print(f"wrote {write_results(rows, settings, args.out)} and .json")


if __name__ == "__main__":
    main()
