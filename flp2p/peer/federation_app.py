"""The ServerApp and ClientApp the peer runtime submits to its SuperLink.

They wrap :mod:`flp2p.app` with what a real federation adds to a simulation:

* the run resumes from a checkpoint (round ``peer.start-round`` of
  ``peer.checkpoint-dir``, or of a run parked ahead of need, the round named when it
  is released: ``peer.start-file``) instead of always starting from the seed's
  initial model,
  and every finished round is written back there, numbered in the federation's
  rounds, so the aggregator process can advertise it in its lease and a successor can
  continue from it;
* every training reply is signed with the participant's own Ed25519 identity (the
  key ``python -m flp2p.client`` loads, named by path in the SuperNode's node
  config, never sent through Flower) for the federation id and the federation's
  round count, and the strategy rejects replies that are unsigned or whose
  signature does not verify (:class:`~flp2p.identity.ContributionAuthenticator`);
* the aggregator records each round in its copy of the federation's ledger, signed
  with its own identity, numbered in federation rounds, and continues whatever chain
  that copy holds — so after a failover the successor extends the same chain — and
  hands the newest blocks to the participants, which accept only blocks signed by an
  aggregator the federation's genesis names;
* each SuperNode may name its own data folder in its node config (``data-dir``).

The experiment itself travels in one run-config value, :data:`SETTINGS_KEY`: the
genesis parameters composed once, by the aggregator, into the full resolved config
(:func:`resolve_genesis`), which the ServerApp and every ClientApp turn into typed
:class:`~flp2p.config.RunSettings` without composing anything again. The other keys
under ``peer.`` configure this wrapper.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.serverapp import Grid, ServerApp

from flp2p.app import (
    arrays_to_record,
    central_evaluator,
    record_to_arrays,
    records_rounds,
    run_reporter,
    train_config,
)
from flp2p.audit.recompute import public_sketch_seed
from flp2p.client_mods import (
    FileResidual,
    LedgerReplica,
    ReplySigner,
    ResidualStore,
    SettingsOf,
    StateResidual,
    attack_mod,
    compression_mod,
    dpsgd_mod,
    final_model_mod,
    ledger_sync_mod,
    receipt_mod,
    signing_mod,
)
from flp2p.config import ConfigError, RunSettings, build_strategy, compose
from flp2p.identity import ContributionAuthenticator, Identity
from flp2p.ledger import Ledger
from flp2p.ledger_broadcast import (
    LEDGER_BLOCKS_KEY,
    LedgerBroadcast,
    catch_up_fields,
)
from flp2p.local_training import CONFIG_KEY, client_evaluate, client_train
from flp2p.peer.app_folder import flatten_parameters
from flp2p.peer.checkpoints import (
    Checkpoint,
    CheckpointStore,
    write_final_model,
)
from flp2p.peer.reply_polling import PollingGrid
from flp2p.peer.round_audit import (
    AuditedRounds,
    AuditSetup,
    ProposingLedger,
    committee_size,
    read_auditors,
)
from flp2p.peer.round_deadline import (
    DeadlineGrid,
    RoundDeadline,
    deadline_run_config,
    peer_sampling,
)
from flp2p.reply_tap import ReplyTap
from flp2p.reporting import RoundFacts, RunReporter
from flp2p.round_timings import TimedGrid, timing_mod
from strategies.records import ARRAYS_KEY, METRICS_KEY, ReputationState, RoundReport

log = logging.getLogger(__name__)

SETTINGS_KEY = "peer.settings"
"""Run-config key: the federation's settings as JSON, resolved once from the genesis
(:func:`resolve_genesis`), read by :meth:`RunSettings.from_config`."""
START_ROUND_KEY = "peer.start-round"
"""Run-config key: the finished round the run resumes from (0: a fresh start)."""
CHECKPOINT_DIR_KEY = "peer.checkpoint-dir"
"""Run-config key: folder of the :class:`CheckpointStore` the aggregator watches."""
FEDERATION_KEY = "peer.federation"
"""Run-config key: the federation id contributions are signed for."""
START_FILE_KEY = "peer.start-file"
"""Run-config key of a *parked* run (instead of ``peer.start-round``): the ServerApp
starts, loads what it needs, and waits until this file names the round to resume
from. A standby submits one to its warm SuperLink ahead of need, so taking over
costs neither ``flwr run`` nor the ServerApp's start-up."""
PARKED_RUN_TIMEOUT = 24 * 3600.0
"""Seconds a parked ServerApp waits before it gives up (its SuperLink is normally
stopped long before)."""
IDENTITY_KEY_KEY = "peer.identity-key"
"""Run-config key: the aggregator's key file (it signs ledger blocks; the path
only — the ServerApp runs on the aggregator's own machine)."""
LEDGER_KEY = "peer.ledger"
"""Run-config key: the aggregator's copy of the federation's ledger."""
AGGREGATORS_KEY = "peer.aggregators"
"""Run-config key: comma-separated node ids the genesis allows to aggregate."""
DATA_DIR_NODE_KEY = "data-dir"
"""Node-config key: a SuperNode's own data folder (overrides ``dataset.data_dir``)."""
IDENTITY_NODE_KEY = "identity-key"
"""Node-config key: the participant's key file, which signs its training replies."""
FEDERATION_NODE_KEY = "federation"
"""Node-config key: the federation the participant joined (it signs for no other)."""
AGGREGATORS_NODE_KEY = "aggregators"
"""Node-config key: comma-separated node ids whose ledger blocks it accepts."""
LEDGER_NODE_KEY = "ledger"
"""Node-config key: the participant's copy of the ledger."""
WORK_DIR_NODE_KEY = "work-dir"
"""Node-config key: the participant's work folder (the final model lands there)."""
FINAL_MODEL_TIMEOUT = 120.0
"""Fewest seconds the ServerApp waits for participants to confirm the final model
(each starts a ClientApp for it, as for a round: it waits at least a training
round's deadline)."""
RESIDUAL_NODE_KEY = "compression-residual"
"""Node-config key: the file of the participant's error-feedback residual (in its
``--work-dir``), which outlives SuperNode restarts and aggregator changes."""


def join_ids(node_ids: Iterable[str]) -> str:
    """Node ids as one config value (Flower configs hold scalars only)."""
    return ",".join(node_ids)


def split_ids(value: object) -> tuple[str, ...]:
    """Inverse of :func:`join_ids`."""
    return tuple(part for part in str(value or "").split(",") if part)


@dataclass(frozen=True)
class PeerRun:
    """What the peer runtime adds to a run config."""

    start_round: int
    checkpoint_dir: Path
    federation: str
    identity_key: Path | None = None
    ledger: Path | None = None
    aggregators: tuple[str, ...] = ()
    start_file: Path | None = None

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> PeerRun:
        """Read the ``peer.`` keys (raises ``ValueError`` naming a missing one).

        A parked run (``peer.start-file``) has no start round yet: ``start_round``
        is ``-1`` until :func:`wait_for_start` reads it.
        """
        required = [CHECKPOINT_DIR_KEY, FEDERATION_KEY]
        if START_FILE_KEY not in run_config:
            required.insert(0, START_ROUND_KEY)
        missing = [k for k in required if k not in run_config]
        if missing:
            raise ValueError(f"run config lacks {missing}: not a peer-runtime run")
        identity_key = run_config.get(IDENTITY_KEY_KEY)
        ledger = run_config.get(LEDGER_KEY)
        start_file = run_config.get(START_FILE_KEY)
        return cls(
            start_round=int(run_config.get(START_ROUND_KEY, -1)),
            checkpoint_dir=Path(str(run_config[CHECKPOINT_DIR_KEY])),
            federation=str(run_config[FEDERATION_KEY]),
            identity_key=Path(str(identity_key)) if identity_key else None,
            ledger=Path(str(ledger)) if ledger else None,
            aggregators=split_ids(run_config.get(AGGREGATORS_KEY)),
            start_file=Path(str(start_file)) if start_file else None,
        )


def write_start(path: Path, start_round: int) -> None:
    """Release a parked run: resume from ``start_round`` (atomic: never half-read)."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"start-round": start_round}))
    os.replace(partial, path)


def wait_for_start(
    path: Path, timeout: float = PARKED_RUN_TIMEOUT, poll: float = 0.1
) -> int:
    """Block until :func:`write_start` released the run; return its start round.

    Raises
    ------
    TimeoutError
        If nobody released it within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"nobody released the parked run ({path})")
        time.sleep(poll)
    return int(json.loads(path.read_text())["start-round"])


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

    @property
    def signer(self) -> ReplySigner:
        """Replies signed with the peer's key, for the federation it joined."""
        return ReplySigner(self.identity, self.federation)

    @property
    def replica(self) -> LedgerReplica | None:
        """The peer's ledger copy, accepting blocks of the genesis' aggregators."""
        if self.ledger is None:
            return None
        return LedgerReplica(self.ledger, self.federation, signer_ids=self.aggregators)


def replica_from_node_config(
    node_config: Mapping[str, Any], committee_size: int = 0
) -> LedgerReplica | None:
    """The participant's ledger copy its node config names (its key is not read);
    with ``committee_size`` k > 0 it appends only final round blocks."""
    ledger = node_config.get(LEDGER_NODE_KEY)
    if not ledger:
        return None
    return LedgerReplica(
        Path(str(ledger)),
        str(node_config[FEDERATION_NODE_KEY]),
        signer_ids=frozenset(split_ids(node_config.get(AGGREGATORS_NODE_KEY))),
        committee_size=committee_size,
    )


def audited_replica(context: Context) -> LedgerReplica | None:
    """The participant's ledger copy, with the federation's k (issue 15)."""
    raw = context.run_config.get(SETTINGS_KEY)
    k = committee_size(json.loads(str(raw))) if raw is not None else 0
    return replica_from_node_config(context.node_config, k)


def residual_from_node_config(node_config: Mapping[str, Any]) -> ResidualStore:
    """Where the participant keeps its error-feedback residual (its node config's
    file; a SuperNode started without one keeps it in its context state)."""
    path = node_config.get(RESIDUAL_NODE_KEY)
    return FileResidual(Path(str(path))) if path else StateResidual()


def participant_from_node_config(node_config: Mapping[str, Any]) -> Participant:
    """The participant a peer's SuperNode runs for, from its node config.

    Raises
    ------
    ValueError
        If the node config does not name the key file and the federation (the
        SuperNode was not started by ``python -m flp2p.client``).
    """
    missing = [
        k for k in (IDENTITY_NODE_KEY, FEDERATION_NODE_KEY) if not node_config.get(k)
    ]
    if missing:
        raise ValueError(
            f"node config lacks {missing}: start peer SuperNodes with "
            "`python -m flp2p.client`"
        )
    replica = replica_from_node_config(node_config)
    return Participant(
        identity=Identity.load(str(node_config[IDENTITY_NODE_KEY])),
        federation=str(node_config[FEDERATION_NODE_KEY]),
        ledger=None if replica is None else replica.path,
        aggregators=frozenset(split_ids(node_config.get(AGGREGATORS_NODE_KEY))),
    )


class FederationRoundAuthenticator:
    """Checks contributions against the federation's round count, not Flower's.

    A run resumed after ``round_offset`` finished rounds calls its first round 1;
    participants sign for round ``round_offset + 1`` (they receive the offset in
    the instructions), so a reply signed for one federation round cannot be replayed
    into another run whose Flower round has the same number.

    Parameters
    ----------
    authenticate
        The federation's Ed25519 check.
    round_offset
        Federation rounds finished before this run.
    """

    def __init__(
        self, authenticate: ContributionAuthenticator, round_offset: int
    ) -> None:
        self.authenticate = authenticate
        self.round_offset = round_offset

    def __call__(
        self,
        identity: str,
        public_key: bytes | None,
        signature: bytes | None,
        server_round: int,
        update_digest: str,
    ) -> str | None:
        """``None`` if authentic for federation round ``offset + server_round``."""
        return self.authenticate(
            identity,
            public_key,
            signature,
            self.round_offset + server_round,
            update_digest,
        )


class FederationRoundLedger:
    """The ledger as the strategy's store and recorder, in federation rounds.

    Strategies count rounds the way Flower numbers them in one run (from 1); the
    ledger of a federation that changed aggregators spans several runs. Every round
    number crossing this adapter is shifted by ``round_offset`` — reports and the
    reputation fields ``first_round``, ``last_round`` and ``banned_until`` — so the
    chain's blocks name federation rounds and a ban set before a failover still
    lasts the same rounds after it. Differences between rounds, which is all the
    reputation rules use, are unchanged.

    Parameters
    ----------
    ledger
        The aggregator's ledger (signing, or continuing, the federation's chain).
    round_offset
        Federation rounds finished before this run.
    """

    def __init__(self, ledger: Ledger, round_offset: int) -> None:
        self.ledger = ledger
        self.round_offset = round_offset

    def to_ledger(self, state: ReputationState) -> ReputationState:
        """``state`` in federation rounds (what the chain stores)."""
        offset = self.round_offset
        return state.evolve(
            first_round=state.first_round + offset,
            last_round=state.last_round + offset,
            # ≤ 0 means "never banned" in either count.
            banned_until=state.banned_until + offset if state.banned_until > 0 else 0,
        )

    def _from_ledger(self, state: ReputationState) -> ReputationState:
        offset = self.round_offset
        return state.evolve(
            first_round=state.first_round - offset,
            last_round=state.last_round - offset,
            banned_until=max(0, state.banned_until - offset),
        )

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """The ledger's all-or-nothing scope (:meth:`Ledger.transaction`)."""
        return self.ledger.transaction()

    def get_reputation(self, identity: str) -> ReputationState | None:
        """State of ``identity`` in this run's round count (``None``: unknown)."""
        state = self.ledger.get_reputation(identity)
        return None if state is None else self._from_ledger(state)

    def put_reputations(self, states: Iterable[ReputationState]) -> None:
        """Store ``states`` in federation rounds."""
        self.ledger.put_reputations(self.to_ledger(s) for s in states)

    def all_reputations(self) -> list[ReputationState]:
        """Every known state in this run's round count."""
        return [self._from_ledger(s) for s in self.ledger.all_reputations()]

    def record_round(
        self, report: RoundReport, reputations: Sequence[ReputationState]
    ) -> None:
        """Append ``report`` as the block of federation round ``offset + round``."""
        self.ledger.record_round(
            dataclasses.replace(
                report, server_round=report.server_round + self.round_offset
            ),
            [self.to_ledger(s) for s in reputations],
        )


def _override(key: str, value: object) -> str:
    """One Hydra override for a genesis parameter (JSON's literals as Hydra's)."""
    if value is None:
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    return f"{key}={value}"


def resolve_genesis(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The genesis parameters as the full, resolved experiment config, validated.

    Each parameter is a Hydra override of ``conf/config.yaml`` (``strategy=trusted``
    selects ``conf/strategy/trusted.yaml``, ``partition.alpha=0.1`` sets a value);
    this is the one place where they are composed. The result is plain JSON data
    that :meth:`RunSettings.from_config` reads wherever the run goes.

    Raises
    ------
    flp2p.config.ConfigError
        If the composed config is not a valid run (naming the key).
    """
    from omegaconf import OmegaConf

    overrides = [_override(k, v) for k, v in flatten_parameters(parameters).items()]
    container = OmegaConf.to_container(compose(overrides), resolve=True)
    assert isinstance(container, dict)
    resolved = {str(key): value for key, value in container.items()}
    RunSettings.from_config(resolved)  # refuse a bad genesis before any run
    rounds = deadline_run_config(resolved)
    try:
        RoundDeadline.from_run_config(rounds)
        peer_sampling(rounds)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return resolved


def settings_json(resolved: Mapping[str, Any]) -> str:
    """:data:`SETTINGS_KEY`'s value for ``resolved`` (canonical: sorted keys)."""
    return json.dumps(resolved, sort_keys=True, separators=(",", ":"))


def experiment_settings(
    run_config: Mapping[str, Any], node_config: Mapping[str, Any] | None = None
) -> RunSettings:
    """Typed settings from the run config's :data:`SETTINGS_KEY`.

    A ``data-dir`` in the SuperNode's node config replaces the data folder: peers keep
    their data wherever they like.

    Raises
    ------
    ValueError
        If the run config carries no settings (not a peer-runtime run).
    flp2p.config.ConfigError
        If they do not validate.
    """
    raw = run_config.get(SETTINGS_KEY)
    if raw is None:
        raise ValueError(f"run config lacks {SETTINGS_KEY!r}: not a peer-runtime run")
    try:
        resolved = json.loads(str(raw))
    except json.JSONDecodeError as error:
        raise ConfigError(f"{SETTINGS_KEY} is not JSON: {error}") from None
    settings = RunSettings.from_config(resolved)
    data_dir = (node_config or {}).get(DATA_DIR_NODE_KEY)
    if data_dir:
        settings = dataclasses.replace(
            settings, data=settings.data.with_data_dir(str(data_dir))
        )
    return settings


class ConcurrentEvaluation:
    """``evaluate_fn`` for :meth:`Strategy.start` that keeps the central evaluation
    off the round's critical path.

    Flower calls ``evaluate_fn`` with round 0 (the starting model) and then after
    every aggregation, immediately before the next round's instructions go out; the
    Flower round ``r`` of a run resumed at ``start_round`` is the federation's round
    ``start_round + r``. For round ``r`` this

    1. waits for round ``r − 1``'s evaluation (it had a whole round to finish), so a
       standby that receives checkpoint ``r`` also receives every row before it
       (:meth:`flp2p.peer.aggregator.AggregatorRole.push_run_files`);
    2. takes the row's time, ε and verdicts
       (:meth:`flp2p.reporting.RunReporter.close_round`), which the next round
       changes;
    3. saves checkpoint ``r``: once it exists a successor can resume from it, so an
       aggregator killed while round ``r + 1`` trains loses no finished round;
    4. hands the evaluation and the row (``metrics.csv``, the console) to one worker
       thread and returns, so the next round trains while the test set is scored.

    One evaluation at a time, so rows land in round order; :meth:`wait` (or leaving
    the ``with`` block) waits for the last one and raises its error, if any. A
    successor's round 0 is the row of the round it resumed from.
    """

    def __init__(
        self,
        evaluate: Callable[[int, ArrayRecord], MetricRecord],
        store: CheckpointStore,
        start_round: int,
        reporter: RunReporter | None = None,
    ) -> None:
        self.evaluate = evaluate
        self.store = store
        self.start_round = start_round
        self.reporter = reporter
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="central-evaluation")
        self._pending: Future[None] | None = None

    def __call__(self, server_round: int, arrays: ArrayRecord) -> None:
        """Checkpoint round ``server_round`` now, evaluate it in the background."""
        self.wait()
        global_round = self.start_round + server_round
        facts = (
            None if self.reporter is None else self.reporter.close_round(global_round)
        )
        if server_round > 0:
            self.store.save(Checkpoint(global_round, record_to_arrays(arrays)))
        self._pending = self._worker.submit(self._evaluate, server_round, arrays, facts)

    def _evaluate(
        self, server_round: int, arrays: ArrayRecord, facts: RoundFacts | None
    ) -> None:
        metrics = self.evaluate(server_round, arrays)
        if self.reporter is not None:
            accuracy, loss = metrics["accuracy"], metrics["loss"]
            assert isinstance(accuracy, int | float) and isinstance(loss, int | float)
            global_round = self.start_round + server_round
            self.reporter.round_done(global_round, float(accuracy), float(loss), facts)

    def wait(self) -> None:
        """Block until the evaluation in flight (if any) has written its row."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> ConcurrentEvaluation:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc is None:
                self.wait()
            else:  # keep the row, but let the run's own error speak
                with contextlib.suppress(Exception):
                    self.wait()
        finally:
            self._worker.shutdown(wait=True)


def deliver_final_model(
    grid: Any,
    final: Checkpoint,
    ledger: Ledger | None,
    federation: str,
    timeout: float = FINAL_MODEL_TIMEOUT,
) -> int:
    """Send every connected participant the final model and the newest blocks.

    Blocks otherwise ride on the next round's instruction, so without this message
    no participant would hold the last round's block nor the model itself (only its
    hash, from the lease). The participant's ClientApp writes the model to its work
    folder and appends the blocks to its ledger copy (the same verification as every
    block); the peer runtime checks the model's hash against the lease.

    Returns
    -------
    int
        How many participants confirmed within ``timeout`` seconds.
    """
    height = None if ledger is None else ledger.height
    # With their co-signatures: a participant whose replica lacks a round block
    # (it missed the last instruction) appends it only if final, and without them
    # a replica that ignored k stored it bare, not final (issue 15). The whole
    # chain, once per run: a participant further behind than a round's window
    # would refuse a window that does not start at its height.
    chain = (
        ConfigRecord({LEDGER_BLOCKS_KEY: []})
        if ledger is None or height is None
        else catch_up_fields(ledger, -1, height)
    )
    content = RecordDict(
        {
            ARRAYS_KEY: arrays_to_record(dict(final.arrays)),
            CONFIG_KEY: ConfigRecord(
                {
                    "federation": federation,
                    "server-round": final.server_round,
                    **dict(chain.items()),
                }
            ),
        }
    )
    messages = [
        Message(content=content, message_type=MessageType.QUERY, dst_node_id=node)
        for node in grid.get_node_ids()
    ]
    replies = grid.send_and_receive(messages, timeout=timeout)
    confirmed = sum(1 for reply in replies if not reply.has_error())
    log.info(
        "final model of round %d delivered to %d of %d participants",
        final.server_round,
        confirmed,
        len(messages),
    )
    return confirmed


def open_peer_ledger(peer: PeerRun, settings: RunSettings) -> Ledger | None:
    """The aggregator's copy of the federation's ledger, signing as the aggregator.

    It may already hold the chain (the blocks this peer received while standing by
    or training); new rounds extend it. ``None`` when the strategy reports no
    verdicts (Flower's built-ins) or the run config names no ledger or key.
    """
    if (
        peer.ledger is None
        or peer.identity_key is None
        or not settings.ledger_enabled
        or not records_rounds(settings)
    ):
        return None
    peer.ledger.parent.mkdir(parents=True, exist_ok=True)
    return Ledger.open(
        peer.ledger,
        federation=peer.federation,
        signer=Identity.load(peer.identity_key),
        allowed_signers=peer.aggregators,
        create=True,
    )


def auditable_seeds(federation: str) -> dict[str, Any]:
    """Strategy arguments that would otherwise draw private randomness.

    An auditor must recompute the round bit for bit, so the sketch coordinates of
    :class:`strategies.TrustedFedAvg` come from the federation id
    (:func:`flp2p.audit.recompute.public_sketch_seed`), not from the OS; the
    central-DP noise already comes from the genesis ``seed``. A strategy that takes
    no such argument ignores it (:func:`flp2p.config.build_strategy`).
    """
    return {"sketch_seed": public_sketch_seed(federation)}


def peer_strategy(
    settings: RunSettings,
    peer: PeerRun,
    ledger: Ledger | None,
    sampling: Mapping[str, int] | None = None,
    audit: AuditSetup | None = None,
) -> Any:
    """The configured strategy with the peer runtime's authenticator and ledger
    (and ``sampling``: :func:`flp2p.peer.round_deadline.peer_sampling`); with
    ``audit`` (k > 0) every round's block waits for its committee
    (:class:`flp2p.peer.round_audit.AuditedRounds`)."""
    extra: dict[str, Any] = {
        "authenticator": FederationRoundAuthenticator(
            ContributionAuthenticator(peer.federation), peer.start_round
        ),
        **(sampling or {}),
        **auditable_seeds(peer.federation),
    }
    wrap = None
    if ledger is not None:
        extra["recorder"] = FederationRoundLedger(ledger, peer.start_round)
        # -- verifiable aggregation (issue 15): propose, audit, append if final
        audited = audit is not None and audit.committee_size > 0
        if audited and audit is not None and peer.identity_key is not None:
            _, revoked = read_auditors(audit.auditors_file)
            recorder = ProposingLedger(extra["recorder"], ledger, revoked)
            extra["recorder"] = recorder
            checkpoints = CheckpointStore(peer.checkpoint_dir)
            identity = Identity.load(peer.identity_key)
            setup = audit

            def wrap(strategy: Any) -> Any:
                gated = AuditedRounds(
                    strategy,
                    recorder,
                    identity,
                    checkpoints,
                    setup.committee_size,
                    setup.auditors_file,
                    setup.lie,
                )
                if settings.ledger_replicate:
                    return LedgerBroadcast(gated, ledger)
                return gated

        elif settings.ledger_replicate:

            def wrap(strategy: Any) -> Any:
                return LedgerBroadcast(strategy, ledger)

    strategy = build_strategy(settings, wrap, **extra)
    if getattr(strategy, "authenticator", None) is None:
        # Flower's built-in strategies take no authenticator.
        log.warning(
            "strategy %s does not check signatures: unsigned replies are accepted",
            settings.strategy_name,
        )
    return strategy


def run_peer_server(grid: Grid, context: Context) -> None:
    """Run the remaining rounds of the federation from the starting checkpoint.

    A parked run first prepares what does not depend on the start round (settings,
    test data) and then waits to be released (:data:`START_FILE_KEY`). Released at
    the last round — its holder died after it, perhaps before every participant had
    the end — it trains nothing and delivers the final model and block again.
    """
    peer = PeerRun.from_run_config(context.run_config)
    settings = experiment_settings(context.run_config)
    output_dir = Path(str(context.run_config.get("output-dir", peer.checkpoint_dir)))
    output_dir.mkdir(parents=True, exist_ok=True)
    evaluate = central_evaluator(settings)
    if peer.start_file is not None:
        peer = dataclasses.replace(peer, start_round=wait_for_start(peer.start_file))
    store = CheckpointStore(peer.checkpoint_dir)
    start = store.load(peer.start_round)
    remaining = settings.rounds - peer.start_round
    if remaining < 0:
        return
    ledger = open_peer_ledger(peer, settings)
    try:
        strategy = peer_strategy(
            settings,
            peer,
            ledger,
            peer_sampling(context.run_config),
            AuditSetup.from_run_config(
                context.run_config, json.loads(str(context.run_config[SETTINGS_KEY]))
            ),
        )
        # The run folder outlives this aggregator: a successor keeps the rows
        # before the round it resumes from (pushed with the checkpoints).
        reporter = run_reporter(
            settings, output_dir, strategy, ledger, resume_round=peer.start_round
        )
        reporter.clock = True
        reporter.extra_summary["federation"] = peer.federation
        offset = peer.start_round
        # The tap shows the reporter each reply's metrics (clients' ε) in
        # federation rounds; the deadline grid ends rounds that wait for the gone.
        tapped = ReplyTap(
            # Replies pulled every 0.2 s, not every 3 s.
            TimedGrid(PollingGrid(grid)),
            lambda r, metrics: reporter.train_replies(offset + r, metrics),
        )
        deadline = RoundDeadline.from_run_config(context.run_config)
        rounds_grid = DeadlineGrid(tapped, deadline, settings.clients)
        initial = arrays_to_record(dict(start.arrays))
        with reporter, ConcurrentEvaluation(evaluate, store, offset, reporter) as ev:
            if remaining > 0:
                strategy.start(
                    grid=rounds_grid,
                    initial_arrays=initial,
                    num_rounds=remaining,
                    train_config=train_config(settings, peer.federation, offset),
                    evaluate_fn=ev,
                )
            else:
                ev(0, initial)  # the last round's row, as any successor writes
                # Wait for the participants to follow this lease, as a first
                # round would.
                rounds_grid.get_node_ids()
            deliver_final_model(
                tapped,
                store.load(settings.rounds),
                ledger,
                peer.federation,
                max(FINAL_MODEL_TIMEOUT, deadline.seconds("train")),
            )
            if ledger is not None:
                reporter.extra_summary["ledger_height"] = ledger.height
    finally:
        if ledger is not None:
            ledger.close()


def peer_train_mods(settings_of: SettingsOf) -> list[Mod]:
    """The peer runtime's training mods: the participant's key, ledger copy and
    error-feedback residual (outermost: the time stamps of ``$FLP2P_TIMINGS``,
    nothing without it)."""
    return [
        timing_mod,
        receipt_mod(audited_replica),
        signing_mod(
            lambda context: participant_from_node_config(context.node_config).signer
        ),
        compression_mod(
            settings_of, lambda context: residual_from_node_config(context.node_config)
        ),
        final_model_mod(audited_replica),
        ledger_sync_mod(audited_replica),
        attack_mod(settings_of),
        dpsgd_mod(settings_of),
    ]


def make_peer_client_app(settings: RunSettings | None = None) -> ClientApp:
    """The training of :mod:`flp2p.local_training` with the peer runtime's mods.

    Settings are read the peer way (:func:`experiment_settings`, once per run and
    node config) unless given; replies are signed by the participant's own identity
    and the ledger blocks instructions carry go to its own copy.
    """

    @functools.lru_cache(maxsize=4)
    def composed(
        run_config: tuple[tuple[str, Any], ...], data_dir: str | None
    ) -> RunSettings:
        node = {} if data_dir is None else {DATA_DIR_NODE_KEY: data_dir}
        return experiment_settings(dict(run_config), node)

    def settings_of(context: Context) -> RunSettings:
        if settings is not None:
            return settings
        data_dir = context.node_config.get(DATA_DIR_NODE_KEY)
        return composed(
            tuple(sorted(context.run_config.items())),
            str(data_dir) if data_dir else None,
        )

    app = ClientApp()

    @app.train(mods=peer_train_mods(settings_of))
    def _train(msg: Message, context: Context) -> Message:
        return client_train(msg, context, settings_of(context))

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return client_evaluate(msg, context, settings_of(context))

    @app.query(
        mods=[
            # k as for training: the final delivery's blocks are appended only
            # if final, never on the aggregator's signature alone.
            ledger_sync_mod(audited_replica)
        ]
    )
    def _final_model(msg: Message, context: Context) -> Message:
        return receive_final_model(msg, context)

    return app


def receive_final_model(msg: Message, context: Context) -> Message:
    """Keep the final model :func:`deliver_final_model` sent, in the work folder
    (the ledger sync mod around this handler appends the blocks)."""
    work_dir = context.node_config.get(WORK_DIR_NODE_KEY)
    metrics = MetricRecord({"final-model": 0})
    if work_dir:
        arrays = record_to_arrays(msg.content.array_records[ARRAYS_KEY])
        write_final_model(Path(str(work_dir)), arrays)
        metrics["final-model"] = 1
    return Message(content=RecordDict({METRICS_KEY: metrics}), reply_to=msg)


server_app = ServerApp()
server_app.main()(run_peer_server)
"""ServerApp component of the peer runtime's Flower App."""
client_app = make_peer_client_app()
"""ClientApp component of the peer runtime's Flower App."""
