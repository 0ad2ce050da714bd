"""``logger=mlflow``: a sweep's runs land in MLflow with params, metrics, artefacts."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from flp2p.config import ConfigError
from flp2p.tracking import TrackingSettings, flatten, round_metrics

mlflow = pytest.importorskip("mlflow")


def test_a_sweep_is_recorded_run_by_run(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    result = subprocess.run(
        [
            sys.executable, "-m", "flp2p.simulate", "-m",
            "strategy=fedavg,trusted", "logger=mlflow", "logger.experiment=sweep",
            "dataset=digits", "rounds=2", "clients=3",
            "simulation.backend=in_process", "output.progress=false",
            "output.plot=false", f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sweep")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.params["strategy.name"] for r in runs) == ["fedavg", "trusted"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.params["rounds"] == "2"
        run_dir = Path(run.data.tags["flp2p.run_dir"])
        with (run_dir / "metrics.csv").open() as stream:
            last = list(csv.DictReader(stream))[-1]
        # Every round is a step; the last value is the folder's last row.
        history = client.get_metric_history(run.info.run_id, "accuracy")
        assert [m.step for m in history] == [0, 1, 2]
        assert history[-1].value == pytest.approx(float(last["accuracy"]))
        artefacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"metrics.csv", "summary.json"} <= artefacts


def test_flatten_and_metrics_rows(tmp_path: Path) -> None:
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {
        "a.b": "1",
        "a.c": "[1, 2]",
        "d": "None",
    }
    path = tmp_path / "metrics.csv"
    path.write_text("round,accuracy,epsilon,note\n0,0.1,,x\n1,0.5,nan,y\n")
    assert round_metrics(path) == [(0, {"accuracy": 0.1}), (1, {"accuracy": 0.5})]
    assert round_metrics(tmp_path / "missing.csv") == []


def test_an_unknown_logger_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError, match="none, mlflow"):
        TrackingSettings.from_spec({"name": "wandb"})
    assert not TrackingSettings.from_spec(None).enabled
