"""Hydra callback that combines a sweep's runs into one table."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from flp2p.reporting import SUMMARY_FILE

RESULTS_FILE = "results.csv"
SUMMARY_COLUMNS = (
    "strategy", "attack", "privacy", "dataset", "clients", "seed", "status",
    "rounds_completed", "final_accuracy", "best_accuracy", "epsilon",
    "epsilon_median", "seconds",
)  # fmt: skip
"""Columns of ``results.csv`` after job and overrides (ε empty without privacy)."""


def collect_sweep(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder with a ``summary.json``: its overrides and results."""
    rows = []
    for summary_path in sorted(sweep_dir.glob(f"*/{SUMMARY_FILE}")):
        job_dir = summary_path.parent
        summary = json.loads(summary_path.read_text())
        overrides_path = job_dir / ".hydra" / "overrides.yaml"
        overrides = (
            yaml.safe_load(overrides_path.read_text())
            if overrides_path.exists()
            else []
        )
        row = {"job": job_dir.name, "overrides": " ".join(overrides or [])}
        row.update({key: summary.get(key) for key in SUMMARY_COLUMNS})
        rows.append(row)
    return rows


def write_results(sweep_dir: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``results.csv`` into the sweep folder."""
    path = sweep_dir / RESULTS_FILE
    columns = ["job", "overrides", *SUMMARY_COLUMNS]
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


class SweepTable(Callback):
    """After a multirun, write ``results.csv`` and print it as a table."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect_sweep(sweep_dir)
        if not rows:
            return
        path = write_results(sweep_dir, rows)
        varying = varying_overrides([row["overrides"].split() for row in rows])
        table = Table(title=f"sweep results ({path})")
        private = any(row["epsilon"] is not None for row in rows)
        for column in ("job", *varying, "status", "final accuracy"):
            table.add_column(column)
        if private:
            table.add_column("ε")
        table.add_column("time")
        for row in rows:
            chosen = dict(o.split("=", 1) for o in row["overrides"].split() if "=" in o)
            accuracy, seconds = row["final_accuracy"], row["seconds"]
            epsilon = row["epsilon"]
            table.add_row(
                row["job"],
                *(chosen.get(key, "") for key in varying),
                str(row["status"]),
                "–" if accuracy is None else f"{accuracy:.2%}",
                *(
                    []
                    if not private
                    else ["–" if epsilon is None else f"{epsilon:.3g}"]
                ),
                "–" if seconds is None else f"{seconds:.0f} s",
            )
        Console(stderr=True).print(table)


def varying_overrides(jobs: list[list[str]]) -> list[str]:
    """Keys whose override value differs between jobs, in first-seen order."""
    values: dict[str, set[str]] = {}
    for overrides in jobs:
        for override in overrides:
            key, _, value = override.partition("=")
            values.setdefault(key, set()).add(value)
    return [key for key, seen in values.items() if len(seen) > 1 or len(jobs) == 1]
