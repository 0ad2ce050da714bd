"""Attacks tailored to each defence: the worst a line search finds against each rule.

:mod:`benchmarks.robust_updates` sends every rule the same crafted rows, built from
attacks of the literature (one of them, the adaptive attack, written against
flp2p's detectors). An attacker who has read a rule's code does better: ByzFL's
optimal attacks (Allouah et al., "ByzFL", 2024: Optimal IPM and Optimal ALIE, after
Xie et al. 2020 and Baruch et al. 2019) search the attack's factor that moves *that*
rule's output furthest. Here every contender faces, in every round, the worst of a
grid of factors ``γ`` for each of five families of crafted rows:

* ``alie``: every attacker sends ``μ − γ σ`` (``σ`` the coordinate-wise standard
  deviation of the honest rows; ALIE's ``z`` is ``γ``);
* ``ipm``: every attacker sends ``−γ μ`` (IPM's ``ε`` is ``γ``);
* ``top_direction``: every attacker sends ``μ + γ √λ₁ v₁``, along the top principal
  direction of the honest rows (``λ₁`` its variance): where the honest rows spread
  most, a shift is hardest to tell from heterogeneity;
* ``top_direction_spread``: the same shift added to ``f`` distinct honest rows'
  offsets ``x_j − μ``: each attacker looks like an honest client, moved;
* ``random_direction_spread``: the same, along a random unit direction.

The attackers are omniscient: they know every honest row of the round and the
rule, including its state. A stateful contender (the default strategy, with
reputation and history) is copied to try each ``γ``, and the copy that fared worst
goes on to the next round, so its state evolves as under the attack that hurt it
most. The score of a contender under a family is the relative error
``‖aggregate − μ‖ / ‖μ‖`` (``μ`` the honest mean) of the worst ``γ`` per round,
averaged over rounds; its worst case is the largest over families. These are
defence-specific upper bounds over the families, so rows are compared by their
worst cases, not attack by attack.

    .venv/bin/python -m benchmarks.tailored_attacks                  # n=20, f=4 and 6
    .venv/bin/python -m benchmarks.tailored_attacks --directions 3   # low-rank spread

Writes ``benchmarks/results/tailored_attacks/<spread>/summary.json``; ``--markdown``
prints README's table from it (runs nothing).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from benchmarks.robust_updates import (
    DEFAULT_LABEL,
    Aggregate,
    BenchmarkConfig,
    Contender,
    RoundRows,
    SyntheticFederation,
    contenders_for,
    messages_outside_an_engine,
    relative_error,
    selected_rows,
)

RESULTS = Path(__file__).resolve().parent / "results" / "tailored_attacks"

FAMILIES = (
    "alie",
    "ipm",
    "top_direction",
    "top_direction_spread",
    "random_direction_spread",
)

GAMMAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0, 20.0)
"""The factors tried; the largest makes unbounded rules' errors obvious."""


def crafted_rows(
    family: str, honest: np.ndarray, f: int, gamma: float, rng: np.random.Generator
) -> np.ndarray:
    """The ``f`` attackers' rows of ``family`` at factor ``gamma`` (module docstring).

    ``rng`` draws the random direction and which honest offsets the spread families
    copy; the caller passes one seeded the same for every ``γ`` of a round, so the
    search varies ``γ`` alone.
    """
    mean = honest.mean(axis=0)
    if family == "alie":
        return np.tile(mean - gamma * honest.std(axis=0), (f, 1))
    if family == "ipm":
        return np.tile(-gamma * mean, (f, 1))
    offsets = honest - mean
    _, singular, directions = np.linalg.svd(offsets, full_matrices=False)
    spread = singular[0] / np.sqrt(len(honest))  # √λ₁
    if family == "top_direction":
        return np.tile(mean + gamma * spread * directions[0], (f, 1))
    copied = offsets[rng.choice(len(honest), size=f, replace=False)]
    if family == "top_direction_spread":
        return mean + gamma * spread * directions[0] + copied
    if family == "random_direction_spread":
        draw = rng.standard_normal(honest.shape[1])
        return mean + gamma * spread * draw / np.linalg.norm(draw) + copied
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


@dataclass(frozen=True)
class RoundSearch:
    """One round's worst factor for one contender."""

    gamma: float
    error: float


def worst_gamma(
    aggregate: Aggregate,
    rows_at: Callable[[float], RoundRows],
    gammas: Sequence[float],
    stateful: bool,
) -> tuple[RoundSearch, Aggregate]:
    """The ``γ`` of ``gammas`` whose rows move ``aggregate``'s output furthest from the
    honest mean, and the aggregator to use next round: ``aggregate`` itself when
    stateless, else the copy that went through the worst ``γ`` (ties: the smaller
    ``γ``)."""
    best: tuple[RoundSearch, Aggregate] | None = None
    for gamma in gammas:
        trial = copy.deepcopy(aggregate) if stateful else aggregate
        rows = rows_at(gamma)
        error = relative_error(trial(rows), rows.honest_mean)
        if best is None or error > best[0].error:
            best = (RoundSearch(gamma, error), trial)
    if best is None:
        raise ValueError("gammas is empty")
    return best


def tailored_score(
    contender: Contender,
    family: str,
    config: BenchmarkConfig,
    f: int,
    gammas: Sequence[float] = GAMMAS,
) -> list[RoundSearch]:
    """Each round's worst ``γ`` of ``family`` against a fresh ``contender``."""
    federation = SyntheticFederation(config)
    identities = tuple(f"byzantine-{i}" for i in range(f)) + tuple(
        f"client-{i}" for i in range(f, config.clients)
    )
    aggregate = contender.build()
    searches = []
    for server_round in range(1, config.rounds + 1):
        honest = federation.round()[f:]
        honest_mean = honest.mean(axis=0)

        def rows_at(
            gamma: float,
            honest: np.ndarray = honest,
            honest_mean: np.ndarray = honest_mean,
            server_round: int = server_round,
        ) -> RoundRows:
            rng = np.random.default_rng([config.seed, server_round, f])
            crafted = crafted_rows(family, honest, f, gamma, rng)
            return RoundRows(
                server_round,
                identities,
                np.vstack([crafted, honest]),
                honest_mean,
                True,
            )

        search, aggregate = worst_gamma(
            aggregate, rows_at, gammas, stateful=contender.stateful
        )
        searches.append(search)
    return searches


@dataclass
class TailoredResults:
    """``errors[f][contender][family]``: mean over rounds of the worst ``γ``'s error;
    ``gammas[f][contender][family]``: those ``γ``, round by round."""

    config: BenchmarkConfig
    errors: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    gammas: dict[int, dict[str, dict[str, list[float]]]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def worst(self, f: int, contender: str) -> tuple[str, float]:
        """The family that hurts ``contender`` most, and its error."""
        by_family = self.errors[f][contender]
        family = max(by_family, key=lambda name: by_family[name])
        return family, by_family[family]


def run_tailored(
    config: BenchmarkConfig,
    families: Sequence[str] = FAMILIES,
    gammas: Sequence[float] = GAMMAS,
    contenders: Callable[[BenchmarkConfig, int], list[Contender]] = contenders_for,
    progress: Callable[[str], None] | None = None,
) -> TailoredResults:
    """Every contender against every family, for each ``f`` of ``config.byzantine``
    (BLAS on one thread, as in :func:`benchmarks.robust_updates.run_benchmark`)."""
    messages_outside_an_engine(logging.ERROR)
    started = time.perf_counter()
    results = TailoredResults(config)
    with threadpool_limits(limits=1):
        for f in config.byzantine:
            errors: dict[str, dict[str, float]] = {}
            chosen: dict[str, dict[str, list[float]]] = {}
            results.errors[f], results.gammas[f] = errors, chosen
            for contender in contenders(config, f):
                contender_started = time.perf_counter()
                results.sources[contender.label] = contender.source
                errors[contender.label], chosen[contender.label] = {}, {}
                for family in families:
                    searches = tailored_score(contender, family, config, f, gammas)
                    errors[contender.label][family] = float(
                        np.mean([s.error for s in searches])
                    )
                    chosen[contender.label][family] = [s.gamma for s in searches]
                if progress is not None:
                    family, error = results.worst(f, contender.label)
                    seconds = time.perf_counter() - contender_started
                    progress(
                        f"f = {f}  {contender.label:<48} worst {error:.3f}"
                        f" ({family})  ({seconds:.1f} s)"
                    )
    results.seconds = time.perf_counter() - started
    return results


def summary_of(results: TailoredResults) -> dict[str, Any]:
    """What ``summary.json`` holds."""
    return {
        "config": asdict(results.config),
        "families": list(next(iter(next(iter(results.errors.values())).values()))),
        "seconds": results.seconds,
        "machine": platform.platform(),
        "sources": results.sources,
        "errors": {str(f): table for f, table in results.errors.items()},
        "gammas": {str(f): table for f, table in results.gammas.items()},
        "worst_case": {
            str(f): {
                name: dict(
                    zip(("family", "error"), results.worst(f, name), strict=True)
                )
                for name in table
            }
            for f, table in results.errors.items()
        },
    }


def spread_name(config: BenchmarkConfig) -> str:
    """The results folder of a configuration's honest spread."""
    return "isotropic" if config.directions is None else f"{config.directions}dir"


def _error_of(worst: Mapping[str, Mapping[str, Any]]) -> Callable[[str], float]:
    return lambda name: float(worst[name]["error"])


def markdown_report(summary: Mapping[str, Any]) -> str:
    """README's table and the default's rank, from a ``summary.json``."""
    config, families = summary["config"], summary["families"]
    spread = (
        "each client's own part in its own direction"
        if config["directions"] is None
        else f"the clients' own parts in {config['directions']} directions"
    )
    lines: list[str] = []
    for f, errors in summary["errors"].items():
        worst = summary["worst_case"][f]
        lines += [
            f"n = {config['clients']}, f = {f}, {spread} ({config['rounds']} rounds, "
            f"d = {config['width']}):",
            "",
            "| rule [source] | " + " | ".join(families) + " | **worst** |",
            "|---" * (len(families) + 2) + "|",
        ]
        for name in selected_rows(errors):
            label = f"**{name}** (default)" if name == DEFAULT_LABEL else name
            cells = [f"{errors[name][family]:.3f}" for family in families]
            lines.append(
                f"| {label} | {' | '.join(cells)} | **{worst[name]['error']:.3f}** |"
            )
        ranking = sorted(worst, key=_error_of(worst))
        if DEFAULT_LABEL in worst:
            byzfl = [n for n in ranking if n.endswith("[ByzFL]")]
            best_byzfl = (
                f"; best ByzFL row {byzfl[0]} {worst[byzfl[0]]['error']:.3f}"
                if byzfl
                else ""
            )
            lines += [
                "",
                f"The default's worst case {worst[DEFAULT_LABEL]['error']:.3f} ranks "
                f"{ranking.index(DEFAULT_LABEL) + 1} of {len(ranking)}{best_byzfl}.",
            ]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--byzantine", type=int, nargs="+", default=[4, 6])
    parser.add_argument("--width", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--directions", type=int, default=None)
    parser.add_argument("--no-byzfl", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="default: by spread")
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print README's table from OUT/summary.json and run nothing",
    )
    args = parser.parse_args()
    config = BenchmarkConfig(
        clients=args.clients,
        byzantine=tuple(args.byzantine),
        width=args.width,
        rounds=args.rounds,
        seed=args.seed,
        byzfl=not args.no_byzfl,
        directions=args.directions,
    )
    out = args.out if args.out is not None else RESULTS / spread_name(config)
    if args.markdown:
        print(markdown_report(json.loads((out / "summary.json").read_text())))
        return
    console = Console(width=200)
    results = run_tailored(config, progress=lambda line: console.print(escape(line)))
    summary = summary_of(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.print(escape(markdown_report(summary)))
    print(f"{results.seconds:.0f} s; results in {out}")


if __name__ == "__main__":
    main()
