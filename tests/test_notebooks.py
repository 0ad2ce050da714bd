"""Every benchmark notebook runs headless, regenerating a small version of its data."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted(
    (Path(__file__).resolve().parent.parent / "benchmarks").glob("*.ipynb")
)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_headless(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLP2P_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code"
               for o in cell.get("outputs", [])]  # fmt: skip
    assert not [o for o in outputs if o.get("output_type") == "error"]
    # Each notebook ends in something a reader can look at: a table or a figure.
    assert any(
        o.get("output_type") in {"execute_result", "display_data"} for o in outputs
    )


def test_there_are_notebooks() -> None:
    assert len(NOTEBOOKS) >= 2, os.listdir(NOTEBOOKS[0].parent if NOTEBOOKS else ".")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_executed(path: Path) -> None:
    """A reader browsing the repository sees the figures without running anything
    (``python -m benchmarks.run_all --notebooks-only`` stores them)."""
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.get("execution_count") for cell in code), "a cell never ran"
    outputs = [o for cell in code for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure stored"
