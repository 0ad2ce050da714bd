"""What every benchmark writes beside its figures: the machine, and the JSON file.

A figure means little without the machine it came from (2 cores here, shared or
not), so every ``benchmarks/results/*.json`` carries the same ``machine`` block,
with the load average at the moment it was written.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console


def machine_facts() -> dict[str, Any]:
    """Platform, Python, NumPy, CPU count and the 1/5/15-minute load average."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
        "load_average": [round(load, 2) for load in os.getloadavg()],
    }


def write_result(
    out: Path, filename: str, record: Mapping[str, Any], console: Console | None
) -> Path:
    """``record`` plus :func:`machine_facts` as ``out/filename`` (indented JSON)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / filename
    body = {**record, "machine": {**machine_facts(), **record.get("machine", {})}}
    path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    if console is not None:
        console.print(f"wrote {path}")
    return path
