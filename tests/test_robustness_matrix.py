"""The robustness matrix's worst case (ByzFL's methodology) and its ByzFL bridge."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmarks.byzfl_pipeline import ByzFLPipeline, load_byzfl_aggregators
from benchmarks.robustness_matrix import (
    ATTACK_ORDER,
    RunResult,
    attacker_identities,
    load_runs,
    run_rows,
    tabled_runs,
    worst_case_bars,
    worst_cases,
    write_markdown,
)
from flp2p.config import CONF_DIR
from strategies import aggregators
from strategies.preaggregation import NearestNeighbourMixing, compose


def cell(strategy: str, attack: str, accuracy: float, std: float = 0.01) -> dict:
    return {
        "strategy": strategy,
        "attack": attack,
        "seeds": 3,
        "accuracy_mean": accuracy,
        "accuracy_min": accuracy - std,
        "accuracy_max": accuracy + std,
        "accuracy_std": std,
        "final_round_accuracy_mean": accuracy,
        "gap_to_clean_fedavg_pp": None,
        "attacker_weight_share": None,
    }


ROWS = [
    cell("fedavg", "none", 0.88),
    cell("fedavg", "alie", 0.50),
    cell("fedavg", "minmax", 0.30),
    cell("trusted", "none", 0.87),
    cell("trusted", "alie", 0.80),
    cell("trusted", "minmax", 0.85),
    cell("byzfl_nnm_median", "none", 0.86),
    cell("byzfl_nnm_median", "alie", 0.70),
    cell("byzfl_nnm_median", "minmax", 0.84),
    cell("fedmedian", "alie", 0.60),  # did not run every attack: no worst case
]


def test_worst_case_is_the_minimum_over_attacks_without_the_clean_run() -> None:
    worst = worst_cases(ROWS)
    assert worst["fedavg"] == ("minmax", pytest.approx(30.0))
    assert worst["trusted"] == ("alie", pytest.approx(80.0))
    assert worst["byzfl_nnm_median"] == ("alie", pytest.approx(70.0))
    assert "fedmedian" not in worst


def test_markdown_has_the_spread_the_worst_case_and_its_goals(tmp_path: Path) -> None:
    path = tmp_path / "robustness.md"
    write_markdown(ROWS, path)
    text = path.read_text()
    assert "| worst case |" in text
    row = "| trusted | 87.0 ±1.0 | **80.0 ±1.0** | **85.0 ±1.0** | 80.0 (alie) |"
    assert row in text
    # trusted 80.0 vs fedavg 30.0 + 10 pp: met; vs byzfl_nnm_median 70.0: met.
    assert "✅ worst case of `trusted` 80.0 % vs the best Flower built-in" in text
    assert "✅ worst case of `trusted` 80.0 % vs the best ByzFL pipeline" in text


def test_the_sweep_runs_every_new_attack_on_three_seeds_with_byzfl() -> None:
    sweep = yaml.safe_load((CONF_DIR / "sweep" / "robustness.yaml").read_text())
    params = sweep["hydra"]["sweeper"]["params"]
    attacks = params["attack"].split(",")
    for attack in ("minmax", "minsum", "mimic", "adaptive", "sleeper", "sybil_wave"):
        assert attack in attacks and attack in ATTACK_ORDER
        assert (CONF_DIR / "attack" / f"{attack}.yaml").is_file()
    assert len(params["seed"].split(",")) >= 3
    strategies = params["strategy"].split(",")
    assert "trusted" in strategies
    for name in [s for s in strategies if s.startswith("byzfl_")]:
        assert (CONF_DIR / "strategy" / f"{name}.yaml").is_file()
    assert sweep["resume"] is True


def test_the_sweep_runs_every_cell_of_one_seed_before_the_next_seed() -> None:
    """A partial sweep is a whole matrix: Hydra's basic sweeper, given the sweep's
    lists as the sweep gives them, runs every strategy × attack of seed 0 first."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweep = yaml.safe_load((CONF_DIR / "sweep" / "robustness.yaml").read_text())
    params = sweep["hydra"]["sweeper"]["params"]
    overrides = OverridesParser.create().parse_overrides(
        [f"{key}={value}" for key, value in params.items()]
    )
    jobs = BasicSweeper.split_arguments(overrides, None)[0]
    seeds = [next(o for o in job if o.startswith("seed=")) for job in jobs]
    cells = len(params["strategy"].split(",")) * len(params["attack"].split(","))
    assert len(jobs) == cells * len(params["seed"].split(","))
    assert seeds == sorted(seeds, key=lambda o: int(o.split("=")[1]))
    assert set(seeds[:cells]) == {"seed=0"}


def test_byzfl_pipeline_is_byzfl_nnm_then_median_with_f_from_the_fraction() -> None:
    if load_byzfl_aggregators() is None:
        pytest.skip("ByzFL is not installed (dev extra)")
    rows = np.random.default_rng(3).standard_normal((10, 7))
    rows[:3] = 40.0  # three far attackers: f = ⌊0.3 · 10⌋ = 3
    ours = compose(NearestNeighbourMixing(3), aggregators.CoordinateMedian())
    pipeline = ByzFLPipeline(steps=["NNM", "Median"], byzantine_fraction=0.3)
    before = rows.copy()
    np.testing.assert_allclose(pipeline(rows), ours(rows), rtol=1e-12)
    np.testing.assert_array_equal(rows, before)  # ByzFL's steps work on a copy
    with pytest.raises(ValueError, match="unknown ByzFL steps"):
        ByzFLPipeline(steps=["NoSuchRule"])


def finished_run(sweep_dir: Path, strategy: str, attack: str, status: str) -> None:
    """A run folder as ``flp2p.simulate`` leaves it (no ledger: a Flower rule)."""
    folder = sweep_dir / f"{strategy}_{attack}_seed0"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(
        yaml.safe_dump({"clients": 20, "attack": {"fraction": 0.3}})
    )
    (folder / "metrics.csv").write_text(
        "round,accuracy,loss,seconds\n0,0.1,2.3,1\n1,0.5,1.0,2\n2,0.7,0.8,3\n"
    )
    (folder / "summary.json").write_text(
        json.dumps(
            {
                "strategy": strategy,
                "attack": attack,
                "seed": 0,
                "status": status,
                "final_accuracy": 0.7 if status == "completed" else None,
            }
        )
    )


def test_an_interrupted_sweep_is_analysed_from_its_run_folders(tmp_path: Path) -> None:
    """Hydra writes results.csv only when a multirun ends; a sweep stopped between
    sittings has none, and its finished runs are what the tables are made of."""
    finished_run(tmp_path, "fedavg", "none", "completed")
    finished_run(tmp_path, "fedmedian", "alie", "completed")
    finished_run(tmp_path, "fedmedian", "ipm", "running")
    assert not (tmp_path / "results.csv").exists()
    runs = load_runs(tmp_path)
    assert {(run.strategy, run.attack) for run in runs} == {
        ("fedavg", "none"),
        ("fedmedian", "alie"),
    }
    assert all(run.accuracy == pytest.approx(0.6) for run in runs)


def test_the_attackers_share_outlives_the_ledger(tmp_path: Path) -> None:
    """Ledgers are not in git: the share read from one is kept beside it, so the
    table a fresh clone makes still has it."""
    finished_run(tmp_path, "trusted", "alie", "completed")
    folder = tmp_path / "trusted_alie_seed0"
    attacker = sorted(attacker_identities(0, 20, 0.3))[0]
    with sqlite3.connect(folder / "ledger.db") as db:
        db.execute("CREATE TABLE contributions (height, identity, weight)")
        db.executemany(
            "INSERT INTO contributions VALUES (?, ?, ?)",
            [(1, attacker, 0.25), (1, "honest", 0.75), (2, "honest", 1.0)],
        )
    assert load_runs(tmp_path)[0].attacker_weight == pytest.approx(0.125)
    (folder / "ledger.db").unlink()
    assert load_runs(tmp_path)[0].attacker_weight == pytest.approx(0.125)
    (folder / "attacker_share.json").unlink()
    assert load_runs(tmp_path)[0].attacker_weight is None


def test_a_partial_row_s_bar_is_marked_and_the_clean_run_is_no_worst_case() -> None:
    rows = [
        *ROWS,
        cell("fedmedian", "none", 0.40),  # lower than its one attack: not counted
    ]
    bars = dict(
        zip(
            ["fedavg", "trusted", "fedmedian", "flwr_krum"],
            worst_case_bars(rows, ["fedavg", "trusted", "fedmedian", "flwr_krum"]),
            strict=True,
        )
    )
    assert bars["fedavg"] == (pytest.approx(30.0), True)
    assert bars["trusted"] == (pytest.approx(80.0), True)
    assert bars["fedmedian"] == (pytest.approx(60.0), False)
    value, final = bars["flwr_krum"]
    assert np.isnan(value) and not final


def run(strategy: str, attack: str, seed: int, accuracy: float = 0.8) -> RunResult:
    return RunResult(strategy, attack, seed, accuracy, accuracy, None)


def test_only_seeds_that_ran_every_cell_are_tabled_and_the_rest_is_progress(
    tmp_path: Path,
) -> None:
    """A cell with one seed more than its neighbours would differ from them by
    luck: a seed enters the table only once it has run every cell."""
    grid = [(s, a) for s in ("fedavg", "trusted") for a in ("none", "alie")]
    runs = [run(s, a, 0) for s, a in grid]
    runs += [run("fedavg", "none", 1, 0.2), run("trusted", "alie", 1, 0.2)]
    tabled, pending = tabled_runs(runs)
    assert {r.seed for r in tabled} == {0} and len(tabled) == 4
    assert [(p.seed, p.runs, p.cells) for p in pending] == [(1, 2, 4)]
    path = tmp_path / "robustness.md"
    write_markdown(ROWS, path, pending)
    assert "seed 1 (2 of 4 runs)" in path.read_text()

    listed = run_rows(runs, tabled)
    assert (
        len(listed) == 6 and [r["in_table"] for r in listed] == [True] * 4 + [False] * 2
    )
    assert [(r["seed"], r["accuracy"]) for r in listed][4:] == [(1, 0.2), (1, 0.2)]

    runs += [run("fedavg", "alie", 1), run("trusted", "none", 1)]
    tabled, pending = tabled_runs(runs)
    assert len(tabled) == 8 and pending == []


def test_before_any_seed_is_complete_every_run_is_tabled() -> None:
    runs = [
        run("fedavg", "none", 0),
        run("trusted", "alie", 0),
        run("fedavg", "alie", 1),
    ]
    assert tabled_runs(runs) == (runs, [])
