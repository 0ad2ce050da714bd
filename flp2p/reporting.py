"""What a run shows and leaves behind: one console line per round, a closing table,
``metrics.csv``, ``summary.json`` and ``accuracy.png``.

Rows are appended and flushed as each round finishes, so a crash loses at most the
round in flight; ``summary.json`` is written atomically (temp file + rename) at the end,
with ``status: failed`` and the error when the run dies.

Each round's line carries the ledger's verdicts for that round (accepted,
down-weighted, rejected and the commonest reason for a rejection) and, with a privacy
mode on, ε: for ``privacy=dpsgd`` the maximum and median over the clients' replies
(each reply reports its client's cumulative ``dp-epsilon``; see
:mod:`flp2p.reply_tap`), for ``privacy=central`` the aggregate's.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from flp2p.ledger import Ledger
from flp2p.ledger.reports import leaderboard

METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "accuracy.png"
CLOCK_FILE = "clock.json"
"""The run's clock as of the last finished round (``round``, ``seconds``, ``wall``:
Unix time), written when the round's model exists, before its evaluation, so a peer
successor resuming from that round continues ``seconds`` (:attr:`RunReporter.clock`).
"""
METRICS_COLUMNS = ("round", "accuracy", "loss", "seconds")
PRIVACY_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "dpsgd": ("epsilon", "epsilon_median", "delta"),
    "central": ("epsilon", "delta", "clip_norm"),
}
"""Columns ``metrics.csv`` adds after :data:`METRICS_COLUMNS` per privacy mode
(central ``clip_norm``: the one the next round clips to, which adaptive clipping moves).
"""
CLIENT_EPSILON_KEY = "dp-epsilon"
CLIENT_DELTA_KEY = "dp-delta"
TOP_PEERS = 5
"""Peers shown in the closing table."""


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON so that readers never see a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


@dataclass(frozen=True)
class VerdictCounts:
    """How many replies of a round (or a run) got each verdict."""

    accepted: int = 0
    downweighted: int = 0
    rejected: int = 0
    top_reason: str | None = None
    """Commonest reason among the rejected replies (``None`` when none was)."""
    kept_at_weight_0: int = 0
    """Accepted or down-weighted replies that got no weight all the same (the
    default strategy's robust stage left them out; their verdict is the
    detectors')."""

    @classmethod
    def of(cls, judged: Iterable[tuple[str, str, float]]) -> VerdictCounts:
        """Count ``(verdict, reason, weight)`` rows (values of the ledger)."""
        verdicts: Counter[str] = Counter()
        reasons: Counter[str] = Counter()
        kept_at_weight_0 = 0
        for verdict, reason, weight in judged:
            verdicts[verdict] += 1
            if verdict == "rejected":
                reasons[reason or "no reason given"] += 1
            elif verdict in ("accepted", "downweighted") and weight == 0.0:
                kept_at_weight_0 += 1
        return cls(
            accepted=verdicts["accepted"],
            downweighted=verdicts["downweighted"],
            rejected=verdicts["rejected"],
            top_reason=reasons.most_common(1)[0][0] if reasons else None,
            kept_at_weight_0=kept_at_weight_0,
        )

    def __add__(self, other: VerdictCounts) -> VerdictCounts:
        """Totals (the top reason is per round only, so a sum has none)."""
        return VerdictCounts(
            self.accepted + other.accepted,
            self.downweighted + other.downweighted,
            self.rejected + other.rejected,
            kept_at_weight_0=self.kept_at_weight_0 + other.kept_at_weight_0,
        )

    def text(self) -> str:
        """``accepted 3  down-weighted 0  rejected 1 (norm outlier)``, then
        ``  kept at weight 0: 2`` when kept replies got no weight."""
        line = (
            f"accepted {self.accepted}  down-weighted {self.downweighted}  "
            f"rejected {self.rejected}"
        )
        line += f" ({self.top_reason})" if self.top_reason else ""
        if self.kept_at_weight_0:
            line += f"  kept at weight 0: {self.kept_at_weight_0}"
        return line


def round_verdicts(ledger: Ledger, server_round: int) -> VerdictCounts | None:
    """Verdicts of ``server_round`` from the ledger's last block, if it records it.

    The strategy records a round before the server evaluates its model, so when
    :meth:`RunReporter.round_done` runs, the round's block is the last one.
    """
    block = ledger.latest_block()
    if block is None or block.server_round != server_round:
        return None
    return block_verdicts(block.contributions)


def block_verdicts(contributions: Iterable[Mapping[str, Any]]) -> VerdictCounts:
    """The verdict counts of a block's contribution rows (ledger values)."""
    return VerdictCounts.of(
        (str(row["verdict"]), str(row["reason"]), float(row["weight"] or 0.0))
        for row in contributions
    )


def client_privacy(metrics: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Maximum and median client ε, and δ, over replies reporting ``dp-epsilon``.

    The maximum is the guarantee every client's data enjoys; the median is what a
    typical client spent (clients with more local steps spend more).
    """
    epsilons = [m[CLIENT_EPSILON_KEY] for m in metrics if CLIENT_EPSILON_KEY in m]
    if not epsilons:
        return {}
    deltas = {m[CLIENT_DELTA_KEY] for m in metrics if CLIENT_DELTA_KEY in m}
    values = {
        "epsilon": max(epsilons),
        "epsilon_median": float(statistics.median(epsilons)),
    }
    if deltas:
        values["delta"] = max(deltas)
    return values


@dataclass(frozen=True)
class RoundFacts:
    """What a round's row needs besides its evaluation, taken when its model exists.

    Evaluation may finish while the next round trains (a peer aggregator); by then
    the strategy's ε and the ledger's last block belong to the next round, so the
    row's other values are read at the end of the round
    (:meth:`RunReporter.close_round`).
    """

    server_round: int
    seconds: float
    """Wall time since the run started, when the round's model existed."""
    values: Mapping[str, float] = field(default_factory=dict)
    """Privacy values of the round (central ε, the clients' ε)."""
    verdicts: VerdictCounts | None = None


@dataclass
class RoundRow:
    """One line of ``metrics.csv``: central test metrics after a round."""

    round: int
    accuracy: float
    loss: float
    seconds: float
    """Wall time since the run started."""


@dataclass
class RunReporter:
    """Records, shows and plots a run's progress.

    Use as a context manager around the run; call :meth:`round_done` after each
    central evaluation (round 0 is the initial model).
    """

    output_dir: Path
    rounds: int
    title: str = "flp2p"
    show_progress: bool = True
    plot: bool = True
    console: Console = field(default_factory=lambda: Console(stderr=True))
    rows: list[RoundRow] = field(default_factory=list)
    extra_summary: dict[str, Any] = field(default_factory=dict)
    live_values: Callable[[], Mapping[str, float]] | None = None
    """Read after each round, shown on its line and kept in the summary (central ε)."""
    privacy_columns: tuple[str, ...] = ()
    """Privacy values ``metrics.csv`` records per round (:data:`PRIVACY_COLUMNS`)."""
    ledger: Ledger | None = None
    """The run's ledger: each round's verdicts, and the closing leaderboard."""
    verdict_totals: VerdictCounts = field(default_factory=VerdictCounts)
    resume_round: int = 0
    """Rounds before this one are kept from the ``metrics.csv`` already in the folder
    (a peer aggregator continuing a federation after a failover), and their verdicts
    counted from the ledger; ``seconds`` goes on from the last kept row, or from
    the predecessor's :data:`CLOCK_FILE` plus the wall time since, whichever is
    later. 0: a new file."""
    clock: bool = False
    """Write :data:`CLOCK_FILE` as each round closes (a peer aggregator, whose
    successor continues its ``seconds``)."""

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._start = time.perf_counter()
        self._progress: Progress | None = None
        self._task: Any = None
        self._client_privacy: dict[int, dict[str, float]] = {}
        header = (*METRICS_COLUMNS, *self.privacy_columns)
        kept = kept_metrics(self.output_dir / METRICS_FILE, self.resume_round)
        with (self.output_dir / METRICS_FILE).open("w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(header)
            writer.writerows([line.get(c, "") for c in header] for line in kept)
        self.rows = [
            RoundRow(
                int(line["round"]),
                float(line["accuracy"]),
                float(line["loss"]),
                float(line["seconds"]),
            )
            for line in kept
        ]
        self._seconds_before = self.rows[-1].seconds if self.rows else 0.0
        if self.resume_round > 0:
            self._seconds_before = max(
                self._seconds_before, clock_seconds(self.output_dir / CLOCK_FILE)
            )
        if self.ledger is not None and self.resume_round > 0:
            for block in self.ledger.blocks():
                if 0 < block.server_round < self.resume_round:
                    self.verdict_totals += block_verdicts(block.contributions)

    def __enter__(self) -> RunReporter:
        self._start = time.perf_counter()
        if self.show_progress:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("rounds"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                self.title, total=self.rounds, status=""
            )
        return self

    @property
    def elapsed(self) -> float:
        """Seconds since the run started (after the kept rows' last, when resumed)."""
        return self._seconds_before + time.perf_counter() - self._start

    def train_replies(
        self, server_round: int, metrics: Sequence[Mapping[str, float]]
    ) -> None:
        """Take in one round's training-reply metrics (a :class:`ReplyTap` observer)."""
        values = client_privacy(metrics)
        if values:
            self._client_privacy[server_round] = values

    def close_round(self, server_round: int) -> RoundFacts:
        """Take round ``server_round``'s time, privacy values and verdicts now (its
        model just came out of aggregation), for a :meth:`round_done` that may come
        later, from another thread; with :attr:`clock`, write :data:`CLOCK_FILE`."""
        seconds = round(self.elapsed, 3)
        values: dict[str, float] = {}
        if self.live_values is not None:
            values.update(self.live_values())
        values.update(self._client_privacy.pop(server_round, {}))
        verdicts = None
        if self.ledger is not None and server_round > 0:
            verdicts = round_verdicts(self.ledger, server_round)
        if self.clock:
            write_json_atomic(
                self.output_dir / CLOCK_FILE,
                {"round": server_round, "seconds": seconds, "wall": time.time()},
            )
        return RoundFacts(server_round, seconds, values, verdicts)

    def round_done(
        self,
        server_round: int,
        accuracy: float,
        loss: float,
        facts: RoundFacts | None = None,
    ) -> None:
        """Append one round's central metrics to the CSV and the display (``facts``:
        what :meth:`close_round` took when the round ended; now, without them)."""
        if facts is None:
            facts = self.close_round(server_round)
        row = RoundRow(server_round, accuracy, loss, facts.seconds)
        self.rows.append(row)
        values = dict(facts.values)
        self.extra_summary.update(values)
        verdicts = facts.verdicts
        if verdicts is not None:
            self.verdict_totals += verdicts
        with (self.output_dir / METRICS_FILE).open("a", newline="") as stream:
            csv.writer(stream).writerow(
                [row.round, f"{row.accuracy:.6f}", f"{row.loss:.6f}", row.seconds]
                + [_csv_value(values.get(column)) for column in self.privacy_columns]
            )
        line = (
            f"round {server_round:>3}/{self.rounds}  accuracy {accuracy:6.2%}  "
            f"loss {loss:.4f}  ({row.seconds:.1f} s)"
        )
        if verdicts is not None:
            line += f"  {escape(verdicts.text())}"
        line += _epsilon_text(values)
        if self._progress is not None:
            self._progress.console.print(line, soft_wrap=True)
            self._progress.update(
                self._task,
                completed=server_round,
                status=f"acc {accuracy:.2%}",
            )

    def summary(self, status: str, error: str | None = None) -> dict[str, Any]:
        """The content of ``summary.json``."""
        final = self.rows[-1] if self.rows else None
        best = max(self.rows, key=lambda r: r.accuracy) if self.rows else None
        payload: dict[str, Any] = {
            "status": status,
            "rounds_completed": final.round if final else 0,
            "rounds": self.rounds,
            "final_accuracy": final.accuracy if final else None,
            "final_loss": final.loss if final else None,
            "best_accuracy": best.accuracy if best else None,
            "seconds": round(self.elapsed, 3),
            **self.extra_summary,
        }
        if self.ledger is not None:
            totals = self.verdict_totals
            payload["verdicts"] = {
                "accepted": totals.accepted,
                "downweighted": totals.downweighted,
                "rejected": totals.rejected,
            }
            payload["kept_at_weight_0"] = totals.kept_at_weight_0
        if error is not None:
            payload["error"] = error
        return payload

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
            if exc is None:
                self.console.print(self.closing_report())
                commands = self.further_commands()
                if commands:
                    self.console.print("look further:")
                for command in commands:
                    # Unwrapped and unstyled, so it copies and pastes as one line.
                    self.console.print(f"  {command}", soft_wrap=True, markup=False)
        status = "completed" if exc is None else "failed"
        error = None if exc is None else f"{type(exc).__name__}: {exc}"
        if self.plot and self.rows:
            plot_accuracy(self.rows, self.output_dir / PLOT_FILE, self.title)
        # Last: whoever sees the summary sees the finished folder.
        write_json_atomic(self.output_dir / SUMMARY_FILE, self.summary(status, error))

    def closing_report(self) -> Group:
        """The short table printed at the end, and where to look further."""
        summary = self.summary("completed")
        table = Table(title=escape(self.title), show_header=False)
        table.add_column("", style="bold")
        table.add_column("")
        final, best = summary["final_accuracy"], summary["best_accuracy"]
        table.add_row(
            "final accuracy",
            "-" if final is None else f"{final:.2%} (best {best:.2%})",
        )
        table.add_row("rounds", f"{summary['rounds_completed']}/{self.rounds}")
        if "epsilon" in summary:
            text = f"{summary['epsilon']:.3g}"
            if "epsilon_median" in summary:
                text += f" (clients' max; median {summary['epsilon_median']:.3g})"
            if "delta" in summary:
                text += f" at δ = {summary['delta']:.0e}"
            table.add_row("ε", text)
        parts: list[Any] = [table]
        if self.ledger is not None:
            table.add_row("verdicts", escape(self.verdict_totals.text()))
            parts.append(self._top_peers())
        return Group(*parts)

    def further_commands(self) -> list[str]:
        """The commands that show more of this run's ledger (none without one)."""
        if self.ledger is None:
            return []
        db = self._shown_path(self.ledger.path)
        run = self._shown_path(self.output_dir)
        return [
            f"flp2p leaderboard --db {db}",
            f"flp2p dashboard --db {db} --run {run}",
        ]

    def _top_peers(self) -> Table:
        assert self.ledger is not None
        table = Table(title=f"top {TOP_PEERS} peers by tokens")
        table.add_column("rank", justify="right")
        table.add_column("peer")
        table.add_column("tier")
        for numeric in ("reputation", "tokens", "accepted/rejected"):
            table.add_column(numeric, justify="right")
        for entry in leaderboard(self.ledger)[:TOP_PEERS]:
            table.add_row(
                str(entry.rank),
                escape(entry.identity[:12]),
                entry.tier,
                "-" if entry.reputation is None else f"{entry.reputation:.3f}",
                f"{entry.tokens:.2f}",
                f"{entry.accepted}/{entry.rejected}",
            )
        return table

    def _shown_path(self, path: Path) -> str:
        """``path`` relative to the working directory when it lies under it."""
        try:
            return str(path.resolve().relative_to(Path.cwd()))
        except ValueError:
            return str(path)


def kept_metrics(path: Path, before_round: int) -> list[dict[str, str]]:
    """Lines of an existing ``metrics.csv`` for rounds before ``before_round``
    (none when there is no such file or ``before_round`` is 0).

    A line that does not parse ends what is kept: a resumed run never continues
    from a row it cannot read.
    """
    if before_round <= 0 or not path.exists():
        return []
    kept: list[dict[str, str]] = []
    with path.open(newline="") as stream:
        for line in csv.DictReader(stream):
            try:
                server_round = int(line["round"])
                float(line["accuracy"]), float(line["loss"]), float(line["seconds"])
            except (KeyError, TypeError, ValueError):
                break
            if server_round >= before_round:
                break
            kept.append(line)
    return kept


def clock_seconds(path: Path) -> float:
    """Seconds a predecessor's :data:`CLOCK_FILE` says its run had lasted, plus the
    wall time since it was written (0 without a readable one).

    The wall time spans the failover, so ``seconds`` stays the run's; a clock that
    reads behind the predecessor's host adds nothing rather than going back.
    """
    try:
        clock = json.loads(path.read_text())
        seconds, wall = float(clock["seconds"]), float(clock["wall"])
    except (OSError, ValueError, TypeError, KeyError):
        return 0.0
    return round(seconds + max(0.0, time.time() - wall), 3)


def _csv_value(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _epsilon_text(values: Mapping[str, float]) -> str:
    if "epsilon" not in values:
        return ""
    text = f"  ε {values['epsilon']:.3g}"
    if "epsilon_median" in values:
        text += f" (median {values['epsilon_median']:.3g})"
    return text


def plot_accuracy(rows: list[RoundRow], path: Path, title: str) -> None:
    """Test accuracy against round, with wall time on a secondary axis label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot([r.round for r in rows], [100 * r.accuracy for r in rows], marker="o", ms=3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{title} — {rows[-1].seconds:.0f} s wall time")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
