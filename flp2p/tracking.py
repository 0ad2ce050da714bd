"""Experiment tracking: a finished run folder recorded in MLflow (``logger=mlflow``).

The run folder stays the source of truth — ``metrics.csv`` is appended round by
round, ``summary.json`` is written at the end, failed or not — so tracking reads
it once the run is over rather than hooking into the round loop: a tracking server
that is slow or down can then never slow or break a federation, and a sweep's runs
land in MLflow exactly as their folders say. Params are the composed config
flattened to dotted keys (``strategy.name``, ``train.lr`` …), metrics every numeric
column of ``metrics.csv`` with the round as step, artefacts the run folder's files.

MLflow's file store is in maintenance mode (MLflow 3 refuses it by default), so the
default backend is a local SQLite file; ``mlflow-skinny`` (the ``tracking`` extra)
is enough to record, the full ``mlflow`` package adds the UI.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flp2p.config import ConfigError

ARTIFACTS = ("metrics.csv", "summary.json", "accuracy.png", ".hydra/config.yaml")
"""Files of a run folder recorded as artefacts (those that exist)."""
LOGGERS = ("none", "mlflow")


@dataclass(frozen=True)
class TrackingSettings:
    """The ``logger`` config group."""

    name: str = "none"
    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_location: str | None = "mlartifacts"
    experiment: str = "flp2p"

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> TrackingSettings:
        """From the composed ``logger`` group; an absent group means no tracking."""
        if not spec:
            return cls()
        name = str(spec.get("name", "none"))
        if name not in LOGGERS:
            raise ConfigError(
                f"logger must be one of {', '.join(LOGGERS)}, not {name!r}"
            )
        location = spec.get("artifact_location", "mlartifacts")
        return cls(
            name=name,
            tracking_uri=str(spec.get("tracking_uri", cls.tracking_uri)),
            artifact_location=None if location is None else str(location),
            experiment=str(spec.get("experiment", cls.experiment)),
        )

    @property
    def enabled(self) -> bool:
        return self.name != "none"

    def check_available(self) -> None:
        """Fail before the run, with the fix, when the logger cannot be imported."""
        if self.name == "mlflow":
            try:
                import mlflow  # noqa: F401
            except ImportError:
                raise ConfigError(
                    "logger=mlflow needs MLflow: pip install -e '.[tracking]'"
                ) from None


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → ``{"a.b": "value"}`` (MLflow params are flat strings)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list) else str(value)
    return flat


def round_metrics(metrics_csv: Path) -> list[tuple[int, dict[str, float]]]:
    """Each row of ``metrics.csv`` as (round, its finite numeric values)."""
    if not metrics_csv.is_file():
        return []
    rows = []
    with metrics_csv.open(newline="") as handle:
        for row in csv.DictReader(handle):
            values: dict[str, float] = {}
            for key, text in row.items():
                if key == "round" or key is None:
                    continue
                try:
                    value = float(text)
                except (TypeError, ValueError):
                    continue
                if math.isfinite(value):
                    values[key] = value
            rows.append((int(row["round"]), values))
    return rows


def record_run(
    tracking: TrackingSettings,
    config: Mapping[str, Any],
    run_dir: Path,
    run_name: str | None = None,
) -> str | None:
    """Record the finished (or failed) run folder; return the MLflow run id."""
    if not tracking.enabled:
        return None
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking.tracking_uri)
    experiment = client.get_experiment_by_name(tracking.experiment)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else client.create_experiment(
            tracking.experiment, artifact_location=tracking.artifact_location
        )
    )
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    run = client.create_run(experiment_id, run_name=run_name or run_dir.name)
    run_id: str = run.info.run_id
    status = "FINISHED" if summary.get("status") == "completed" else "FAILED"
    try:
        params = flatten({k: v for k, v in config.items() if k != "hydra"})
        entities = [mlflow.entities.Param(k, v[:6000]) for k, v in params.items()]
        metrics = [
            mlflow.entities.Metric(name, value, 0, step)
            for step, values in round_metrics(run_dir / "metrics.csv")
            for name, value in values.items()
        ]
        # MLflow takes at most 100 params and 1,000 metrics per batch.
        for start in range(0, len(entities), 100):
            client.log_batch(run_id, params=entities[start : start + 100])
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start : start + 1000])
        client.set_tag(run_id, "flp2p.run_dir", str(run_dir.resolve()))
        for name in ARTIFACTS:
            path = run_dir / name
            if path.is_file():
                client.log_artifact(run_id, str(path))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, status)
    return run_id
