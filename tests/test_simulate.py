"""End to end on Flower's simulation engine (Ray), on the tiny digits set."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from flp2p.config import RunSettings, compose
from flp2p.ledger import Ledger
from flp2p.reporting import METRICS_COLUMNS
from flp2p.simulate import simulate


def read_metrics(path: Path) -> list[dict[str, str]]:
    with path.open() as stream:
        return list(csv.DictReader(stream))


def test_two_round_federation_trains_and_writes_results(tmp_path: Path) -> None:
    settings = RunSettings.from_config(
        compose(
            [
                "dataset=digits",
                "rounds=2",
                "clients=4",
                "strategy=screened_fedavg",
                "output.progress=false",
            ]
        )
    )
    run_dir = tmp_path / "new" / "run"  # the run creates its folder
    summary = simulate(settings, run_dir)

    rows = read_metrics(run_dir / "metrics.csv")
    assert tuple(rows[0]) == METRICS_COLUMNS
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    accuracy = [float(r["accuracy"]) for r in rows]
    assert accuracy[-1] > accuracy[0] + 0.15, accuracy  # it learned
    seconds = [float(r["seconds"]) for r in rows]
    assert seconds == sorted(seconds)

    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["status"] == "completed"
    assert on_disk["rounds_completed"] == 2
    assert on_disk["final_accuracy"] == summary["final_accuracy"]
    assert on_disk["final_accuracy"] == pytest.approx(accuracy[-1], abs=1e-6)
    assert (run_dir / "accuracy.png").read_bytes()[:4] == b"\x89PNG"

    # The signed ledger: genesis + 2 rounds at the aggregator; every client holds a
    # verified copy of what was handed out with round 2's instruction.
    with Ledger.open(run_dir / "ledger.db") as ledger:
        assert ledger.verify() == 3
        chain = [block.block_hash for block in ledger.blocks()]
    replicas = sorted((run_dir / "replicas").glob("*.db"))
    assert len(replicas) == 4
    for path in replicas:
        with Ledger.open(path) as replica:
            assert [block.block_hash for block in replica.blocks()] == chain[:2]


def test_sweep_writes_one_combined_table(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flp2p.simulate",
            "-m",
            "strategy=fedavg,fedmedian",
            "dataset=digits",
            "rounds=1",
            "clients=2",
            "output.progress=false",
            "output.plot=false",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with (sweep_dir / "results.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert sorted(r["strategy"] for r in rows) == ["fedavg", "fedmedian"]
    assert all(r["status"] == "completed" for r in rows)
    for row in rows:
        metrics = read_metrics(sweep_dir / row["job"] / "metrics.csv")
        assert float(row["final_accuracy"]) == pytest.approx(
            float(metrics[-1]["accuracy"]), abs=1e-6
        )


def test_a_rerun_starts_without_the_interrupted_attempts_ledger(tmp_path: Path) -> None:
    from flp2p.simulate import discard_unfinished_run

    for status, kept in (("failed", False), ("completed", True)):
        run_dir = tmp_path / status
        (run_dir / "replicas").mkdir(parents=True)
        (run_dir / "replicas" / "client-0.db").write_bytes(b"replica")
        (run_dir / "ledger.db").write_bytes(b"stale chain")
        (run_dir / "summary.json").write_text(json.dumps({"status": status}))
        discard_unfinished_run(run_dir)
        assert (run_dir / "ledger.db").exists() is kept
        assert (run_dir / "replicas").exists() is kept
        assert (run_dir / "summary.json").exists()
