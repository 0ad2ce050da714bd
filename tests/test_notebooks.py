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
