"""The flp2p Flower App: a ServerApp and a ClientApp on Flower's Message API.

The same code runs in three places:

* ``python -m flp2p.simulate`` builds both apps with :func:`make_server_app` and
  :func:`make_client_app` around validated :class:`~flp2p.config.RunSettings` and runs
  them on Flower's simulation engine;
* ``flwr run .`` loads the module-level :data:`server_app` and :data:`client_app`,
  which compose the settings from the app's run config (``[tool.flwr.app.config]``);
* the peer runtime starts the ClientApp of :mod:`flp2p.peer.federation_app`, the
  same training with the participant's own key and ledger, under a Flower SuperNode.

The ClientApp is plain local training (:mod:`flp2p.local_training`) inside client
mods (:mod:`flp2p.client_mods`): each training reply carries the model
(``arrays``), metrics with ``num-examples`` and an ``identity`` record — the
client's persistent Ed25519 identity and its signature over (federation, round,
SHA-256 of the update) — so that aggregation can attribute, weigh and reward every
contribution (see :mod:`strategies.records`).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.serverapp import Grid, ServerApp

from flp2p.client_mods import (
    SettingsOf,
    StateResidual,
    attack_mod,
    compression_mod,
    dpsgd_mod,
    ledger_sync_mod,
    signing_mod,
    simulated_identity,
    simulated_replicas,
    simulated_signer,
    simulated_signing_key,
)
from flp2p.config import RunSettings, build_strategy, compose
from flp2p.identity import Identity
from flp2p.ledger import Ledger
from flp2p.ledger_broadcast import LedgerBroadcast
from flp2p.local_training import (
    PartitionTable,
    arrays_to_record,
    client_evaluate,
    client_train,
    federation_name,
    initial_model,
    record_to_arrays,
)
from flp2p.models import build_model, evaluate, get_weights, set_weights
from flp2p.reply_tap import ReplyTap
from flp2p.reporting import PRIVACY_COLUMNS, RunReporter
from strategies.base import ScreenedFedAvg

__all__ = [
    "arrays_to_record",
    "client_app",
    "federation_name",
    "initial_model",
    "make_client_app",
    "make_server_app",
    "record_to_arrays",
    "server_app",
    "simulated_identity",
    "simulated_signing_key",
]

# --------------------------------------------------------------------------- client


def simulation_train_mods(
    settings_of: SettingsOf,
    partitions: PartitionTable | None = None,
    replica_dir: Path | None = None,
) -> list[Mod]:
    """The simulation's training mods: partition keys, a replica per partition,
    error-feedback residuals in each node's context state."""
    return [
        signing_mod(simulated_signer(settings_of)),
        compression_mod(settings_of, lambda _context: StateResidual()),
        ledger_sync_mod(simulated_replicas(settings_of, replica_dir)),
        attack_mod(settings_of, partitions),
        dpsgd_mod(settings_of),
    ]


def settings_resolver(settings: RunSettings | None) -> SettingsOf:
    """``settings``, or those a node's run config composes (once per run config)."""
    if settings is not None:
        fixed = settings
        return lambda _context: fixed

    @functools.lru_cache(maxsize=4)
    def composed(run_config: tuple[tuple[str, Any], ...]) -> RunSettings:
        return settings_from_run_config(dict(run_config))

    return lambda context: composed(tuple(sorted(context.run_config.items())))


def make_client_app(
    settings: RunSettings | None = None,
    partitions: PartitionTable | None = None,
    replica_dir: Path | None = None,
) -> ClientApp:
    """A ClientApp bound to ``settings`` (or composing them from the run config).

    ``partitions`` (one index array per client) may be computed once by the driver
    and shipped with the app, so virtual clients do not each recompute the split.
    With ``replica_dir`` each client keeps a verified copy of the aggregator's
    ledger there (``client-<partition>.db``).
    """
    settings_of = settings_resolver(settings)
    app = ClientApp()

    @app.train(mods=simulation_train_mods(settings_of, partitions, replica_dir))
    def _train(msg: Message, context: Context) -> Message:
        return client_train(msg, context, settings_of(context), partitions)

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return client_evaluate(msg, context, settings_of(context), partitions)

    return app


# --------------------------------------------------------------------------- server


def central_evaluator(
    settings: RunSettings, on_round: Callable[[int, float, float], None] | None = None
) -> Callable[[int, ArrayRecord], MetricRecord]:
    """``evaluate_fn`` for :meth:`Strategy.start`: global model on the test set."""
    data = settings.data.load()
    model = build_model(data.image_shape, data.num_classes)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        set_weights(model, record_to_arrays(arrays))
        loss, accuracy = evaluate(model, data.test.images, data.test.labels)
        if on_round is not None:
            on_round(server_round, accuracy, loss)
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    return evaluate_fn


LEDGER_FILE = "ledger.db"
REPLICA_DIR = "replicas"


def aggregator_identity(settings: RunSettings) -> Identity:
    """The simulated aggregator's signing identity (deterministic per seed)."""
    secret = hashlib.sha256(f"flp2p/simulation/{settings.seed}/aggregator".encode())
    return Identity.from_private_bytes(secret.digest())


def open_run_ledger(settings: RunSettings, output_dir: Path) -> Ledger | None:
    """The aggregator's ledger for this run, if the strategy can record into one.

    ``ledger.path`` names a file that outlives the run (reputation then carries
    over to the next run of the same federation); by default it is the run folder's.
    Flower's built-in strategies report no verdicts, so they get no ledger.
    """
    if not settings.ledger_enabled or not records_rounds(settings):
        return None
    path = (
        Path(settings.ledger_path) if settings.ledger_path else output_dir / LEDGER_FILE
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    return Ledger.open(
        path,
        federation=federation_name(settings),
        signer=aggregator_identity(settings),
        create=True,
    )


def records_rounds(settings: RunSettings) -> bool:
    """Whether the configured strategy reports verdicts a ledger can record."""
    from hydra.utils import get_class

    try:
        return issubclass(get_class(str(settings.strategy["_target_"])), ScreenedFedAvg)
    except Exception:  # an unimportable target is reported by build_strategy
        return False


def run_server(grid: Grid, settings: RunSettings, output_dir: Path) -> dict[str, Any]:
    """Run the federation from the ServerApp and write its results.

    Returns the summary that is also written to ``summary.json``.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    ledger = open_run_ledger(settings, output_dir)
    try:
        wrap = None
        if ledger is not None and settings.ledger_replicate:

            def wrap(strategy: Any) -> Any:
                return LedgerBroadcast(strategy, ledger)

        extra = {} if ledger is None else {"recorder": ledger}
        strategy = build_strategy(settings, wrap, **extra)
        return _run_strategy(grid, settings, output_dir, strategy, ledger)
    finally:
        if ledger is not None:
            ledger.close()


def train_config(
    settings: RunSettings, federation: str, round_offset: int = 0
) -> ConfigRecord:
    """Instructions every client receives with the global model.

    ``round-offset`` tells clients how many federation rounds preceded this run (the
    peer runtime resumes a federation in a new Flower run), so they sign for the
    federation's round rather than Flower's.
    """
    return ConfigRecord(
        {
            "epochs": settings.train.epochs,
            "batch-size": settings.train.batch_size,
            "lr": settings.train.lr,
            "momentum": settings.train.momentum,
            "max-steps": settings.train.max_steps or 0,  # 0: no cap
            "federation": federation,
            "round-offset": round_offset,
        }
    )


def _run_strategy(
    grid: Grid,
    settings: RunSettings,
    output_dir: Path,
    strategy: Any,
    ledger: Ledger | None,
) -> dict[str, Any]:
    model = initial_model(settings)
    reporter = run_reporter(settings, output_dir, strategy, ledger)
    with reporter:
        strategy.start(
            # The tap shows the reporter every reply's metrics (each client's ε),
            # whatever the strategy makes of them.
            grid=ReplyTap(grid, reporter.train_replies),
            initial_arrays=arrays_to_record(get_weights(model)),
            num_rounds=settings.rounds,
            train_config=train_config(settings, federation_name(settings)),
            evaluate_fn=central_evaluator(settings, reporter.round_done),
        )
        if ledger is not None:
            reporter.extra_summary["ledger_height"] = ledger.height
    return reporter.summary("completed")


def run_reporter(
    settings: RunSettings,
    output_dir: Path,
    strategy: Any,
    ledger: Ledger | None,
    resume_round: int = 0,
) -> RunReporter:
    """The reporter of a run of ``settings`` (simulation, or a peer aggregator that
    continues the folder's files from ``resume_round``)."""
    title = (
        f"{settings.strategy_name} · {settings.dataset} · {settings.clients} clients"
    )
    reporter = RunReporter(
        output_dir,
        settings.rounds,
        title=title,
        show_progress=settings.progress,
        plot=settings.plot,
        live_values=privacy_spent(strategy),
        privacy_columns=PRIVACY_COLUMNS.get(settings.privacy_name, ()),
        ledger=ledger,
        resume_round=resume_round,
    )
    reporter.extra_summary.update(
        {
            "strategy": settings.strategy_name,
            "attack": settings.attack_name,
            "privacy": settings.privacy_name,
            "compression": settings.compression.name,
            "dataset": settings.dataset,
            "clients": settings.clients,
            "seed": settings.seed,
            "settings_sha256": settings.fingerprint,
        }
    )
    return reporter


def privacy_spent(strategy: Any) -> Callable[[], dict[str, float]] | None:
    """Reads ε, δ and the clip norm after each round from a central-DP strategy, if any.

    Client-side DP-SGD's ε comes from the replies instead (:mod:`flp2p.reply_tap`).
    """
    if not hasattr(strategy, "epsilon"):
        return None
    return lambda: {
        "epsilon": strategy.epsilon,
        "delta": strategy.delta,
        "clip_norm": strategy.clipping.clip_norm,
    }


def make_server_app(settings: RunSettings | None, output_dir: Path | None) -> ServerApp:
    """A ServerApp bound to ``settings`` (or composing them from the run config)."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        resolved = settings or settings_from_run_config(context.run_config)
        target = output_dir or Path(
            str(context.run_config.get("output-dir", "outputs/flwr-run"))
        )
        run_server(grid, resolved, target)

    return app


def settings_from_run_config(run_config: Mapping[str, Any]) -> RunSettings:
    """Compose settings from a Flower run config (``flwr run . -c 'rounds=3'``).

    Each key of the run config other than ``output-dir`` becomes a Hydra override,
    so ``strategy="fedmedian"`` selects ``conf/strategy/fedmedian.yaml``.
    """
    overrides = [f"{k}={v}" for k, v in run_config.items() if k != "output-dir"]
    return RunSettings.from_config(compose(overrides))


server_app = make_server_app(None, None)
"""ServerApp for ``flwr run .`` (settings from the run config)."""
client_app = make_client_app(None)
"""ClientApp for ``flwr run .`` and for SuperNodes started by the peer runtime."""
