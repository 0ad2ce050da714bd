"""A small run of benchmarks/robust_updates.py: real properties, a few seconds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from benchmarks.robust_updates import (
    BenchmarkConfig,
    Results,
    attacked_rounds,
    load_byzfl_aggregators,
    markdown_report,
    render,
    run_benchmark,
    write,
)
from flp2p.attacks import build_attack

SMALL = BenchmarkConfig(
    clients=10, byzantine=(3,), width=50, rounds=2, attacks=("sign_flip", "minmax")
)


@pytest.fixture(scope="module")
def small() -> Results:
    return run_benchmark(SMALL)


def test_every_contender_is_scored_under_every_attack(small: Results) -> None:
    table = small.errors[3]
    assert "TrustedFedAvg [strategy]" in table
    assert "NNM∘Median [flp2p]" in table
    for by_attack in table.values():
        assert set(by_attack) == {"sign_flip", "minmax"}
        assert all(np.isfinite(error) and error >= 0.0 for error in by_attack.values())
    attack, error = small.worst(3, "Mean [flp2p]")
    assert error == max(table["Mean [flp2p]"].values())
    assert table["Mean [flp2p]"][attack] == error


def test_the_clean_cost_is_shown_but_not_part_of_the_worst_case() -> None:
    config = BenchmarkConfig(
        clients=8, byzantine=(2,), width=20, rounds=1, attacks=("none", "sign_flip")
    )
    results = run_benchmark(config)
    table = results.errors[2]
    assert table["Mean [flp2p]"]["none"] < 1e-12  # the mean of all n, exactly
    assert table["Krum [flp2p]"]["none"] > 0.0  # one update is not the mean
    for name in table:
        assert results.worst(2, name) == ("sign_flip", table[name]["sign_flip"])


def test_nnm_then_median_beats_the_mean_where_the_mean_breaks(small: Results) -> None:
    table = small.errors[3]
    # Both attacks leave every honest row's n − f nearest neighbours honest.
    for attack in SMALL.attacks:
        assert table["NNM∘Median [flp2p]"][attack] < table["Mean [flp2p]"][attack]
    assert small.worst(3, "NNM∘Median [flp2p]")[1] < small.worst(3, "Mean [flp2p]")[1]


def test_byzfl_runs_beside_our_rules_and_agrees_where_rules_coincide(
    small: Results,
) -> None:
    if load_byzfl_aggregators() is None:
        pytest.skip("ByzFL is not installed (dev extra)")
    table = small.errors[3]
    # The same definitions give the same numbers from both libraries.
    for ours, theirs in (
        ("Mean [flp2p]", "Average [ByzFL]"),
        ("Median [flp2p]", "Median [ByzFL]"),
        ("NNM∘Median [flp2p]", "NNM∘Median [ByzFL]"),
    ):
        for attack in SMALL.attacks:
            assert table[ours][attack] == pytest.approx(table[theirs][attack], rel=1e-9)


def test_a_sybil_wave_is_absent_before_it_joins_and_only_then_scored() -> None:
    config = BenchmarkConfig(clients=10, width=20, rounds=4)
    sign_flip = {"_target_": "flp2p.attacks.SignFlip"}
    wave = {"_target_": "flp2p.attacks.SybilWave", "join_round": 3, "then": sign_flip}
    attack = build_attack(wave)
    rounds = attacked_rounds(attack, config, 3)
    assert [r.attacked for r in rounds] == [False, False, True, True]
    assert [len(r.identities) for r in rounds] == [7, 7, 10, 10]
    assert all(name.startswith("sybil-") for name in rounds[3].identities[:3])
    # Honest rows and the honest mean do not depend on the attack ...
    flipped = attacked_rounds(build_attack(sign_flip), config, 3)
    for attacked, other in zip(rounds, flipped, strict=True):
        np.testing.assert_array_equal(attacked.honest_mean, other.honest_mean)
        np.testing.assert_array_equal(attacked.rows[-7:], other.rows[-7:])
    # ... and with no attack the would-be attackers count as honest.
    honest = build_attack({"_target_": "flp2p.attacks.Attack"})
    clean = attacked_rounds(honest, config, 3)
    assert all(r.attacked for r in clean)
    np.testing.assert_allclose(clean[0].honest_mean, clean[0].rows.mean(axis=0))


def test_results_are_written_and_rendered(small: Results, tmp_path: Path) -> None:
    write(small, tmp_path)
    with (tmp_path / "errors.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(small.errors[3]) * len(SMALL.attacks)
    summary = json.loads((tmp_path / "summary.json").read_text())
    worst = summary["worst_case"]["3"]["Mean [flp2p]"]
    assert worst["error"] == small.worst(3, "Mean [flp2p]")[1]
    console = Console(width=200, record=True)
    render(small, console)
    assert "worst" in console.export_text()


def test_readme_tables_come_from_the_summary(small: Results, tmp_path: Path) -> None:
    write(small, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    report = markdown_report(summary)
    default = next(
        line for line in report.splitlines() if line.startswith("| **TrustedFedAvg")
    )
    errors = small.errors[3]["TrustedFedAvg [strategy]"]
    cells = default.strip("|").split("|")
    assert [float(cell) for cell in cells[1:-1]] == [
        round(errors[attack], 3) for attack in SMALL.attacks
    ]
    assert f"{small.worst(3, 'TrustedFedAvg [strategy]')[1]:.3f}" in cells[-1]
    assert f"Lowest worst case of all {len(small.errors[3])} rows" in report
    if summary["goal"]["3"]:
        assert "Goal at f = 3: met for" in report
