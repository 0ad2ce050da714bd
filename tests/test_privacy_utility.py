"""benchmarks.privacy_utility: the mean and spread over --seeds."""

from __future__ import annotations

import math

import pytest

from benchmarks.privacy_utility import over_seeds, plot_title


def row(mode: str, seed: int, final: float | None, tail: float) -> dict[str, object]:
    return {
        "mode": mode,
        "seed": seed,
        "participants": 1000,
        "epsilon": math.inf if mode == "none" else 8.0,
        "final_accuracy": final,
        "tail_accuracy": tail,
    }


def test_over_seeds_groups_points_and_gives_mean_sd_and_range() -> None:
    rows = [
        row("none", 0, 0.50, 0.54),
        row("central", 0, 0.64, 0.61),
        row("none", 1, 0.60, 0.58),
        row("central", 1, None, 0.63),
    ]
    none, central = over_seeds(rows)
    assert (none["mode"], none["seeds"]) == ("none", [0, 1])
    assert none["tail_accuracy"] == pytest.approx(0.56)
    # Sample s.d. of two values a, b is |a - b| / sqrt(2).
    assert none["tail_accuracy_std"] == pytest.approx(0.04 / math.sqrt(2))
    assert (none["final_accuracy_min"], none["final_accuracy_max"]) == (0.50, 0.60)
    # A seed that reports no final accuracy is left out of that metric only.
    assert central["final_accuracy"] == pytest.approx(0.64)
    assert central["final_accuracy_std"] is None
    assert central["tail_accuracy"] == pytest.approx(0.62)


def test_over_seeds_one_seed_has_no_sd() -> None:
    (point,) = over_seeds([row("none", 0, 0.5, 0.5)])
    assert point["tail_accuracy_std"] is None
    assert point["tail_accuracy_min"] == point["tail_accuracy_max"] == 0.5


def test_the_figure_s_title_names_the_participants_per_round() -> None:
    """A central-only run at 1,000 per round once titled its figure "20 clients"
    (the --clients default, which it never ran)."""
    from argparse import Namespace

    def title(**changes: object) -> str:
        args = {"dataset": "fmnist", "clients": 20, "rounds": 10, "sampling": 1.0}
        args |= {"participants": None, "modes": ["dpsgd", "central"], **changes}
        return plot_title(Namespace(**args))

    assert title() == "fmnist, 20 clients, 10 rounds"
    assert title(participants=[1000], modes=["central"]) == (
        "fmnist, 1000 per round (sampling 1), 10 rounds"
    )
    assert title(participants=[200, 1000]) == (
        "fmnist, 20, 200, 1000 per round (sampling 1), 10 rounds"
    )
    assert title(participants=[1000], modes=["central"], sampling=0.5).startswith(
        "fmnist, 1000 per round (sampling 0.5)"
    )
