"""The flp2p Flower App: a ServerApp and a ClientApp on Flower's Message API.

The same code runs in three places:

* ``python -m flp2p.simulate`` builds both apps with :func:`make_server_app` and
  :func:`make_client_app` around validated :class:`~flp2p.config.RunSettings` and runs
  them on Flower's simulation engine;
* ``flwr run .`` loads the module-level :data:`server_app` and :data:`client_app`,
  which compose the settings from the app's run config (``[tool.flwr.app.config]``);
* the peer runtime starts the ClientApp under a Flower SuperNode.

Each training reply carries the model (``arrays``), metrics with ``num-examples`` and
an ``identity`` record — the client's persistent Ed25519 identity and its signature
over (federation, round, SHA-256 of the update) — so that aggregation can attribute,
weigh and reward every contribution (see :mod:`strategies.records`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from flp2p.attacks import Attack, AttackContext, build_attack, malicious_partitions
from flp2p.config import RunSettings, TrainSettings, build_strategy, compose
from flp2p.data import ArrayDataset, client_partition, load_dataset
from flp2p.dpsgd import (
    ACCOUNTANT_STATE_KEY,
    DPSGDSettings,
    PrivacyBudgetExceeded,
    load_accountant,
    planned_noise_multiplier,
    save_accountant,
    train_dpsgd,
)
from flp2p.identity import Identity, node_id_of
from flp2p.ledger import Ledger, LedgerError
from flp2p.ledger_broadcast import (
    LEDGER_BLOCKS_KEY,
    LedgerBroadcast,
    sync_replica,
)
from flp2p.models import (
    TrainResult,
    build_model,
    evaluate,
    get_weights,
    set_weights,
    train,
)
from flp2p.reply_tap import ReplyTap
from flp2p.reporting import PRIVACY_COLUMNS, RunReporter
from flp2p.signatures import contribution_message
from strategies.base import ScreenedFedAvg, flatten_arrays, unflatten_vector
from strategies.records import (
    ARRAYS_KEY,
    IDENTITY_ID,
    IDENTITY_KEY,
    IDENTITY_PUBLIC_KEY,
    IDENTITY_SIGNATURE,
    METRICS_KEY,
    NUM_EXAMPLES_KEY,
    update_sha256,
)

if TYPE_CHECKING:
    from opacus.accountants import IAccountant

log = logging.getLogger(__name__)

BUDGET_EXHAUSTED = 4_001
"""Error code of a reply from a client whose privacy budget is spent."""
CONFIG_KEY = "config"
"""Key of the ConfigRecord in instructions (Flower's default)."""
PartitionTable = tuple[np.ndarray, ...]


def arrays_to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named numpy arrays as a Flower ArrayRecord (order preserved)."""
    return ArrayRecord({name: Array(np.asarray(a)) for name, a in arrays.items()})


def record_to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """A Flower ArrayRecord as named numpy arrays (order preserved)."""
    return {name: record[name].numpy() for name in record}


def federation_name(settings: RunSettings) -> str:
    """The federation id a simulated run signs its contributions for."""
    return f"simulation/{settings.dataset}/{settings.seed}"


def simulated_signing_key(seed: int, partition_id: int) -> Ed25519PrivateKey:
    """A deterministic Ed25519 key per (seed, partition): stable simulated identity.

    Flower's node ids change with every registration; flp2p keys reputation by the
    public key, so the same partition must keep the same key across rounds and runs.
    """
    secret = hashlib.sha256(f"flp2p/simulation/{seed}/{partition_id}".encode())
    return Ed25519PrivateKey.from_private_bytes(secret.digest())


def simulated_identity(seed: int, partition_id: int) -> str:
    """The node id under which a simulated partition signs (and earns reputation)."""
    public = simulated_signing_key(seed, partition_id).public_key()
    return node_id_of(public.public_bytes(Encoding.Raw, PublicFormat.Raw))


def identity_record(
    key: Ed25519PrivateKey | Identity, federation: str, server_round: int, digest: str
) -> ConfigRecord:
    """The reply's ``identity`` record: node id, public key, contribution signature."""
    public = (
        key.public_key
        if isinstance(key, Identity)
        else key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    )
    signature = key.sign(contribution_message(federation, server_round, digest))
    return ConfigRecord(
        {
            IDENTITY_ID: node_id_of(public),
            IDENTITY_PUBLIC_KEY: public,
            IDENTITY_SIGNATURE: signature,
        }
    )


def initial_model(settings: RunSettings) -> torch.nn.Module:
    """The global model of round 0, identical for a given seed."""
    data = load_dataset(settings.dataset, settings.data_dir)
    torch.manual_seed(settings.seed)
    return build_model(data.image_shape, data.num_classes)


# --------------------------------------------------------------------------- client


def _partition(
    settings: RunSettings,
    partition_id: int,
    num_partitions: int,
    partitions: PartitionTable | None,
) -> ArrayDataset:
    if partitions is not None:
        data = load_dataset(settings.dataset, settings.data_dir)
        return data.train.subset(partitions[partition_id])
    return client_partition(
        settings.dataset,
        partition_id,
        num_partitions,
        settings.partition_scheme,
        settings.alpha,
        settings.seed,
        settings.data_dir,
    )


def _client_data(
    settings: RunSettings, context: Context, partitions: PartitionTable | None
) -> tuple[int, ArrayDataset]:
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config.get("num-partitions", settings.clients))
    return partition_id, _partition(settings, partition_id, num_partitions, partitions)


def _number(config: ConfigRecord, key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"instruction field {key!r} must be a number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Participant:
    """A real participant's side of the ClientApp (the peer runtime; not simulation).

    Attributes
    ----------
    identity : Identity
        The peer's persistent key: it signs every training reply, so reputation and
        rewards follow the peer, not a partition number.
    federation : str
        The federation the peer joined; it signs for this one only, whatever an
        instruction names.
    ledger : Path or None
        The peer's copy of the ledger, to which the blocks instructions carry are
        appended once verified.
    aggregators : frozenset[str]
        Node ids the federation's genesis allows to aggregate: the only signers of
        ledger blocks the peer accepts.
    """

    identity: Identity
    federation: str
    ledger: Path | None = None
    aggregators: frozenset[str] = frozenset()


@dataclass(frozen=True)
class LocalTask:
    """One round's instruction to a client, as received.

    ``round_offset`` is the number of federation rounds finished before the run
    that sent the instruction started (the peer runtime resumes a federation in a
    new Flower run after a failover, and Flower counts that run's rounds from 1).
    """

    server_round: int
    global_arrays: dict[str, np.ndarray]
    train: TrainSettings
    federation: str
    round_offset: int = 0

    @property
    def federation_round(self) -> int:
        """The round in the federation's count, which contributions are signed for."""
        return self.round_offset + self.server_round

    @classmethod
    def from_message(cls, msg: Message, settings: RunSettings) -> LocalTask:
        config = msg.content.config_records[CONFIG_KEY]
        defaults = settings.train
        return cls(
            server_round=int(_number(config, "server-round", 0)),
            global_arrays=record_to_arrays(msg.content.array_records[ARRAYS_KEY]),
            train=TrainSettings(
                epochs=int(_number(config, "epochs", defaults.epochs)),
                batch_size=int(_number(config, "batch-size", defaults.batch_size)),
                lr=_number(config, "lr", defaults.lr),
                momentum=_number(config, "momentum", defaults.momentum),
                max_steps=int(_number(config, "max-steps", 0)) or None,
            ),
            federation=str(config.get("federation", federation_name(settings))),
            round_offset=int(_number(config, "round-offset", 0)),
        )


def train_locally(
    settings: RunSettings,
    task: LocalTask,
    local: ArrayDataset,
    partition_id: int,
    private: PrivateTraining | None = None,
) -> tuple[dict[str, np.ndarray], TrainResult]:
    """Train the task's global model on ``local``; return new weights and stats.

    With ``private`` the client trains with DP-SGD and its accountant accumulates
    the spend (raising :class:`PrivacyBudgetExceeded` before a round over budget).
    """
    data = load_dataset(settings.dataset, settings.data_dir)
    model = build_model(data.image_shape, data.num_classes)
    set_weights(model, task.global_arrays)
    hyper = task.train
    schedule: dict[str, Any] = {
        "epochs": hyper.epochs,
        "batch_size": hyper.batch_size,
        "lr": hyper.lr,
        "momentum": hyper.momentum,
        "max_steps": hyper.max_steps,
        "seed": settings.seed * 1_000_003 + task.server_round * 1_009 + partition_id,
    }
    if private is None:
        result = train(model, local.images, local.labels, **schedule)
    else:
        dp = private.settings
        result = train_dpsgd(
            model,
            local.images,
            local.labels,
            **schedule,
            noise_multiplier=planned_noise_multiplier(
                dp,
                len(local),
                hyper.batch_size,
                hyper.epochs,
                settings.rounds,
                hyper.max_steps,
            ),
            max_grad_norm=dp.max_grad_norm,
            accountant=private.accountant,
            epsilon_budget=dp.budget,
            delta=dp.delta,
            secure_mode=dp.secure_mode,
        )
    return get_weights(model), result


@dataclass(frozen=True)
class PrivateTraining:
    """A DP-SGD client's settings and its cross-round accountant."""

    settings: DPSGDSettings
    accountant: IAccountant

    @property
    def epsilon(self) -> float:
        """ε spent so far at the configured δ."""
        return float(self.accountant.get_epsilon(delta=self.settings.delta))


_BENIGN_CACHE: dict[tuple[int, str, int], np.ndarray] = {}


def colluders_benign_deltas(
    settings: RunSettings,
    task: LocalTask,
    colluders: frozenset[int],
    partitions: PartitionTable | None,
) -> np.ndarray:
    """Benign updates of every malicious partition (the attackers' shared knowledge).

    Cached per worker process and round, so that the attackers one Ray worker hosts
    train each colluding partition once rather than once per attacker.
    """
    round_key = update_sha256(task.global_arrays)
    for stale in [k for k in _BENIGN_CACHE if k[1] != round_key]:
        del _BENIGN_CACHE[stale]
    global_vector = flatten_arrays(task.global_arrays)
    rows = []
    for pid in sorted(colluders):
        key = (task.server_round, round_key, pid)
        if key not in _BENIGN_CACHE:
            local = _partition(settings, pid, settings.clients, partitions)
            arrays, _ = train_locally(settings, task, local, pid)
            _BENIGN_CACHE[key] = flatten_arrays(arrays) - global_vector
        rows.append(_BENIGN_CACHE[key])
    return np.stack(rows)


PREVIOUS_DELTA_KEY = "flp2p-attack-previous"


def _sync_ledger(
    msg: Message,
    path: Path,
    partition_id: int,
    federation: str,
    signer_ids: frozenset[str] | None = None,
) -> dict[str, int | float | list[int] | list[float]]:
    """Verify and append the blocks the instruction carries to this client's copy."""
    config = msg.content.config_records[CONFIG_KEY]
    blocks = config.get(LEDGER_BLOCKS_KEY)
    if not isinstance(blocks, list) or not blocks:
        return {}
    try:
        height = sync_replica(
            path, federation, [b for b in blocks if isinstance(b, bytes)], signer_ids
        )
    except LedgerError as refused:
        log.warning("client %d refused a ledger block: %s", partition_id, refused)
        return {"ledger-refused": 1}
    return {} if height is None else {"ledger-height": height}


def client_train(
    msg: Message,
    context: Context,
    settings: RunSettings,
    partitions: PartitionTable | None = None,
    replica_dir: Path | None = None,
    participant: Participant | None = None,
) -> Message:
    """Train the received global model on this client's partition; sign the result.

    A client the configured attack controls poisons its data and/or its update here
    (see :mod:`flp2p.attacks`); honest clients are untouched by that code path.
    In simulation the reply is signed with the partition's simulated key for the
    instruction's federation and round; a real ``participant`` signs with its own
    identity, for its own federation and the federation's round count.
    """
    torch.set_num_threads(settings.client_threads)
    partition_id, local = _client_data(settings, context, partitions)
    task = LocalTask.from_message(msg, settings)
    colluders = malicious_partitions(
        settings.clients, float(settings.attack.get("fraction", 0.0)), settings.seed
    )
    attack = build_attack(settings.attack) if partition_id in colluders else None
    num_classes = load_dataset(settings.dataset, settings.data_dir).num_classes
    if attack is not None:
        images, labels = attack.poison_data(local.images, local.labels, num_classes)
        local = ArrayDataset(images, labels)
    private = _private_training(settings, context)
    try:
        arrays, result = train_locally(settings, task, local, partition_id, private)
    except PrivacyBudgetExceeded as exhausted:
        log.warning("client %d stops participating: %s", partition_id, exhausted)
        return Message(
            Error(code=BUDGET_EXHAUSTED, reason=str(exhausted)), reply_to=msg
        )
    metrics: dict[str, int | float | list[int] | list[float]] = {
        "train-loss-before": result.loss_before,
        "train-loss": result.loss_after,
    }
    if private is not None:
        context.state[ACCOUNTANT_STATE_KEY] = save_accountant(private.accountant)
        metrics.update(
            {"dp-epsilon": private.epsilon, "dp-delta": private.settings.delta}
        )
    num_examples = result.num_examples
    if attack is not None:
        arrays = _attack_update(
            attack, arrays, task, context, settings, colluders, partitions
        )
        num_examples = attack.claimed_examples(num_examples)
    metrics[NUM_EXAMPLES_KEY] = num_examples
    key: Ed25519PrivateKey | Identity
    if participant is None:
        if replica_dir is not None:
            replica = replica_dir / f"client-{partition_id}.db"
            metrics.update(_sync_ledger(msg, replica, partition_id, task.federation))
        key = simulated_signing_key(settings.seed, partition_id)
        federation, signed_round = task.federation, task.server_round
    else:
        if participant.ledger is not None:
            metrics.update(
                _sync_ledger(
                    msg,
                    participant.ledger,
                    partition_id,
                    participant.federation,
                    participant.aggregators,
                )
            )
        key = participant.identity
        federation, signed_round = participant.federation, task.federation_round
    content = RecordDict(
        {
            ARRAYS_KEY: arrays_to_record(arrays),
            METRICS_KEY: MetricRecord(metrics),
            IDENTITY_KEY: identity_record(
                key, federation, signed_round, update_sha256(arrays)
            ),
        }
    )
    return Message(content=content, reply_to=msg)


def _private_training(
    settings: RunSettings, context: Context
) -> PrivateTraining | None:
    if settings.privacy_name != "dpsgd":
        return None
    dp = DPSGDSettings.from_spec(settings.privacy)
    state = context.state.config_records.get(ACCOUNTANT_STATE_KEY)
    return PrivateTraining(dp, load_accountant(state, dp.accountant))


def _attack_update(
    attack: Attack,
    arrays: dict[str, np.ndarray],
    task: LocalTask,
    context: Context,
    settings: RunSettings,
    colluders: frozenset[int],
    partitions: PartitionTable | None,
) -> dict[str, np.ndarray]:
    global_vector = flatten_arrays(task.global_arrays)
    previous = context.state.array_records.get(PREVIOUS_DELTA_KEY)
    attack_ctx = AttackContext(
        honest_delta=flatten_arrays(arrays) - global_vector,
        benign_deltas=lambda: colluders_benign_deltas(
            settings, task, colluders, partitions
        ),
        num_malicious=len(colluders),
        num_clients=settings.clients,
        rng=np.random.default_rng([settings.seed, task.server_round, len(arrays)]),
        previous_delta=None
        if previous is None
        else flatten_arrays(record_to_arrays(previous)),
    )
    delta = attack.poison_update(attack_ctx)
    context.state[PREVIOUS_DELTA_KEY] = arrays_to_record({"delta": delta})
    return unflatten_vector(global_vector + delta, task.global_arrays)


def client_evaluate(
    msg: Message,
    context: Context,
    settings: RunSettings,
    partitions: PartitionTable | None = None,
) -> Message:
    """Evaluate the received global model on this client's partition."""
    torch.set_num_threads(settings.client_threads)
    _, local = _client_data(settings, context, partitions)
    data = load_dataset(settings.dataset, settings.data_dir)
    model = build_model(data.image_shape, data.num_classes)
    set_weights(model, record_to_arrays(msg.content.array_records[ARRAYS_KEY]))
    loss, accuracy = evaluate(model, local.images, local.labels)
    metrics = MetricRecord(
        {NUM_EXAMPLES_KEY: len(local), "eval-loss": loss, "eval-accuracy": accuracy}
    )
    return Message(content=RecordDict({METRICS_KEY: metrics}), reply_to=msg)


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
    app = ClientApp()

    def resolve(context: Context) -> RunSettings:
        return settings or settings_from_run_config(context.run_config)

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        return client_train(msg, context, resolve(context), partitions, replica_dir)

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return client_evaluate(msg, context, resolve(context), partitions)

    return app


# --------------------------------------------------------------------------- server


def central_evaluator(
    settings: RunSettings, on_round: Callable[[int, float, float], None] | None = None
) -> Callable[[int, ArrayRecord], MetricRecord]:
    """``evaluate_fn`` for :meth:`Strategy.start`: global model on the test set."""
    data = load_dataset(settings.dataset, settings.data_dir)
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
    )
    reporter.extra_summary.update(
        {
            "strategy": settings.strategy_name,
            "attack": settings.attack_name,
            "privacy": settings.privacy_name,
            "dataset": settings.dataset,
            "clients": settings.clients,
            "seed": settings.seed,
        }
    )
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


def privacy_spent(strategy: Any) -> Callable[[], dict[str, float]] | None:
    """Reads ε and δ after each round from a strategy with central DP, if any.

    Client-side DP-SGD's ε comes from the replies instead (:mod:`flp2p.reply_tap`).
    """
    if not hasattr(strategy, "epsilon"):
        return None
    return lambda: {"epsilon": strategy.epsilon, "delta": strategy.delta}


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
