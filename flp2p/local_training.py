"""Plain local training and evaluation: the core every flp2p ClientApp wraps.

:func:`client_train` trains the received global model on this client's partition and
replies with the new model and its training metrics; :func:`client_evaluate` scores
the received model on the partition. Nothing here signs, attacks, syncs a ledger or
keeps privacy accounts: those are client mods (:mod:`flp2p.client_mods`) around these
functions, and the simulation and the peer runtime differ only in which mods, keys and
replicas they give them.

Two fields a mod may add to the instruction it forwards change *what* is trained, and
only that: :data:`~flp2p.dpsgd.DPSGD_KEY` (train with DP-SGD under the accountant the
record carries; the reply carries the accountant back) and :data:`TRAINING_DATA_KEY`
(train on these examples instead of the partition).
"""

from __future__ import annotations

import dataclasses
import functools
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import SType

from flp2p.config import RunSettings, TrainSettings
from flp2p.data import ArrayDataset, client_partition
from flp2p.dpsgd import (
    DPSGD_KEY,
    PrivateTraining,
    planned_noise_multiplier,
    save_accountant,
    train_dpsgd,
)
from flp2p.models import (
    TrainResult,
    build_model,
    evaluate,
    get_weights,
    set_weights,
    train,
)
from flp2p.partition_files import PartitionKey, open_partition
from flp2p.round_timings import note
from strategies.records import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY, NUM_EXAMPLES_KEY
from strategies.validation import decode_array

"""Key of the ConfigRecord in instructions (Flower's default)."""
TRAINING_DATA_KEY = "flp2p-training-data"
"""ArrayRecord (``images``, ``labels``) a mod may put in an instruction: the examples
to train on instead of the client's partition (a data-poisoning attack's)."""
PartitionTable = tuple[np.ndarray, ...]
"""One index array per client into the training split, computed once by a driver."""
PARTITION_DIR_NODE_KEY = "partition-dir"
"""Node-config key: a folder holding this node's partition, prepared once by the
long-lived peer process (:mod:`flp2p.partition_files`); the ClientApp maps it
instead of loading and splitting the data set every round."""


def arrays_to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named numpy arrays as a Flower ArrayRecord (order preserved)."""
    return ArrayRecord({name: numpy_array(np.asarray(a)) for name, a in arrays.items()})


def record_to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """A Flower ArrayRecord as named numpy arrays (order preserved).

    Writable copies, as ``Array.numpy()`` returns them, decoded by
    :func:`~strategies.validation.decode_array`: ``np.load`` parses each ``.npy``
    header with ``ast.literal_eval``, about 0.3 ms per array, and a simulated client
    decodes its instruction's model and its reply's three times per round.
    """
    return {name: decode_array(record[name]).copy(order="K") for name in record}


def numpy_array(values: np.ndarray) -> Array:
    """``Array(values)``, the same bytes (``.npy`` header, then the values), with
    the header built once per dtype, shape and memory order.

    ``np.save`` formats the header dictionary anew for every array; a client
    encodes a model per reply, a dozen arrays. Arrays ``np.save`` writes in another
    way (object or structured dtypes) take Flower's own path.
    """
    if values.dtype.kind not in _PLAIN_DTYPE_KINDS or values.dtype.metadata:
        return Array(values)
    fortran = bool(values.flags.f_contiguous and not values.flags.c_contiguous)
    header = _npy_header(values.dtype, values.shape, fortran)
    return Array(
        dtype=str(values.dtype),
        shape=tuple(values.shape),
        stype=SType.NUMPY,
        data=header + values.tobytes(order="F" if fortran else "C"),
    )


_PLAIN_DTYPE_KINDS = frozenset("biufc")
"""Dtype kinds whose ``.npy`` payload is the raw values (``numpy.lib.format``)."""


@functools.lru_cache(maxsize=256)
def _npy_header(dtype: np.dtype[Any], shape: tuple[int, ...], fortran: bool) -> bytes:
    """The ``.npy`` header ``np.save`` writes for an array of this form: format 1.0,
    or 2.0 when the header does not fit 1.0's 16-bit length (as ``np.save`` picks)."""
    fields = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": fortran,
        "shape": shape,
    }
    buffer = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buffer, fields)
    except ValueError:
        buffer = io.BytesIO()
        np.lib.format.write_array_header_2_0(buffer, fields)
    return buffer.getvalue()


def federation_name(settings: RunSettings) -> str:
    """The federation id a simulated run signs its contributions for."""
    return f"simulation/{settings.dataset}/{settings.seed}"


def initial_model(settings: RunSettings) -> torch.nn.Module:
    """The global model of round 0, identical for a given seed."""
    torch.manual_seed(settings.seed)
    return build_model(*settings.data.model_shape)


def partition_data(
    settings: RunSettings,
    partition_id: int,
    num_partitions: int,
    partitions: PartitionTable | None = None,
) -> ArrayDataset:
    """The training examples of one partition (from ``partitions`` when given)."""
    if partitions is not None:
        data = settings.data.load()
        return data.train.subset(partitions[partition_id])
    return client_partition(
        settings.data,
        partition_id,
        num_partitions,
        settings.partition_scheme,
        settings.alpha,
        settings.seed,
    )


def partition_key(
    settings: RunSettings, partition_id: int, num_partitions: int
) -> PartitionKey:
    """The key of partition ``partition_id`` of ``num_partitions`` (``settings``)."""
    return PartitionKey(
        dataset=settings.dataset,
        partition_id=partition_id,
        num_partitions=num_partitions,
        scheme=settings.partition_scheme,
        alpha=float(settings.alpha),
        seed=settings.seed,
        data_dir=settings.data_dir,
    )


def partition_id_of(context: Context) -> int:
    """The partition this node trains on (``partition-id`` of its node config)."""
    return int(context.node_config["partition-id"])


def node_data(
    settings: RunSettings, context: Context, partitions: PartitionTable | None = None
) -> ArrayDataset:
    """This node's partition of the training split: the prepared one its node
    config names (:data:`PARTITION_DIR_NODE_KEY`) when it matches, else computed."""
    num_partitions = int(context.node_config.get("num-partitions", settings.clients))
    partition_id = partition_id_of(context)
    prepared = context.node_config.get(PARTITION_DIR_NODE_KEY)
    if prepared and partitions is None:
        key = partition_key(settings, partition_id, num_partitions)
        stored = open_partition(Path(str(prepared)), key)
        if stored is not None:
            return stored
    return partition_data(settings, partition_id, num_partitions, partitions)


def instruction_number(config: ConfigRecord, key: str, default: float) -> float:
    """A numeric field of an instruction (``ValueError`` naming it otherwise)."""
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"instruction field {key!r} must be a number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class LocalTask:
    """One round's instruction to a client, as received.

    ``round_offset`` is the number of federation rounds finished before the run
    that sent the instruction started (the peer runtime resumes a federation in a
    new Flower run after a failover, and Flower counts that run's rounds from 1).
    ``private`` and ``training_data`` are what the client's own mods asked for
    (:data:`~flp2p.dpsgd.DPSGD_KEY`, :data:`TRAINING_DATA_KEY`).
    """

    server_round: int
    global_arrays: dict[str, np.ndarray]
    train: TrainSettings
    federation: str
    round_offset: int = 0
    private: PrivateTraining | None = None
    training_data: ArrayDataset | None = None

    @property
    def federation_round(self) -> int:
        """The round in the federation's count, which contributions are signed for."""
        return self.round_offset + self.server_round

    @classmethod
    def from_message(cls, msg: Message, settings: RunSettings) -> LocalTask:
        config = msg.content.config_records[CONFIG_KEY]
        defaults = settings.train
        number = functools.partial(instruction_number, config)
        private = msg.content.config_records.get(DPSGD_KEY)
        data = msg.content.array_records.get(TRAINING_DATA_KEY)
        return cls(
            server_round=int(number("server-round", 0)),
            global_arrays=record_to_arrays(msg.content.array_records[ARRAYS_KEY]),
            train=TrainSettings(
                epochs=int(number("epochs", defaults.epochs)),
                batch_size=int(number("batch-size", defaults.batch_size)),
                lr=number("lr", defaults.lr),
                momentum=number("momentum", defaults.momentum),
                max_steps=int(number("max-steps", 0)) or None,
            ),
            federation=str(config.get("federation", federation_name(settings))),
            round_offset=int(number("round-offset", 0)),
            private=None if private is None else PrivateTraining.from_record(private),
            training_data=None
            if data is None
            else ArrayDataset(data["images"].numpy(), data["labels"].numpy()),
        )

    def honest(self) -> LocalTask:
        """The same round as the server sent it, before any of the client's mods."""
        return dataclasses.replace(self, private=None, training_data=None)


def training_data_record(data: ArrayDataset) -> ArrayRecord:
    """``data`` as the :data:`TRAINING_DATA_KEY` record of an instruction."""
    return arrays_to_record({"images": data.images, "labels": data.labels})


def train_locally(
    settings: RunSettings, task: LocalTask, local: ArrayDataset, partition_id: int
) -> tuple[dict[str, np.ndarray], TrainResult]:
    """Train the task's global model on ``local``; return new weights and stats.

    With ``task.private`` the client trains with DP-SGD and that accountant
    accumulates the spend (raising :class:`~flp2p.dpsgd.PrivacyBudgetExceeded`
    before a round over budget).
    """
    model = build_model(*settings.data.model_shape)
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
    private = task.private
    if private is None:
        result = train(model, local.images, local.labels, **schedule)
    else:
        dp = private.settings
        result = train_dpsgd(
            model,
            # Opacus wraps the arrays as tensors: a memory-mapped partition is
            # read-only, so hand it a copy.
            np.array(local.images),
            np.array(local.labels),
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


def client_train(
    msg: Message,
    context: Context,
    settings: RunSettings,
    partitions: PartitionTable | None = None,
) -> Message:
    """Train the received global model on this client's partition; reply with it.

    The reply holds the new model (``arrays``) and ``metrics`` with the loss before
    and after training and ``num-examples``; under DP-SGD also the accountant's new
    history (:data:`~flp2p.dpsgd.DPSGD_KEY`), for the mod that asked for it.
    """
    torch.set_num_threads(settings.client_threads)
    task = LocalTask.from_message(msg, settings)
    local = (
        node_data(settings, context, partitions)
        if task.training_data is None
        else task.training_data
    )
    stamp: dict[str, Any] = {
        "round": str(task.server_round),
        "partition": partition_id_of(context),
    }
    note("data-ready", **stamp)
    arrays, result = train_locally(settings, task, local, partition_id_of(context))
    note("trained", **stamp)
    metrics = MetricRecord(
        {
            "train-loss-before": result.loss_before,
            "train-loss": result.loss_after,
            NUM_EXAMPLES_KEY: result.num_examples,
        }
    )
    content = RecordDict({ARRAYS_KEY: arrays_to_record(arrays), METRICS_KEY: metrics})
    if task.private is not None:
        content[DPSGD_KEY] = save_accountant(task.private.accountant)
    return Message(content=content, reply_to=msg)


def client_evaluate(
    msg: Message,
    context: Context,
    settings: RunSettings,
    partitions: PartitionTable | None = None,
) -> Message:
    """Evaluate the received global model on this client's partition."""
    torch.set_num_threads(settings.client_threads)
    local = node_data(settings, context, partitions)
    model = build_model(*settings.data.model_shape)
    set_weights(model, record_to_arrays(msg.content.array_records[ARRAYS_KEY]))
    loss, accuracy = evaluate(model, local.images, local.labels)
    metrics = MetricRecord(
        {NUM_EXAMPLES_KEY: len(local), "eval-loss": loss, "eval-accuracy": accuracy}
    )
    return Message(content=RecordDict({METRICS_KEY: metrics}), reply_to=msg)
