"""What a run leaves behind: ``metrics.csv``, ``summary.json`` and ``accuracy.png``.

Rows are appended and flushed as each round finishes, so a crash loses at most the
round in flight; ``summary.json`` is written atomically (temp file + rename) at the end,
with ``status: failed`` and the error when the run dies.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "accuracy.png"
METRICS_COLUMNS = ("round", "accuracy", "loss", "seconds")


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON so that readers never see a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


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
    """Read after each round, shown on its line and kept in the summary (e.g. ε)."""

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._start = time.perf_counter()
        self._progress: Progress | None = None
        self._task: Any = None
        with (self.output_dir / METRICS_FILE).open("w", newline="") as stream:
            csv.writer(stream).writerow(METRICS_COLUMNS)

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
        """Seconds since the run started."""
        return time.perf_counter() - self._start

    def round_done(self, server_round: int, accuracy: float, loss: float) -> None:
        """Append one round's central metrics to the CSV and the display."""
        row = RoundRow(server_round, accuracy, loss, round(self.elapsed, 3))
        self.rows.append(row)
        with (self.output_dir / METRICS_FILE).open("a", newline="") as stream:
            csv.writer(stream).writerow(
                [row.round, f"{row.accuracy:.6f}", f"{row.loss:.6f}", row.seconds]
            )
        line = (
            f"round {server_round:>3}/{self.rounds}  accuracy {accuracy:6.2%}  "
            f"loss {loss:.4f}  ({row.seconds:.1f} s)"
        )
        if self.live_values is not None:
            values = dict(self.live_values())
            self.extra_summary.update(values)
            line += "".join(f"  {name} {value:.4g}" for name, value in values.items())
        if self._progress is not None:
            self._progress.console.print(line)
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
        status = "completed" if exc is None else "failed"
        error = None if exc is None else f"{type(exc).__name__}: {exc}"
        write_json_atomic(self.output_dir / SUMMARY_FILE, self.summary(status, error))
        if self.plot and self.rows:
            plot_accuracy(self.rows, self.output_dir / PLOT_FILE, self.title)


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
