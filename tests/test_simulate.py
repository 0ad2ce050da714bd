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
            # The table is what is tested; Ray's own start-up per job is covered by
            # the README's multirun command (tests/test_readme_commands.py).
            "simulation.backend=in_process",
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


def test_settings_fingerprint_names_what_changes_a_result() -> None:
    base = ["dataset=digits", "rounds=2", "clients=4", "strategy=trusted"]

    def fingerprint(extra: list[str]) -> str:
        return RunSettings.from_config(compose([*base, *extra])).fingerprint

    same = fingerprint([])
    assert fingerprint([]) == same
    # How a run is executed or shown does not change what it computes ...
    assert fingerprint(["simulation.num_cpus=1", "output.plot=false"]) == same
    # ... every setting of the federation does.
    for changed in (["rounds=3"], ["seed=1"], ["attack=alie"], ["train.lr=0.1"]):
        assert fingerprint(changed) != same, changed


def test_resume_skips_only_a_finished_run_of_the_same_settings(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"

    def run(*overrides: str) -> str:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "flp2p.simulate",
                "dataset=digits",
                "clients=2",
                "strategy=fedavg",
                "simulation.backend=in_process",
                "resume=true",
                "output.progress=false",
                "output.plot=false",
                f"hydra.run.dir={run_dir}",
                *overrides,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stderr

    def summary() -> dict[str, object]:
        loaded: dict[str, object] = json.loads((run_dir / "summary.json").read_text())
        return loaded

    run("rounds=1")
    first = summary()
    assert first["rounds_completed"] == 1 and first["settings_sha256"]
    assert "already completed; skipped" in run("rounds=1", "simulation.num_cpus=1")
    assert summary() == first
    # Another number of rounds in the same folder is another run, not a result.
    assert "holds a run of other settings" in run("rounds=2")
    second = summary()
    assert second["rounds_completed"] == 2
    assert second["settings_sha256"] != first["settings_sha256"]
