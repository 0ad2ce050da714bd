"""Privacy–utility trade-off: test accuracy against ε for client and central DP.

For each mode (``dpsgd``: Opacus DP-SGD on every client, sample-level ε per client;
``central``: user-level DP-FedAvg at the aggregator) and each target ε, runs one
federation and records the final accuracy, beside the non-private run (ε = ∞).
Optionally (``--attack alie``) repeats central DP with 30 % attackers to see whether
robustness survives the noise. Also measures Opacus' per-step overhead against plain
training of the same model, side by side in this process, as a ratio.

    .venv/bin/python -m benchmarks.privacy_utility                       # FMNIST
    .venv/bin/python -m benchmarks.privacy_utility --max-steps 0         # full epochs
    .venv/bin/python -m benchmarks.privacy_utility --dataset digits --rounds 3 \\
        --epsilons 3 8 --clients 6                                         # small
    .venv/bin/python -m benchmarks.privacy_utility --modes central --attack none \\
        --participants 20 200 1000 --epsilons 8                 # central DP at scale

``--participants`` is the participants-per-round axis of central DP (user-level
DP-FedAvg works when many users share each round: the noise per coordinate is
``z · 2 · max_share · C`` with ``max_share = 2 / participants``). Each point runs
``⌈participants / sampling⌉`` clients with ``fraction_train = sampling`` (the
sampling rate the accountant amplifies by), beside its own non-private run.

Each row also gives ``tail_accuracy``, the mean of the last ``TAIL_ROUNDS`` rounds (as
the robustness matrix does): in short runs one round's accuracy swings by several
points, which would decide a 3 pp gap by luck.

``--override`` changes every run alike (``train.lr=0.02``): the non-private baseline
must train as the private runs do. ``--seeds`` repeats every run with each seed;
``privacy_utility_seeds.csv``, the json's ``summary`` and the plot give each
point's mean and spread over them.

Writes ``benchmarks/results/privacy/privacy_utility.{csv,json,png}``.
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import time
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from benchmarks.robustness_matrix import TAIL_ROUNDS, tail_accuracy, write_csv
from flp2p.config import RunSettings, compose
from flp2p.models import build_model
from flp2p.simulate import completed_summary, simulate

RESULTS = Path(__file__).resolve().parent / "results" / "privacy"


def run(out: Path, name: str, overrides: list[str]) -> dict[str, Any]:
    """One federation (skipped if its folder already holds a completed run)."""
    folder = out / "runs" / name
    settings = RunSettings.from_config(compose([*overrides, "output.plot=false"]))
    done = completed_summary(folder, settings.fingerprint)
    if done is not None:
        return done
    return simulate(settings, folder)


def largest_client_epsilon(folder: Path) -> float | None:
    """The largest cumulative ε a DP-SGD client reported, read from the run's ledger.

    Clients report their own spend with every reply (``dp-epsilon``); the ledger keeps
    each contribution's metrics, so the run's true client-side ε is their maximum.
    """
    path = folder / "ledger.db"
    if not path.exists():
        return None
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        (value,) = db.execute(
            """SELECT MAX(json_extract(metrics, '$."dp-epsilon"'))"""
            " FROM contributions"
        ).fetchone()
    return None if value is None else float(value)


def opacus_overhead(
    dataset: str, steps: int = 40, batch_size: int = 64, repeats: int = 3
) -> dict[str, float]:
    """Seconds per optimiser step, plain SGD vs Opacus DP-SGD, same model and data.

    Only the steps are timed (forward, backward, per-sample clipping and noise for
    DP-SGD, update), not model construction, ``make_private`` or evaluation; both
    loops alternate ``repeats`` times and the fastest of each is kept, so a busy
    machine slows both alike.
    """
    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    torch.set_num_threads(1)
    # The data set as its conf/dataset/<name>.yaml describes it (one registry).
    data = RunSettings.from_config(compose([f"dataset={dataset}"])).data.load()
    n = steps * batch_size
    dataset_ = TensorDataset(
        torch.from_numpy(data.train.images[:n]), torch.from_numpy(data.train.labels[:n])
    )
    criterion = torch.nn.CrossEntropyLoss()

    def timed(private: bool) -> float:
        model = build_model(data.image_shape, data.num_classes)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loader = DataLoader(dataset_, batch_size=batch_size)
        if private:
            model, optimizer, loader = PrivacyEngine(accountant="rdp").make_private(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=1.0,
                max_grad_norm=1.0,
                poisson_sampling=False,
            )
        batches = list(loader)
        start = time.perf_counter()
        for x, y in batches:
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
        return (time.perf_counter() - start) / len(batches)

    plain = min(timed(False) for _ in range(repeats))
    private = min(timed(True) for _ in range(repeats))
    return {
        "seconds_per_step_plain": plain,
        "seconds_per_step_dpsgd": private,
        "overhead_ratio": private / plain,
        "batch_size": batch_size,
    }


def over_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (mode, participants, ε): mean and spread of the seeds' accuracies.

    For each of ``final_accuracy`` and ``tail_accuracy`` over the ``n`` seeds that
    report it: the mean, the sample standard deviation
    :math:`s = \\sqrt{\\sum_i (a_i - \\bar a)^2 / (n - 1)}` (``None`` for one seed)
    and the range (min, max). Rows keep the order in which each point first appears.
    """
    groups: dict[tuple[str, int, float], list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["mode"], row["participants"], row["epsilon"])
        groups.setdefault(key, []).append(row)
    summary = []
    for (mode, participants, epsilon), members in groups.items():
        point: dict[str, Any] = {
            "mode": mode,
            "participants": participants,
            "epsilon": epsilon,
            "seeds": [r["seed"] for r in members],
        }
        for metric in ("final_accuracy", "tail_accuracy"):
            values = [r[metric] for r in members if r[metric] is not None]
            point[metric] = mean(values) if values else None
            point[f"{metric}_std"] = stdev(values) if len(values) > 1 else None
            point[f"{metric}_min"] = min(values) if values else None
            point[f"{metric}_max"] = max(values) if values else None
        summary.append(point)
    return summary


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from benchmarks.plotstyle import CLEAN_FEDAVG_STYLE

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    baseline = next((r for r in rows if r["mode"] == "none"), None)
    styles = {
        "dpsgd": ("o-", "#4e79a7"),
        "central": ("s-", "#e15759"),
        "central+attack": ("^--", "#b07aa1"),
    }
    counts = sorted({r.get("participants", 0) for r in rows if r["mode"] == "central"})
    for mode, (marker, color) in styles.items():
        for participants in counts if mode == "central" else [None]:
            points = sorted(
                (r["epsilon"], r["final_accuracy"], r.get("final_accuracy_std") or 0.0)
                for r in rows
                if r["mode"] == mode
                and r["final_accuracy"] is not None
                and (participants is None or r.get("participants") == participants)
            )
            if points:
                eps, acc, std = zip(*points, strict=True)
                label = (
                    mode if participants is None else f"{mode}, {participants}/round"
                )
                ax.errorbar(
                    eps,
                    [100 * a for a in acc],
                    yerr=[100 * s for s in std],
                    fmt=marker,
                    color=color,
                    capsize=3,
                    label=label,
                )
    if baseline is not None:
        ax.axhline(
            100 * baseline["final_accuracy"],
            label="non-private (ε = ∞)",
            **CLEAN_FEDAVG_STYLE,
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("ε (δ = 1e-5); dpsgd: per client, sample level; central: user level")
    ax.set_ylabel("final test accuracy (%), mean ± s.d. over seeds")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_title(args: argparse.Namespace) -> str:
    """The figure's title: the federation sizes its points ran with."""
    sizes = set(args.participants or [args.clients])
    if "dpsgd" in args.modes:
        sizes.add(args.clients)
    if sizes == {args.clients} and args.sampling == 1.0:
        federation = f"{args.clients} clients"
    else:
        per_round = ", ".join(str(n) for n in sorted(sizes))
        federation = f"{per_round} per round (sampling {args.sampling:g})"
    return f"{args.dataset}, {federation}, {args.rounds} rounds"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="fmnist")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument(
        "--max-steps",
        type=int,
        default=12,
        help="local optimiser steps per round (0: one full epoch)",
    )
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    parser.add_argument("--attack", default="alie", help="'none' to skip")
    parser.add_argument("--strategy", default="screened_fedavg")
    parser.add_argument(
        "--attack-strategy", default="trusted", help="strategy for the attacked runs"
    )
    parser.add_argument(
        "--modes", nargs="+", choices=["dpsgd", "central"], default=["dpsgd", "central"]
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per client (default: all cores)",
    )
    parser.add_argument(
        "--participants",
        type=int,
        nargs="+",
        default=None,
        help="central DP: participants per round (default: --clients)",
    )
    parser.add_argument(
        "--sampling",
        type=float,
        default=1.0,
        help="share of clients sampled per round at each --participants point",
    )
    parser.add_argument(
        "--override",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra overrides of every run, private or not (e.g. train.lr=0.02)",
    )
    parser.add_argument(
        "--central-override",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra overrides of the central-DP runs only (e.g. privacy.max_share=0.001"
        " for equal shares, privacy.adaptive_clipping=true)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="repeat every run with each seed (partition, init, sampling, noise);"
        " the summary gives mean and spread over them",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not 0.0 < args.sampling <= 1.0:
        parser.error("--sampling must lie in (0, 1]")
    args.out.mkdir(parents=True, exist_ok=True)

    base = [
        f"dataset={args.dataset}",
        f"rounds={args.rounds}",
        f"strategy={args.strategy}",
        f"train.max_steps={args.max_steps or 'null'}",
        "simulation.backend=in_process",
        "ledger.replicate=false",
        *args.override,
    ]
    if args.threads:
        base.append(f"simulation.num_cpus={args.threads}")
    rows: list[dict[str, Any]] = []

    def population(participants: int) -> list[str]:
        """Overrides for ``participants`` clients per round."""
        if participants == args.clients and args.sampling == 1.0:
            return [f"clients={args.clients}"]
        clients = math.ceil(participants / args.sampling)
        return [f"clients={clients}", f"fraction_train={args.sampling}"]

    def record(
        seed: int,
        mode: str,
        epsilon: float,
        name: str,
        overrides: list[str],
        participants: int | None = None,
    ) -> None:
        per_round = args.clients if participants is None else participants
        if per_round != args.clients or args.sampling != 1.0:
            name = f"{name}-p{per_round}-q{args.sampling:g}"
        if seed != 0:  # seed 0 keeps its old name, so earlier runs stay cached
            name = f"{name}-s{seed}"
        summary = run(
            args.out, name, [*base, f"seed={seed}", *population(per_round), *overrides]
        )
        metrics = args.out / "runs" / name / "metrics.csv"
        rows.append(
            {
                "mode": mode,
                "seed": seed,
                "participants": per_round,
                "epsilon": epsilon,
                "final_accuracy": summary.get("final_accuracy"),
                "tail_accuracy": tail_accuracy(metrics) if metrics.is_file() else None,
                "reported_epsilon": summary.get("epsilon")
                or largest_client_epsilon(args.out / "runs" / name),
                "seconds": summary.get("seconds"),
            }
        )
        print(
            f"{mode:>15} seed {seed} {per_round:>5} per round ε={epsilon:<6g} "
            f"accuracy {summary.get('final_accuracy')} "
            f"(last {TAIL_ROUNDS} rounds {rows[-1]['tail_accuracy']})"
        )

    participants_axis = args.participants or [args.clients]
    for seed in args.seeds:
        if "dpsgd" in args.modes or args.clients in participants_axis:
            record(seed, "none", float("inf"), "none", [])
        for eps in args.epsilons if "dpsgd" in args.modes else []:
            record(
                seed,
                "dpsgd",
                eps,
                f"dpsgd-{eps:g}",
                [
                    "privacy=dpsgd",
                    "privacy.noise_multiplier=null",
                    f"privacy.target_epsilon={eps}",
                ],
            )
        for participants in participants_axis if "central" in args.modes else []:
            if participants != args.clients or args.sampling != 1.0:
                record(seed, "none", float("inf"), "none", [], participants)
            for eps in args.epsilons:
                record(
                    seed,
                    "central",
                    eps,
                    # The overrides name the run: a cached run with other settings
                    # must not be taken for this one.
                    "-".join([f"central-{eps:g}", *args.central_override]),
                    [
                        "privacy=central",
                        f"privacy.target_epsilon={eps}",
                        *args.central_override,
                    ],
                    participants,
                )
        if args.attack != "none" and "central" in args.modes:
            for eps in args.epsilons:
                record(
                    seed,
                    "central+attack",
                    eps,
                    f"central-{eps:g}-{args.attack}",
                    [
                        "privacy=central",
                        f"privacy.target_epsilon={eps}",
                        f"attack={args.attack}",
                        f"strategy={args.attack_strategy}",
                    ],
                )

    # Opacus' step cost only matters beside DP-SGD runs.
    overhead = opacus_overhead(args.dataset) if "dpsgd" in args.modes else None
    write_csv(rows, args.out / "privacy_utility.csv")
    summary = over_seeds(rows)
    write_csv(summary, args.out / "privacy_utility_seeds.csv")
    payload = {
        "command": "python -m benchmarks.privacy_utility "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
        "summary": summary,
        "runs": rows,
        "opacus": overhead,
    }
    # ε = ∞ (no privacy) is written as the string "inf": JSON has no infinity.
    text = json.dumps(payload, indent=2).replace("Infinity", '"inf"')
    (args.out / "privacy_utility.json").write_text(text + "\n")
    plot(summary, args.out / "privacy_utility.png", plot_title(args))
    if overhead is not None:
        print(
            f"Opacus DP-SGD step: {overhead['overhead_ratio']:.2f}x plain "
            f"({overhead['seconds_per_step_dpsgd'] * 1e3:.1f} ms vs "
            f"{overhead['seconds_per_step_plain'] * 1e3:.1f} ms)"
        )


if __name__ == "__main__":
    main()
