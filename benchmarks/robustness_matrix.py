"""Robustness matrix: final test accuracy of each strategy under each attack.

Runs the Hydra multirun ``conf/sweep/robustness.yaml`` (strategies × attacks × seeds,
30 % malicious clients) into ``benchmarks/results/robustness/sweep`` — resumable: a
run that already completed is skipped — then writes

* ``robustness.csv`` — one row per strategy × attack (mean, min, max over seeds,
  and the gap to clean FedAvg in percentage points),
* ``robustness.md`` — the matrix as a markdown table (README),
* ``robustness.png`` — a heatmap.

    .venv/bin/python -m benchmarks.robustness_matrix                 # full (hours)
    .venv/bin/python -m benchmarks.robustness_matrix rounds=8 seed=0     # smaller
    .venv/bin/python -m benchmarks.robustness_matrix strategy=fedavg,trusted \\
        attack=none,alie                            # any sweep list can be narrowed
    .venv/bin/python -m benchmarks.robustness_matrix --analyse-only
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from statistics import mean

import numpy as np

from benchmarks.plotstyle import CLEAN_FEDAVG_STYLE, ordered

RESULTS = Path(__file__).resolve().parent / "results" / "robustness"
ATTACK_ORDER = (
    "none", "sign_flip", "gaussian", "scaling", "alie", "ipm", "label_flip",
    "free_rider", "sybil",
)  # fmt: skip
BASELINE = ("fedavg", "none")


def run_sweep(out: Path, overrides: list[str]) -> None:
    """Run (or resume) the multirun; its per-run folders land in ``out/sweep``."""
    command = [
        sys.executable,
        "-m",
        "flp2p.simulate",
        "-m",
        "+sweep=robustness",
        f"hydra.sweep.dir={out / 'sweep'}",
        "output.plot=false",
        *overrides,
    ]
    print("running:", " ".join(command), flush=True)
    if subprocess.run(command, check=False).returncode != 0:
        raise SystemExit("robustness_matrix: the sweep failed (see its output above)")


def load_runs(sweep_dir: Path) -> dict[tuple[str, str], list[float]]:
    """(strategy, attack) → final accuracies of the completed seeds."""
    accuracies: dict[tuple[str, str], list[float]] = defaultdict(list)
    with (sweep_dir / "results.csv").open() as stream:
        for row in csv.DictReader(stream):
            if row["status"] == "completed" and row["final_accuracy"]:
                key = (row["strategy"], row["attack"])
                accuracies[key].append(float(row["final_accuracy"]))
    return accuracies


def summarise(runs: dict[tuple[str, str], list[float]]) -> list[dict[str, object]]:
    """One row per cell: mean/min/max accuracy and the gap to clean FedAvg (pp)."""
    clean = mean(runs[BASELINE]) if BASELINE in runs else None
    rows = []
    for (strategy, attack), values in sorted(runs.items()):
        rows.append(
            {
                "strategy": strategy,
                "attack": attack,
                "seeds": len(values),
                "accuracy_mean": round(mean(values), 4),
                "accuracy_min": round(min(values), 4),
                "accuracy_max": round(max(values), 4),
                "gap_to_clean_fedavg_pp": None
                if clean is None
                else round(100 * (mean(values) - clean), 2),
            }
        )
    return rows


def write_csv(rows: list[dict[str, object]], path: Path) -> None:
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def matrix(
    rows: list[dict[str, object]],
) -> tuple[list[str], list[str], np.ndarray]:
    """Strategies (rows) × attacks (columns) of mean accuracy in %, NaN if missing."""
    strategies = ordered(sorted({str(r["strategy"]) for r in rows}))
    present = {str(r["attack"]) for r in rows}
    attacks = [a for a in ATTACK_ORDER if a in present] + sorted(
        present - set(ATTACK_ORDER)
    )
    grid = np.full((len(strategies), len(attacks)), np.nan)
    for r in rows:
        i, j = strategies.index(str(r["strategy"])), attacks.index(str(r["attack"]))
        grid[i, j] = 100 * float(r["accuracy_mean"])  # type: ignore[arg-type]
    return strategies, attacks, grid


def write_markdown(rows: list[dict[str, object]], path: Path) -> None:
    strategies, attacks, grid = matrix(rows)
    best = np.nanmax(grid, axis=0)
    lines = [
        "| strategy | " + " | ".join(attacks) + " |",
        "|---" * (len(attacks) + 1) + "|",
    ]
    for i, strategy in enumerate(strategies):
        cells = []
        for j in range(len(attacks)):
            value = grid[i, j]
            text = "–" if np.isnan(value) else f"{value:.1f}"
            cells.append(f"**{text}**" if value == best[j] else text)
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Final test accuracy (%), mean over seeds; best per attack in bold.")
    path.write_text("\n".join(lines) + "\n")


def plot_heatmap(rows: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strategies, attacks, grid = matrix(rows)
    fig, (ax, bar) = plt.subplots(
        1,
        2,
        figsize=(1.0 * len(attacks) + 6, 0.45 * len(strategies) + 2),
        gridspec_kw={"width_ratios": [3, 1.2]},
        dpi=120,
    )
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(attacks)), attacks, rotation=35, ha="right")
    ax.set_yticks(range(len(strategies)), strategies)
    for i in range(len(strategies)):
        for j in range(len(attacks)):
            if not np.isnan(grid[i, j]):
                color = "white" if grid[i, j] < 60 else "black"
                ax.text(
                    j,
                    i,
                    f"{grid[i, j]:.0f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color=color,
                )
    ax.set_xlabel("attack (30 % of clients malicious)")
    ax.set_title("final test accuracy (%)")
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    worst = np.nanmin(grid, axis=1)
    bar.barh(range(len(strategies)), worst, color="#4e79a7")
    bar.set_yticks(range(len(strategies)), [])
    bar.invert_yaxis()
    clean = grid[strategies.index("fedavg"), 0] if "fedavg" in strategies else None
    if clean is not None and attacks and attacks[0] == "none":
        bar.axvline(clean, label="clean FedAvg", **CLEAN_FEDAVG_STYLE)
        bar.legend(loc="lower right", fontsize=8)
    bar.set_xlim(0, 100)
    bar.set_xlabel("worst-case accuracy (%)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def analyse(out: Path) -> list[dict[str, object]]:
    rows = summarise(load_runs(out / "sweep"))
    if not rows:
        raise SystemExit(f"no completed runs under {out / 'sweep'}")
    write_csv(rows, out / "robustness.csv")
    write_markdown(rows, out / "robustness.md")
    plot_heatmap(rows, out / "robustness.png")
    print((out / "robustness.md").read_text())
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--analyse-only", action="store_true")
    args, overrides = parser.parse_known_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.analyse_only:
        run_sweep(args.out, overrides)
    analyse(args.out)


if __name__ == "__main__":
    main()
