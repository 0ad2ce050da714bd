"""A plain Flower ServerApp that aggregates with a robust flp2p strategy.

Nothing here is specific to flp2p except the strategy import: any Flower project
can swap its ``FedAvg`` for one of :mod:`strategies` the same way. Malformed replies
(wrong shapes, NaN, missing example counts, error replies) are rejected and logged
instead of aborting the run, and the coordinate-wise median bounds the influence of
poisoned but well-formed updates.

How to run it (simulation: 5 SuperNodes running the project's ClientApp on
Fashion-MNIST, 3 rounds)::

    .venv/bin/python examples/robust_serverapp.py

To use it in your own Flower App, copy this file into the app's package and point
``serverapp`` under ``[tool.flwr.app.components]`` in ``pyproject.toml`` at its
``app`` (e.g. ``"my_app.robust_serverapp:app"``), then ``flwr run .``.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from flp2p.models import build_model
from strategies.median import Median

FASHION_MNIST_SHAPE = (1, 28, 28)
NUM_CLASSES = 10

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Train the project's CNN for ``num-server-rounds`` rounds with the median."""
    num_rounds = int(context.run_config.get("num-server-rounds", 3))
    model = build_model(FASHION_MNIST_SHAPE, NUM_CLASSES)
    strategy = Median(fraction_evaluate=0.0, min_available_nodes=3)
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=num_rounds,
    )
    print("Final train metrics:", result.train_metrics_clientapp)


if __name__ == "__main__":
    from flwr.simulation import run_simulation

    from flp2p.app import client_app

    run_simulation(
        server_app=app,
        client_app=client_app,
        num_supernodes=5,
        backend_config={"client_resources": {"num_cpus": 1}},
    )
