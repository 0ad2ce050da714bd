"""Robustness matrix: test accuracy of each strategy under each attack.

Runs the Hydra multirun ``conf/sweep/robustness.yaml`` (strategies × attacks × seeds,
30 % malicious clients) into ``benchmarks/results/robustness/sweep`` — resumable: a
run that already completed is skipped — then writes

* ``robustness.csv`` — one row per strategy × attack (mean, min, max over seeds,
  and the gap to clean FedAvg in percentage points),
* ``robustness.md`` — the matrix as a markdown table (README),
* ``robustness.png`` — a heatmap,
* ``robustness_runs.csv`` — every completed run (strategy, attack, seed), with
  whether it is in the tables: only seeds that ran every cell are.

It also runs FedAvg over the honest clients only (``strategy=honest_only``, same
seeds; ``--no-ceiling`` skips it): the ceiling for any filter, reported beside the
matrix.

    .venv/bin/python -m benchmarks.robustness_matrix                 # full (hours)
    .venv/bin/python -m benchmarks.robustness_matrix rounds=8 seed=0     # smaller
    .venv/bin/python -m benchmarks.robustness_matrix strategy=fedavg,trusted \\
        attack=none,alie                            # any sweep list can be narrowed
    .venv/bin/python -m benchmarks.robustness_matrix --analyse-only
"""

from __future__ import annotations

import argparse
import csv
import json
import sqlite3
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev
from typing import Any

import numpy as np
import yaml

from benchmarks.plotstyle import CLEAN_FEDAVG_STYLE, ordered
from flp2p.sweep import collect_sweep

RESULTS = Path(__file__).resolve().parent / "results" / "robustness"
ATTACK_ORDER = (
    "none", "sign_flip", "gaussian", "scaling", "alie", "ipm", "label_flip",
    "free_rider", "sybil", "minmax", "minsum", "mimic", "adaptive", "sleeper",
    "sybil_wave",
)  # fmt: skip
BASELINE = ("fedavg", "none")
CEILING = ("honest_only", "none")
"""FedAvg over the honest clients only (:mod:`flp2p.baselines`): reported beside
the matrix, not in it, since it is told who the attackers are."""


def ceiling_accuracy(rows: list[dict[str, object]]) -> float | None:
    """The honest-only run's mean accuracy in %, if the sweep has it."""
    for r in rows:
        if (r["strategy"], r["attack"]) == CEILING:
            return 100 * float(r["accuracy_mean"])  # type: ignore[arg-type]
    return None


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


RUNS_FILE = "robustness_runs.csv"
"""Every completed run, one row each, with whether it is in the table."""
TAIL_ROUNDS = 3
"""Accuracy of a run = mean test accuracy of its last rounds: one round's accuracy
swings by several points under label skew, which would decide close cells by luck."""


@dataclass(frozen=True)
class RunResult:
    """One completed run of the sweep."""

    strategy: str
    attack: str
    seed: int
    accuracy: float  # mean of the last TAIL_ROUNDS rounds
    final_accuracy: float
    attacker_weight: float | None  # mean share of the aggregate, None: no ledger


def tail_accuracy(metrics_csv: Path, rounds: int = TAIL_ROUNDS) -> float:
    """Mean test accuracy of the last ``rounds`` rounds in a run's metrics.csv."""
    with metrics_csv.open() as stream:
        trained = [
            float(r["accuracy"]) for r in csv.DictReader(stream) if int(r["round"]) > 0
        ]
    return mean(trained[-rounds:])


def attacker_identities(seed: int, clients: int, fraction: float) -> set[str]:
    """Identities (SHA-256 of the public key) of the seed's malicious clients."""
    from flp2p.app import simulated_identity
    from flp2p.attacks import malicious_partitions

    return {
        simulated_identity(seed, partition)
        for partition in malicious_partitions(clients, fraction, seed)
    }


def attacker_weight_share(ledger_db: Path, attackers: set[str]) -> float | None:
    """Mean over rounds of the attackers' share of the aggregation weight.

    Read from the run's ledger (only flp2p strategies keep one); ``None`` without.
    """
    if not ledger_db.is_file():
        return None
    with sqlite3.connect(ledger_db) as db:
        rows = db.execute(
            "SELECT height, identity, weight FROM contributions"
        ).fetchall()
    per_round: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for height, identity, weight in rows:
        per_round[height][0] += float(weight) if identity in attackers else 0.0
        per_round[height][1] += float(weight)
    shares = [bad / total for bad, total in per_round.values() if total > 0]
    return mean(shares) if shares else None


ATTACKER_SHARE_FILE = "attacker_share.json"
"""Beside a run's ``ledger.db``: the share read from it. Ledgers are not kept in git
(``*.db``, ~0.2 MB a run), so a fresh clone's analysis reads this instead."""


def recorded_attacker_share(folder: Path, attackers: set[str]) -> float | None:
    """The attackers' weight share of the run in ``folder``, from its ledger when it
    has one (then written to :data:`ATTACKER_SHARE_FILE`), else from that file."""
    recorded = folder / ATTACKER_SHARE_FILE
    share = attacker_weight_share(folder / "ledger.db", attackers)
    if share is not None:
        entry = {"attacker_weight_share": share, "source": "ledger.db"}
        recorded.write_text(json.dumps(entry, indent=2) + "\n")
        return share
    if recorded.is_file():
        value = json.loads(recorded.read_text()).get("attacker_weight_share")
        return None if value is None else float(value)
    return None


def load_runs(sweep_dir: Path) -> list[RunResult]:
    """Every completed run of the sweep, read from its folder.

    From the run folders, not the sweep's ``results.csv``: Hydra writes that only
    when a multirun ends, and a sweep of several sittings is analysed between them.
    """
    results = []
    for row in collect_sweep(sweep_dir):
        if row["status"] != "completed" or row["final_accuracy"] is None:
            continue
        folder = sweep_dir / row["job"]
        config = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
        seed = int(row["seed"])
        attackers = (
            attacker_identities(
                seed, int(config["clients"]), float(config["attack"]["fraction"])
            )
            if row["attack"] != "none"
            else set()
        )
        results.append(
            RunResult(
                strategy=row["strategy"],
                attack=row["attack"],
                seed=seed,
                accuracy=tail_accuracy(folder / "metrics.csv"),
                final_accuracy=float(row["final_accuracy"]),
                attacker_weight=recorded_attacker_share(folder, attackers)
                if attackers
                else None,
            )
        )
    return results


@dataclass(frozen=True)
class SeedProgress:
    """A seed's runs so far against the sweep's cells (every strategy × attack any
    seed has run)."""

    seed: int
    runs: int
    cells: int

    @property
    def complete(self) -> bool:
        return self.runs == self.cells


def tabled_runs(runs: list[RunResult]) -> tuple[list[RunResult], list[SeedProgress]]:
    """The runs the tables are made of, and the seeds left out of them.

    Only seeds that have run every cell are tabled, so each cell averages the same
    seeds: a cell that had one seed more than its neighbours would differ by luck.
    The others' runs stay in the sweep folder and count as progress. Before any
    seed is complete, every run is tabled (the start of a sweep).
    """
    cells = {(r.strategy, r.attack) for r in runs}
    by_seed: dict[int, set[tuple[str, str]]] = defaultdict(set)
    for r in runs:
        by_seed[r.seed].add((r.strategy, r.attack))
    progress = [
        SeedProgress(seed, len(done), len(cells))
        for seed, done in sorted(by_seed.items())
    ]
    complete = {p.seed for p in progress if p.complete}
    if not complete:
        return runs, []
    return [r for r in runs if r.seed in complete], [
        p for p in progress if not p.complete
    ]


def summarise(runs: list[RunResult]) -> list[dict[str, object]]:
    """One row per cell: accuracy over seeds, gap to clean FedAvg (pp), attackers'
    weight share (flp2p strategies)."""
    cells: dict[tuple[str, str], list[RunResult]] = defaultdict(list)
    for run in runs:
        cells[(run.strategy, run.attack)].append(run)
    clean = mean(r.accuracy for r in cells[BASELINE]) if BASELINE in cells else None
    rows = []
    for (strategy, attack), members in sorted(cells.items()):
        values = [r.accuracy for r in members]
        shares = [r.attacker_weight for r in members if r.attacker_weight is not None]
        rows.append(
            {
                "strategy": strategy,
                "attack": attack,
                "seeds": len(values),
                "accuracy_mean": round(mean(values), 4),
                "accuracy_min": round(min(values), 4),
                "accuracy_max": round(max(values), 4),
                "accuracy_std": round(stdev(values), 4) if len(values) > 1 else None,
                "final_round_accuracy_mean": round(
                    mean(r.final_accuracy for r in members), 4
                ),
                "gap_to_clean_fedavg_pp": None
                if clean is None
                else round(100 * (mean(values) - clean), 2),
                "attacker_weight_share": round(mean(shares), 4) if shares else None,
            }
        )
    return rows


OURS = ("trusted", "trusted_median")
FLOWER_BUILTINS = (
    "fedmedian", "fedtrimmedavg", "flwr_krum", "flwr_multikrum", "flwr_bulyan",
)  # fmt: skip
BYZFL_PREFIX = "byzfl_"
"""ByzFL's pipelines through the same Flower app (``conf/strategy/byzfl_*.yaml``)."""


def attacked_accuracies(rows: list[dict[str, object]]) -> dict[str, dict[str, float]]:
    """Per strategy, its accuracy in % (mean over seeds) under each attack it ran;
    ``none`` left out."""
    acc: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r["attack"] != "none":
            acc[str(r["strategy"])][str(r["attack"])] = 100 * float(
                r["accuracy_mean"]  # type: ignore[arg-type]
            )
    return acc


def worst_cases(rows: list[dict[str, object]]) -> dict[str, tuple[str, float]]:
    """Per strategy, the attack that hurts it most and its accuracy in % (ByzFL's
    methodology: the minimum over attacks of the mean over seeds; ``none`` left out,
    and a strategy counts only where it ran every attack the sweep has)."""
    acc = attacked_accuracies(rows)
    acc.pop(CEILING[0], None)
    attacks = set().union(*acc.values()) if acc else set()
    return {
        strategy: min(by_attack.items(), key=lambda item: item[1])
        for strategy, by_attack in acc.items()
        if set(by_attack) == attacks
    }


def worst_case_goals(rows: list[dict[str, object]]) -> list[str]:
    """Issue 14's worst-case goals for ``trusted``: ≥ the best Flower built-in's
    worst case + 10 pp, and ≥ the best ByzFL pipeline's."""
    worst = worst_cases(rows)
    if "trusted" not in worst:
        return []
    ours = worst["trusted"][1]
    lines = []
    for title, members, margin in (
        (
            "best Flower built-in",
            [s for s in worst if s in ("fedavg", *FLOWER_BUILTINS)],
            10.0,
        ),
        ("best ByzFL pipeline", [s for s in worst if s.startswith(BYZFL_PREFIX)], 0.0),
    ):
        if not members:
            continue
        best = max(members, key=lambda s: worst[s][1])
        ok = ours >= worst[best][1] + margin
        lines.append(
            f"* {'✅' if ok else '❌'} worst case of `trusted` {ours:.1f} % vs the "
            f"{title} (`{best}`, {worst[best][1]:.1f} % under {worst[best][0]})"
            + (f" + {margin:.0f} pp" if margin else "")
        )
    return lines


def goal_table(rows: list[dict[str, object]]) -> list[str]:
    """The issue's goals, cell by cell, for each of our strategies.

    Under attack: within 2 pp of clean FedAvg, and at least the best Flower
    built-in; without attack: at least FedAvg − 0.5 pp.
    """
    acc = {(str(r["strategy"]), str(r["attack"])): 100 * float(r["accuracy_mean"])  # type: ignore[arg-type]
           for r in rows}  # fmt: skip
    if BASELINE not in acc:
        return []
    clean = acc[BASELINE]
    attacks = [a for a in ATTACK_ORDER if any(k[1] == a for k in acc)]
    lines = [
        "| ours | " + " | ".join(attacks) + " |",
        "|---" * (len(attacks) + 1) + "|",
    ]
    for strategy in [s for s in OURS if any(k[0] == s for k in acc)]:
        cells = []
        for attack in attacks:
            value = acc.get((strategy, attack))
            if value is None:
                cells.append("–")
                continue
            builtins = [acc[(b, attack)] for b in FLOWER_BUILTINS if (b, attack) in acc]
            if attack == "none":
                ok = value >= acc.get(("fedavg", "none"), clean) - 0.5
                note = f"{value - clean:+.1f} vs FedAvg"
            else:
                ok = value >= clean - 2.0 and (not builtins or value >= max(builtins))
                best = f", best built-in {max(builtins):.1f}" if builtins else ""
                note = f"{value - clean:+.1f} pp{best}"
            cells.append(f"{'✅' if ok else '❌'} {note}")
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "✅: within 2 pp of clean FedAvg and at least the best Flower built-in under "
        "attack; at least FedAvg − 0.5 pp without attack."
    )
    return lines


def write_csv(rows: list[dict[str, object]], path: Path) -> None:
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def matrix(
    rows: list[dict[str, object]],
) -> tuple[list[str], list[str], np.ndarray]:
    """Strategies (rows) × attacks (columns) of mean accuracy in %, NaN if missing."""
    rows = [r for r in rows if r["strategy"] != CEILING[0]]
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


def write_markdown(
    rows: list[dict[str, object]],
    path: Path,
    pending: list[SeedProgress] | None = None,
) -> None:
    strategies, attacks, grid = matrix(rows)
    best = np.nanmax(grid, axis=0)
    spread = {
        (str(r["strategy"]), str(r["attack"])): r["accuracy_std"]
        for r in rows
        if r.get("accuracy_std") is not None
    }
    worst = worst_cases(rows)
    lines = [
        "| strategy | " + " | ".join(attacks) + " | worst case |",
        "|---" * (len(attacks) + 2) + "|",
    ]
    for i, strategy in enumerate(strategies):
        cells = []
        for j, attack in enumerate(attacks):
            value = grid[i, j]
            text = "–" if np.isnan(value) else f"{value:.1f}"
            sd = spread.get((strategy, attack))
            if sd is not None:
                text += f" ±{100 * float(sd):.1f}"  # type: ignore[arg-type]
            cells.append(f"**{text}**" if value == best[j] else text)
        low = worst.get(strategy)
        cells.append("–" if low is None else f"{low[1]:.1f} ({low[0]})")
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Test accuracy (%) averaged over the last {TAIL_ROUNDS} rounds and over "
        "seeds (± the standard deviation over seeds); best per attack in bold; "
        "worst case: the minimum over the attacks (`none` excluded) and the attack."
    )
    if pending:
        lines += [
            "",
            "Not in the table until they have run every cell (so that each cell "
            "averages the same seeds): "
            + ", ".join(f"seed {p.seed} ({p.runs} of {p.cells} runs)" for p in pending)
            + ".",
        ]
    ceiling = ceiling_accuracy(rows)
    if ceiling is not None:
        lines += [
            "",
            f"Ceiling for any filter: FedAvg over the honest clients only "
            f"(told who the attackers are, `strategy=honest_only`): {ceiling:.1f}.",
        ]
    shares = {
        (str(r["strategy"]), str(r["attack"])): float(r["attacker_weight_share"])  # type: ignore[arg-type]
        for r in rows
        if r["attacker_weight_share"] is not None
    }
    if shares:
        lines += [
            "",
            "Attackers' mean share of the aggregation weight (flp2p strategies, from "
            "each run's ledger; their share of the clients is 30 %):",
            "",
        ]
        ours = [s for s in strategies if any(k[0] == s for k in shares)]
        attacked = [a for a in attacks if a != "none"]
        lines.append("| strategy | " + " | ".join(attacked) + " |")
        lines.append("|---" * (len(attacked) + 1) + "|")
        for strategy in ours:
            cells = [
                f"{100 * shares[(strategy, a)]:.1f} %" if (strategy, a) in shares
                else "–"
                for a in attacked
            ]  # fmt: skip
            lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    goals = goal_table(rows)
    if goals:
        lines += ["", "Goals:", "", *goals]
    worst_goals = worst_case_goals(rows)
    if worst_goals:
        lines += ["", "Worst-case goals:", "", *worst_goals]
    path.write_text("\n".join(lines) + "\n")


WORST_CASE_STYLE: dict[str, Any] = {"color": "#4e79a7", "label": "worst case"}
PARTIAL_WORST_STYLE: dict[str, Any] = {
    "color": "#c9d6e8",
    "hatch": "//",
    "edgecolor": "#4e79a7",
    "label": "worst so far (not every attack run yet)",
}


def worst_case_bars(
    rows: list[dict[str, object]], strategies: list[str]
) -> list[tuple[float, bool]]:
    """Per strategy of ``strategies``, its worst-case accuracy in % and whether it is
    final: the minimum over the attacks it has run (``none`` left out, as in
    :func:`worst_cases`), final only once it ran every attack of the sweep; NaN if it
    ran none. A partial sweep's bar must not pass for a worst case."""
    final = worst_cases(rows)
    acc = attacked_accuracies(rows)
    return [
        (final[s][1], True)
        if s in final
        else (min(acc.get(s, {}).values(), default=float("nan")), False)
        for s in strategies
    ]


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
    ax.set_title(f"test accuracy (%), mean of the last {TAIL_ROUNDS} rounds")
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    bars = worst_case_bars(rows, strategies)
    for final, style in ((True, WORST_CASE_STYLE), (False, PARTIAL_WORST_STYLE)):
        picked = [i for i, (_, done) in enumerate(bars) if done is final]
        if picked:
            bar.barh(picked, [bars[i][0] for i in picked], **style)
    bar.set_yticks(range(len(strategies)), [])
    bar.invert_yaxis()
    clean = grid[strategies.index("fedavg"), 0] if "fedavg" in strategies else None
    if clean is not None and attacks and attacks[0] == "none":
        bar.axvline(clean, label="clean FedAvg", **CLEAN_FEDAVG_STYLE)
        ceiling = ceiling_accuracy(rows)
        if ceiling is not None:
            bar.axvline(
                ceiling, color="#59a14f", linewidth=1.2, label="honest clients only"
            )
    bar.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize=7, frameon=False)
    bar.set_xlim(0, 100)
    bar.set_xlabel("worst-case accuracy (%)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_rows(runs: list[RunResult], tabled: list[RunResult]) -> list[dict[str, object]]:
    """One row per completed run, tabled or not: what each seed gave, so that the
    runs of a seed still under way can be read before it enters the table."""
    kept = set(tabled)
    return [
        {
            "strategy": r.strategy,
            "attack": r.attack,
            "seed": r.seed,
            "accuracy": round(r.accuracy, 4),
            "final_round_accuracy": round(r.final_accuracy, 4),
            "attacker_weight_share": None
            if r.attacker_weight is None
            else round(r.attacker_weight, 4),
            "in_table": r in kept,
        }
        for r in sorted(runs, key=lambda r: (r.seed, r.strategy, r.attack))
    ]


def analyse(out: Path) -> list[dict[str, object]]:
    every = load_runs(out / "sweep")
    runs, pending = tabled_runs(every)
    rows = summarise(runs)
    if not rows:
        raise SystemExit(f"no completed runs under {out / 'sweep'}")
    write_csv(rows, out / "robustness.csv")
    write_csv(run_rows(every, runs), out / RUNS_FILE)
    write_markdown(rows, out / "robustness.md", pending)
    plot_heatmap(rows, out / "robustness.png")
    print((out / "robustness.md").read_text())
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--analyse-only", action="store_true")
    parser.add_argument(
        "--no-ceiling",
        action="store_true",
        help="skip the honest-only runs (the ceiling reported beside the matrix)",
    )
    args, overrides = parser.parse_known_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.analyse_only:
        run_sweep(args.out, overrides)
        if not args.no_ceiling:
            run_sweep(args.out, ceiling_overrides(overrides))
    analyse(args.out)


def ceiling_overrides(overrides: list[str]) -> list[str]:
    """The sweep's overrides for the honest-only runs: same seeds, data and length,
    strategy ``honest_only`` without attack (it leaves out the same clients)."""
    kept = [o for o in overrides if not o.startswith(("strategy=", "attack="))]
    excluded = [
        "strategy.excluded_fraction=" + o.split("=", 1)[1]
        for o in overrides
        if o.startswith("attack.fraction=")
    ]
    return [*kept, f"strategy={CEILING[0]}", f"attack={CEILING[1]}", *excluded]


if __name__ == "__main__":
    main()
