"""Flower client mods around plain local training, one concern each.

A mod has Flower's signature ``(Message, Context, call_next) -> Message`` (see
``flwr.clientapp.mod.fixedclipping_mod``): it may change the instruction before
``call_next`` and the reply after it. The training ClientApp of flp2p is::

    @app.train(mods=[signing_mod(...), compression_mod(...), ledger_sync_mod(...),
                     attack_mod(...), dpsgd_mod(...)])
    def train(msg, context): return client_train(msg, context, settings)

Order matters and is this one: the first mod is the outermost, so the signature
covers the final update, attacks included, and the DP-SGD accountant is charged for
the data the client actually trained on. Compression sits right inside signing: it
replaces the model by a compressed delta, and signing signs the update that payload
decodes to (:func:`strategies.update_codecs.decoded_update`, the function the
aggregator's validation decodes it with), so the signature covers exactly what the
aggregator verifies, whatever the codec. Every mod passes an error reply through
untouched (a client out of privacy budget neither syncs, attacks nor signs).

The simulation (:func:`flp2p.app.make_client_app`) and the peer runtime
(:func:`flp2p.peer.federation_app.make_peer_client_app`) use the same five mods and
differ only in what they give them: a simulated partition key or the participant's
own identity, a replica per partition or the participant's ledger, the instruction's
federation or the one the participant joined, an error-feedback residual in the
node's context state or in the participant's work folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.app.message import make_message
from flwr.clientapp.typing import ClientAppCallable, Mod

from flp2p.attacks import AttackContext, SybilWave
from flp2p.config import RunSettings
from flp2p.data import ArrayDataset
from flp2p.dpsgd import (
    ACCOUNTANT_STATE_KEY,
    DPSGD_KEY,
    DPSGDSettings,
    PrivacyBudgetExceeded,
    PrivateTraining,
    load_accountant,
)
from flp2p.identity import Identity, node_id_of
from flp2p.ledger import Block, Ledger, LedgerError
from flp2p.ledger_broadcast import (
    LEDGER_BLOCKS_KEY,
    LEDGER_COSIGNATURES_KEY,
    LEDGER_HEIGHT_METRIC,
    LEDGER_REFUSED_METRIC,
    decode_cosignatures,
    sync_replica,
)
from flp2p.local_training import (
    CONFIG_KEY,
    TRAINING_DATA_KEY,
    LocalTask,
    PartitionTable,
    arrays_to_record,
    federation_name,
    instruction_number,
    node_data,
    partition_data,
    partition_id_of,
    record_to_arrays,
    train_locally,
    training_data_record,
)
from flp2p.signatures import contribution_message
from strategies.base import flatten_arrays, unflatten_vector
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
from strategies.update_codecs import decoded_update, model_from_delta, tensor_sizes

log = logging.getLogger(__name__)

BUDGET_EXHAUSTED = 4_001
"""Error code of a reply from a client whose privacy budget is spent."""
SYBIL_NOT_JOINED = 4_002
"""Error code of an evaluation Sybil asked before its identity joined."""
PREVIOUS_DELTA_KEY = "flp2p-attack-previous"
"""ArrayRecord in an attacker's context state: the delta it sent last time."""
RESIDUAL_KEY = "flp2p-compression-residual"
"""ArrayRecord in a simulated node's context state: its error-feedback residual."""

SettingsOf = Callable[[Context], RunSettings]
"""How a mod finds the run's settings for the node it serves."""


def _with_records(msg: Message, **records: ArrayRecord | ConfigRecord) -> Message:
    """``msg`` with extra records, as a new message (the received one is left as is:
    a caller may deliver the same instruction to several clients)."""
    content = RecordDict(dict(msg.content.items()))
    for key, record in records.items():
        content[key] = record
    return make_message(msg.metadata, content)


def _instruction(msg: Message) -> ConfigRecord:
    return msg.content.config_records[CONFIG_KEY]


def _federation_round(config: ConfigRecord) -> int:
    offset = instruction_number(config, "round-offset", 0)
    return int(offset + instruction_number(config, "server-round", 0))


# ------------------------------------------------------------------------ signing


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


@dataclass(frozen=True)
class ReplySigner:
    """Who signs a node's training replies, and for which federation.

    ``federation`` is the one signed for; with ``trust_instruction`` the federation
    the instruction names wins (a simulation plays every federation in one process,
    so it signs for whichever it is asked), and ``federation`` is the fallback. A
    real participant signs for the federation it joined, whatever an instruction
    says.
    """

    key: Ed25519PrivateKey | Identity
    federation: str
    trust_instruction: bool = False

    def federation_for(self, instruction: ConfigRecord) -> str:
        """The federation a reply to ``instruction`` is signed for."""
        if self.trust_instruction:
            return str(instruction.get("federation", self.federation))
        return self.federation


def signing_mod(signer_of: Callable[[Context], ReplySigner]) -> Mod:
    """Sign the reply's update for (federation, federation round, SHA-256).

    The ``identity`` record it adds lets aggregation attribute, weigh and reward the
    contribution (:mod:`strategies.records`). The round is the federation's count
    (``round-offset`` + Flower's round), so a reply cannot be replayed into a later
    run whose Flower round has the same number. A compressed reply is signed for
    the model its payload decodes to against the instruction's global model, which
    is what the aggregator checks the signature against.
    """

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        signer = signer_of(context)  # a node that cannot sign should not train
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        config = _instruction(msg)
        arrays = decoded_update(
            record_to_arrays(reply.content.array_records[ARRAYS_KEY]),
            record_to_arrays(msg.content.array_records[ARRAYS_KEY]),
        )
        reply.content[IDENTITY_KEY] = identity_record(
            signer.key,
            signer.federation_for(config),
            _federation_round(config),
            update_sha256(arrays),
        )
        return reply

    return mod


def simulated_signer(settings_of: SettingsOf) -> Callable[[Context], ReplySigner]:
    """A simulated node signs with its partition's key for the instructed federation."""

    def signer_of(context: Context) -> ReplySigner:
        settings = settings_of(context)
        key = simulated_signing_key(settings.seed, partition_id_of(context))
        return ReplySigner(key, federation_name(settings), trust_instruction=True)

    return signer_of


# -------------------------------------------------------------------- compression


class ResidualStore(Protocol):
    """Where a participant keeps its error-feedback residual between rounds."""

    def load(self, context: Context) -> np.ndarray | None:
        """The flat float64 residual, ``None`` when there is none yet."""
        ...

    def save(self, context: Context, residual: np.ndarray) -> None:
        """Keep ``residual`` for this node's next round."""
        ...


@dataclass(frozen=True)
class StateResidual:
    """The residual in the node's context state (simulation: one per partition,
    which Flower keeps across the rounds of a run)."""

    def load(self, context: Context) -> np.ndarray | None:
        record = context.state.array_records.get(RESIDUAL_KEY)
        return None if record is None else record["residual"].numpy()

    def save(self, context: Context, residual: np.ndarray) -> None:
        context.state[RESIDUAL_KEY] = arrays_to_record({"residual": residual})


@dataclass(frozen=True)
class FileResidual:
    """The residual in a ``.npy`` file (a participant's work folder: it outlives
    the SuperNode's process and a change of aggregator)."""

    path: Path

    def load(self, context: Context) -> np.ndarray | None:
        if not self.path.exists():
            return None
        try:
            return np.asarray(np.load(self.path, allow_pickle=False), np.float64)
        except (OSError, ValueError) as unreadable:
            log.warning("ignoring residual %s: %s", self.path, unreadable)
            return None

    def save(self, context: Context, residual: np.ndarray) -> None:
        partial = self.path.with_name(self.path.name + ".partial")
        with partial.open("wb") as handle:
            np.save(handle, residual, allow_pickle=False)
        os.replace(partial, self.path)  # never a half-written residual


def compression_mod(
    settings_of: SettingsOf, residual_of: Callable[[Context], ResidualStore]
) -> Mod:
    """Send the trained update as the configured codec's payload
    (:mod:`strategies.update_codecs`; ``compression=none`` passes through).

    The delta ``δ = x − o`` against the instruction's global model is encoded;
    with error feedback the node first adds the residual it kept, ``u = δ + e``,
    and keeps ``e' = u − sent`` where ``sent`` is the delta the aggregator will
    decode (``x̂ − o``, float32 rounding of ``x̂`` included), so over the rounds
    ``Σ sent + e`` is ``Σ δ``. A residual of another model's size is dropped.
    Adds ``update-bytes`` (the payload's size) to the reply's metrics.
    """

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        codec = settings_of(context).compression
        reply = call_next(msg, context)
        if reply.has_error() or not codec.compresses:
            return reply
        reference = record_to_arrays(msg.content.array_records[ARRAYS_KEY])
        trained = record_to_arrays(reply.content.array_records[ARRAYS_KEY])
        origin = flatten_arrays(reference)
        wanted = flatten_arrays(trained, list(reference)) - origin
        store = residual_of(context) if codec.error_feedback else None
        residual = None if store is None else store.load(context)
        if residual is not None and residual.shape == wanted.shape:
            wanted += residual
        sizes = tensor_sizes(reference)
        payload = codec.encode(wanted, sizes)
        if store is not None:
            sent = flatten_arrays(
                model_from_delta(reference, codec.decode(payload, sizes))
            )
            store.save(context, wanted - (sent - origin))
        reply.content[ARRAYS_KEY] = arrays_to_record(payload)
        metrics = reply.content.metric_records[METRICS_KEY]
        metrics["update-bytes"] = sum(int(a.nbytes) for a in payload.values())
        return reply

    return mod


# ----------------------------------------------------------------- ledger replica


@dataclass(frozen=True)
class LedgerReplica:
    """A node's verified copy of the aggregator's ledger.

    ``federation`` and ``trust_instruction`` as for :class:`ReplySigner`;
    ``signer_ids`` are the only block signers accepted (``None``: whoever the
    chain's genesis block allows, as in simulation).
    """

    path: Path
    federation: str
    trust_instruction: bool = False
    signer_ids: frozenset[str] | None = None
    committee_size: int = 0
    """k: round blocks that have a committee are appended only if final (peer
    mode; 0 appends on the aggregator's signature alone)."""

    def federation_for(self, instruction: ConfigRecord) -> str:
        """The federation the replica belongs to, for blocks in ``instruction``."""
        if self.trust_instruction:
            return str(instruction.get("federation", self.federation))
        return self.federation


def ledger_sync_mod(replica_of: Callable[[Context], LedgerReplica | None]) -> Mod:
    """Append the ledger blocks the instruction carries to this node's replica.

    Adds ``ledger-height`` (the replica's height afterwards) or ``ledger-refused``
    (a block failed verification; nothing after it was written) to the reply's
    metrics. A node without a replica, or an instruction without blocks, is left as
    is.
    """

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        replica = replica_of(context)
        if reply.has_error() or replica is None:
            return reply
        config = _instruction(msg)
        blocks = config.get(LEDGER_BLOCKS_KEY)
        if not isinstance(blocks, list) or not blocks:
            return reply
        metrics = reply.content.metric_records[METRICS_KEY]
        try:
            height = _sync(replica, config, blocks)
        except LedgerError as refused:
            log.warning(
                "client %d refused a ledger block: %s",
                partition_id_of(context),
                refused,
            )
            metrics[LEDGER_REFUSED_METRIC] = 1
            return reply
        if height is not None:
            metrics[LEDGER_HEIGHT_METRIC] = height
        return reply

    return mod


def _sync(
    replica: LedgerReplica, config: ConfigRecord, blocks: list[Any]
) -> int | None:
    """Append the instruction's blocks (and co-signatures) to ``replica``."""
    statements = config.get(LEDGER_COSIGNATURES_KEY)
    return sync_replica(
        replica.path,
        replica.federation_for(config),
        [b for b in blocks if isinstance(b, bytes)],
        replica.signer_ids,
        decode_cosignatures(statements if isinstance(statements, list) else []),
        replica.committee_size,
    )


RECEIPTS_DIR = "sent-replies"
"""Folder beside a participant's ledger copy: one receipt per round it replied to
(identity, update digest, signature), until that round's block arrives."""
COMPLAINTS_DIR = "complaints"
"""Folder beside it: one complaint per round whose final block omits or alters the
participant's reply; the peer runtime publishes them (issue 15)."""


def receipt_mod(replica_of: Callable[[Context], LedgerReplica | None]) -> Mod:
    """Keep a receipt of every signed reply (outermost: it sees the signature), so
    that :func:`final_model_mod` can check the round's block for it."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        replica = replica_of(context)
        if reply.has_error() or replica is None or replica.committee_size == 0:
            return reply
        identity = reply.content.config_records.get(IDENTITY_KEY)
        if identity is None or not isinstance(identity.get(IDENTITY_SIGNATURE), bytes):
            return reply
        arrays = record_to_arrays(reply.content.array_records[ARRAYS_KEY])
        server_round = _federation_round(_instruction(msg))
        folder = replica.path.parent / RECEIPTS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        receipt = {
            "round": server_round,
            "identity": str(identity[IDENTITY_ID]),
            "update_sha256": update_sha256(arrays),
            "signature": bytes(identity[IDENTITY_SIGNATURE]).hex(),  # type: ignore[arg-type]
        }
        (folder / f"round-{server_round:06d}.json").write_text(json.dumps(receipt))
        return reply

    return mod


def check_receipts(replica: LedgerReplica) -> list[int]:
    """Compare each receipt with its round's block in ``replica``; a block that
    omits the reply or names another digest gets a complaint file. Returns the
    rounds complained about (receipts of checked rounds are removed)."""
    folder = replica.path.parent / RECEIPTS_DIR
    if not folder.is_dir() or not replica.path.exists():
        return []
    with Ledger.open(replica.path, federation=replica.federation) as ledger:
        blocks = {b.server_round: b for b in ledger.blocks() if b.server_round > 0}
    complained = []
    for path in sorted(folder.glob("round-*.json")):
        receipt = json.loads(path.read_text())
        block = blocks.get(int(receipt["round"]))
        if block is None:
            continue  # not final yet (or the round is re-run by a successor)
        listed = {
            str(row["identity"]): str(row["update_sha256"])
            for row in block.contributions
        }
        if listed.get(receipt["identity"]) != receipt["update_sha256"]:
            complaints = replica.path.parent / COMPLAINTS_DIR
            complaints.mkdir(parents=True, exist_ok=True)
            (complaints / path.name).write_text(json.dumps(receipt))
            complained.append(int(receipt["round"]))
            log.warning(
                "the final block of round %s omits or alters this reply: complaining",
                receipt["round"],
            )
        path.unlink()
    return complained


NOT_FINAL = 0x46494E  # "FIN"
"""Error code of a participant that refuses to train on a model whose block is
not final."""


def final_model_mod(replica_of: Callable[[Context], LedgerReplica | None]) -> Mod:
    """Train only on a model that a final block of this node's chain names (issue
    15: participants never train on a non-final round).

    Before training, appends the instruction's blocks (each round block with a
    committee only if its co-signatures make it final) and compares the model the
    instruction carries with the newest block's ``aggregate_sha256``; a model no
    final block names gets an error reply :data:`NOT_FINAL` instead of training.
    Nothing is checked while the chain holds only its genesis (round 1 trains on
    the seed's initial model, which every peer computes itself) or without a
    replica or a committee (``committee_size`` 0).
    """

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        replica = replica_of(context)
        if replica is None or replica.committee_size == 0:
            return call_next(msg, context)
        config = _instruction(msg)
        blocks = config.get(LEDGER_BLOCKS_KEY)
        try:
            if isinstance(blocks, list) and blocks:
                _sync(replica, config, blocks)
                check_receipts(replica)
            tip = _tip(replica)
        except LedgerError as refused:
            return _not_final(msg, f"refused a ledger block: {refused}")
        if tip is None or tip.server_round == 0:
            return call_next(msg, context)
        record = msg.content.array_records.get(ARRAYS_KEY)
        model = None if record is None else update_sha256(record_to_arrays(record))
        if model != tip.aggregate_sha256:
            return _not_final(
                msg,
                f"the model is not the one final block {tip.height} (round "
                f"{tip.server_round}) names",
            )
        return call_next(msg, context)

    return mod


def _tip(replica: LedgerReplica) -> Block | None:
    if not replica.path.exists():
        return None
    with Ledger.open(replica.path, federation=replica.federation) as ledger:
        return ledger.latest_block()


def _not_final(msg: Message, reason: str) -> Message:
    log.warning("refusing to train: %s", reason)
    return Message(Error(code=NOT_FINAL, reason=reason), reply_to=msg)


def simulated_replicas(
    settings_of: SettingsOf, replica_dir: Path | None
) -> Callable[[Context], LedgerReplica | None]:
    """One replica per simulated partition, ``<replica_dir>/client-<partition>.db``."""

    def replica_of(context: Context) -> LedgerReplica | None:
        if replica_dir is None:
            return None
        return LedgerReplica(
            replica_dir / f"client-{partition_id_of(context)}.db",
            federation_name(settings_of(context)),
            trust_instruction=True,
        )

    return replica_of


# ------------------------------------------------------------------------ attacks

_BENIGN_CACHE: dict[tuple[int, str, int], np.ndarray] = {}


def colluders_benign_deltas(
    settings: RunSettings,
    task: LocalTask,
    colluders: frozenset[int],
    partitions: PartitionTable | None,
) -> np.ndarray:
    """Benign updates of every malicious partition (the attackers' shared knowledge).

    Each is plain training of the round's global model (no data poisoning, no DP),
    cached per worker process and round, so that the attackers one Ray worker hosts
    train each colluding partition once rather than once per attacker.
    """
    honest = task.honest()
    round_key = update_sha256(honest.global_arrays)
    for stale in [k for k in _BENIGN_CACHE if k[1] != round_key]:
        del _BENIGN_CACHE[stale]
    global_vector = flatten_arrays(honest.global_arrays)
    rows = []
    for pid in sorted(colluders):
        key = (honest.server_round, round_key, pid)
        if key not in _BENIGN_CACHE:
            local = partition_data(settings, pid, settings.clients, partitions)
            arrays, _ = train_locally(settings, honest, local, pid)
            _BENIGN_CACHE[key] = flatten_arrays(arrays) - global_vector
        rows.append(_BENIGN_CACHE[key])
    return np.stack(rows)


def attack_mod(
    settings_of: SettingsOf, partitions: PartitionTable | None = None
) -> Mod:
    """For evaluation only: make the partitions the configured attack controls
    malicious (:mod:`flp2p.attacks`); every other client passes through untouched.

    A malicious client trains on its poisoned data (it forwards the instruction with
    :data:`~flp2p.local_training.TRAINING_DATA_KEY`), then replaces the trained
    update by the attack's and reports the example count the attack claims.
    """

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        settings = settings_of(context)
        partition_id = partition_id_of(context)
        colluders = settings.attack.malicious(settings.clients, settings.seed)
        if partition_id not in colluders:
            return call_next(msg, context)
        attack = settings.attack.attack
        task = LocalTask.from_message(msg, settings)
        if isinstance(attack, SybilWave) and not attack.joined(task.federation_round):
            # The identity does not exist yet: it takes no part in the round.
            return Message(
                Error(code=SYBIL_NOT_JOINED, reason="sybil identity not joined yet"),
                reply_to=msg,
            )
        local = node_data(settings, context, partitions)
        num_classes = settings.data.load().num_classes
        images, labels = attack.poison_data(local.images, local.labels, num_classes)
        if images is not local.images or labels is not local.labels:
            poisoned = training_data_record(ArrayDataset(images, labels))
            msg = _with_records(msg, **{TRAINING_DATA_KEY: poisoned})
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        trained = record_to_arrays(reply.content.array_records[ARRAYS_KEY])
        global_vector = flatten_arrays(task.global_arrays)
        previous = context.state.array_records.get(PREVIOUS_DELTA_KEY)
        delta = attack.poison_update(
            AttackContext(
                honest_delta=flatten_arrays(trained) - global_vector,
                benign_deltas=lambda: colluders_benign_deltas(
                    settings, task, colluders, partitions
                ),
                num_malicious=len(colluders),
                num_clients=settings.clients,
                rng=np.random.default_rng(
                    [settings.seed, task.server_round, len(trained)]
                ),
                previous_delta=None
                if previous is None
                else flatten_arrays(record_to_arrays(previous)),
                server_round=task.federation_round,
            )
        )
        context.state[PREVIOUS_DELTA_KEY] = arrays_to_record({"delta": delta})
        poisoned_arrays = unflatten_vector(global_vector + delta, task.global_arrays)
        reply.content[ARRAYS_KEY] = arrays_to_record(poisoned_arrays)
        metrics = reply.content.metric_records[METRICS_KEY]
        true_examples = metrics[NUM_EXAMPLES_KEY]
        assert isinstance(true_examples, int)
        metrics[NUM_EXAMPLES_KEY] = attack.claimed_examples(true_examples)
        return reply

    return mod


# ------------------------------------------------------------------------ DP-SGD


def dpsgd_mod(settings_of: SettingsOf) -> Mod:
    """Client-side DP-SGD (``privacy=dpsgd``) with one accountant across rounds.

    The accountant lives in the node's context state; the mod hands it to local
    training with the instruction (:data:`~flp2p.dpsgd.DPSGD_KEY`), keeps the
    history the reply brings back and reports the cumulative ``dp-epsilon`` and
    ``dp-delta``. A client whose next round would exceed its budget replies with
    error :data:`BUDGET_EXHAUSTED` and the reason instead of training.
    """

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        dp = settings_of(context).privacy
        if not isinstance(dp, DPSGDSettings):
            return call_next(msg, context)
        state = context.state.config_records.get(ACCOUNTANT_STATE_KEY)
        private = PrivateTraining(dp, load_accountant(state, dp.accountant))
        try:
            reply = call_next(
                _with_records(msg, **{DPSGD_KEY: private.to_record()}), context
            )
        except PrivacyBudgetExceeded as exhausted:
            log.warning(
                "client %d stops participating: %s", partition_id_of(context), exhausted
            )
            return Message(
                Error(code=BUDGET_EXHAUSTED, reason=str(exhausted)), reply_to=msg
            )
        if reply.has_error():
            return reply
        history = reply.content.config_records[DPSGD_KEY]
        del reply.content[DPSGD_KEY]
        context.state[ACCOUNTANT_STATE_KEY] = history
        spent = PrivateTraining(dp, load_accountant(history, dp.accountant))
        metrics = reply.content.metric_records[METRICS_KEY]
        metrics["dp-epsilon"] = spent.epsilon
        metrics["dp-delta"] = dp.delta
        return reply

    return mod
