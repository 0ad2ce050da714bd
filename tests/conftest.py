"""Shared test set-up."""

from __future__ import annotations

import os

import pytest
from flwr.supercore.task_identity import TaskIdentity

# Flower's telemetry would try the network; these machines have none.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


@pytest.fixture(autouse=True)
def flower_task_identity() -> None:
    """Messages built outside an engine need the task identity the engine would set."""
    TaskIdentity.run_id = 1
    TaskIdentity.task_id = 1
    TaskIdentity.node_id = 1
