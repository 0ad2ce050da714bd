"""The ServerApp and ClientApp the peer runtime submits to its SuperLink.

They wrap :mod:`flp2p.app` with what a real federation adds to a simulation:

* the run resumes from a checkpoint (round ``peer.start-round`` of
  ``peer.checkpoint-dir``) instead of always starting from the seed's initial model,
  and every finished round is written back there, numbered in the federation's
  rounds, so the aggregator process can advertise it in its lease and a successor can
  continue from it;
* contributions are signed for the federation id (the hash of the genesis);
* each SuperNode may name its own data folder in its node config (``data-dir``).

Keys under ``peer.`` configure this wrapper and are removed before the rest of the
run config becomes Hydra overrides (:func:`flp2p.app.settings_from_run_config`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from flp2p.app import (
    arrays_to_record,
    central_evaluator,
    client_evaluate,
    client_train,
    open_run_ledger,
    record_to_arrays,
    settings_from_run_config,
)
from flp2p.config import RunSettings, build_strategy
from flp2p.peer.checkpoints import Checkpoint, CheckpointStore

PEER_PREFIX = "peer."
START_ROUND_KEY = "peer.start-round"
"""Run-config key: the finished round the run resumes from (0: a fresh start)."""
CHECKPOINT_DIR_KEY = "peer.checkpoint-dir"
"""Run-config key: folder of the :class:`CheckpointStore` the aggregator watches."""
FEDERATION_KEY = "peer.federation"
"""Run-config key: the federation id contributions are signed for."""
DATA_DIR_NODE_KEY = "data-dir"
"""Node-config key: a SuperNode's own data folder (overrides ``dataset.data_dir``)."""


@dataclass(frozen=True)
class PeerRun:
    """What the peer runtime adds to a run config."""

    start_round: int
    checkpoint_dir: Path
    federation: str

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> PeerRun:
        """Read the ``peer.`` keys (raises ``ValueError`` naming a missing one)."""
        missing = [
            k
            for k in (START_ROUND_KEY, CHECKPOINT_DIR_KEY, FEDERATION_KEY)
            if k not in run_config
        ]
        if missing:
            raise ValueError(f"run config lacks {missing}: not a peer-runtime run")
        return cls(
            start_round=int(run_config[START_ROUND_KEY]),
            checkpoint_dir=Path(str(run_config[CHECKPOINT_DIR_KEY])),
            federation=str(run_config[FEDERATION_KEY]),
        )


def experiment_settings(
    run_config: Mapping[str, Any], node_config: Mapping[str, Any] | None = None
) -> RunSettings:
    """Settings from the run config without the ``peer.`` keys.

    A ``data-dir`` in the SuperNode's node config replaces the data folder: peers keep
    their data wherever they like.
    """
    plain = {k: v for k, v in run_config.items() if not k.startswith(PEER_PREFIX)}
    settings = settings_from_run_config(plain)
    data_dir = (node_config or {}).get(DATA_DIR_NODE_KEY)
    if data_dir:
        settings = dataclasses.replace(settings, data_dir=str(data_dir))
    return settings


def checkpointing_evaluator(
    evaluate: Callable[[int, ArrayRecord], MetricRecord],
    store: CheckpointStore,
    start_round: int,
) -> Callable[[int, ArrayRecord], MetricRecord]:
    """Wrap ``evaluate_fn`` so each new global model is saved before it is used.

    Flower calls ``evaluate_fn`` with round 0 (the starting model) and then after
    every aggregation, immediately before the next round's instructions go out; the
    Flower round ``r`` of a run resumed at ``start_round`` is the federation's round
    ``start_round + r``.
    """

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        if server_round > 0:
            global_round = start_round + server_round
            store.save(Checkpoint(global_round, record_to_arrays(arrays)))
        return evaluate(server_round, arrays)

    return evaluate_fn


def train_config(settings: RunSettings, federation: str) -> ConfigRecord:
    """Instructions every client receives (same fields as :mod:`flp2p.app`'s)."""
    return ConfigRecord(
        {
            "epochs": settings.train.epochs,
            "batch-size": settings.train.batch_size,
            "lr": settings.train.lr,
            "momentum": settings.train.momentum,
            "federation": federation,
        }
    )


def run_peer_server(grid: Grid, context: Context) -> None:
    """Run the remaining rounds of the federation from the starting checkpoint."""
    peer = PeerRun.from_run_config(context.run_config)
    settings = experiment_settings(context.run_config)
    output_dir = Path(str(context.run_config.get("output-dir", peer.checkpoint_dir)))
    output_dir.mkdir(parents=True, exist_ok=True)
    store = CheckpointStore(peer.checkpoint_dir)
    start = store.load(peer.start_round)
    remaining = settings.rounds - peer.start_round
    if remaining <= 0:
        return
    ledger = open_run_ledger(settings, output_dir)
    try:
        extra = {} if ledger is None else {"recorder": ledger}
        strategy = build_strategy(settings, None, **extra)
        strategy.start(
            grid=grid,
            initial_arrays=arrays_to_record(dict(start.arrays)),
            num_rounds=remaining,
            train_config=train_config(settings, peer.federation),
            evaluate_fn=checkpointing_evaluator(
                central_evaluator(settings), store, peer.start_round
            ),
        )
    finally:
        if ledger is not None:
            ledger.close()


def make_peer_client_app() -> ClientApp:
    """The ClientApp of :mod:`flp2p.app`, with settings read the peer way."""
    app = ClientApp()

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        settings = experiment_settings(context.run_config, context.node_config)
        return client_train(msg, context, settings)

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        settings = experiment_settings(context.run_config, context.node_config)
        return client_evaluate(msg, context, settings)

    return app


server_app = ServerApp()
server_app.main()(run_peer_server)
"""ServerApp component of the peer runtime's Flower App."""
client_app = make_peer_client_app()
"""ClientApp component of the peer runtime's Flower App."""
