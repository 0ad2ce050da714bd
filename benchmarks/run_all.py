"""Run the whole benchmark set, then re-execute the notebooks on the fresh results.

    .venv/bin/python -m benchmarks.run_all                 # everything (many hours)
    .venv/bin/python -m benchmarks.run_all --only speed ledger
    .venv/bin/python -m benchmarks.run_all --skip robustness --no-notebooks
    .venv/bin/python -m benchmarks.run_all --notebooks-only    # re-render the figures

Each step is one benchmark script writing under ``benchmarks/results/``; a step that
fails is reported and the others still run. The notebooks are then executed in place
(outputs saved), so opening them shows the new figures.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEPS: dict[str, list[str]] = {
    "baseline": ["benchmarks.baseline_fedavg"],
    "speed": ["benchmarks.aggregation_speed"],
    "ledger": ["benchmarks.ledger_bench"],
    "dht": ["benchmarks.dht_scale"],
    "robustness": ["benchmarks.robustness_matrix"],
    "privacy": ["benchmarks.privacy_utility"],
}
"""Step name → ``python -m`` arguments."""


def run_step(name: str, module_args: list[str]) -> tuple[str, bool, float]:
    """Run one benchmark; return (name, succeeded, seconds)."""
    print(f"\n=== {name}: python -m {' '.join(module_args)}", flush=True)
    start = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", *module_args], check=False)
    return name, completed.returncode == 0, time.perf_counter() - start


def execute_notebooks() -> list[tuple[str, bool, float]]:
    """Execute every notebook in place on the published results."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    outcomes = []
    for path in sorted(HERE.glob("*.ipynb")):
        start = time.perf_counter()
        notebook = nbformat.read(path, as_version=4)
        client = NotebookClient(
            notebook, timeout=3600, resources={"metadata": {"path": str(HERE)}}
        )
        try:
            client.execute()
            nbformat.write(notebook, path)
            ok = True
        except CellExecutionError as error:
            print(f"notebook {path.name} failed: {error}", file=sys.stderr)
            ok = False
        outcomes.append((f"notebook {path.stem}", ok, time.perf_counter() - start))
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(STEPS), default=None)
    parser.add_argument("--skip", nargs="+", choices=sorted(STEPS), default=[])
    parser.add_argument("--no-notebooks", action="store_true")
    parser.add_argument(
        "--notebooks-only",
        action="store_true",
        help="run no benchmark; execute the notebooks on the published results",
    )
    args = parser.parse_args()
    chosen = [s for s in (args.only or STEPS) if s not in args.skip]
    if args.notebooks_only:
        chosen = []
    outcomes = [run_step(name, STEPS[name]) for name in chosen]
    if not args.no_notebooks:
        outcomes += execute_notebooks()
    print("\n=== summary")
    for name, ok, seconds in outcomes:
        print(f"{'ok    ' if ok else 'FAILED'} {name:<28} {seconds:8.0f} s")
    if not all(ok for _, ok, _ in outcomes):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
