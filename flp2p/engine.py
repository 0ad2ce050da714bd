"""The one place that touches Flower's simulation engine.

``flwr.simulation.run_simulation`` is deprecated (Flower 1.42) in favour of
``flwr run``, which submits the app to a SuperLink process and cannot hand a Python
caller its results. Both paths end in the same engine entry point,
``_run_simulation`` (Ray backend, virtual SuperNodes, the ServerApp in a thread);
calling it directly keeps ``python -m flp2p.simulate`` in-process (progress bar,
results, Hydra sweeps) without the deprecated wrapper. It is private API, so it is
isolated here and exercised by the end-to-end tests; ``flwr run .`` runs the same
app (see README).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp


def run_federation(
    server_app: ServerApp,
    client_app: ClientApp,
    num_clients: int,
    cpus_per_client: float = 1.0,
    num_cpus: int | None = None,
    verbose: bool = False,
) -> None:
    """Run ``server_app`` against ``num_clients`` virtual ClientApps on Ray.

    Parameters
    ----------
    server_app, client_app : ServerApp, ClientApp
        The apps; the ClientApp is shipped to Ray workers (cloudpickle).
    num_clients : int
        Virtual SuperNodes; each gets ``partition-id`` and ``num-partitions`` in its
        node config.
    cpus_per_client : float
        Ray CPUs reserved per running ClientApp (Flower's default is 2; 1 lets a
        2-core machine train two clients at a time).
    num_cpus : int, optional
        CPUs Ray may use; all cores when ``None``.
    verbose : bool
        Keep Flower's INFO logs (one line per message batch) instead of warnings only.
    """
    # Telemetry would try the network on every event; these machines have none.
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    init_args: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": verbose}
    if num_cpus is not None:
        init_args["num_cpus"] = num_cpus
    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
        "init_args": init_args,
    }
    flwr_logger = logging.getLogger("flwr")
    previous_level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.WARNING)
    try:
        _run_simulation(
            num_supernodes=num_clients,
            exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
            client_app=client_app,
            server_app=server_app,
            backend_name="ray",
            backend_config=backend_config,
            verbose_logging=verbose,
        )
    finally:
        flwr_logger.setLevel(previous_level)
