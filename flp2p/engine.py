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

import copy
import logging
import os
import random
import uuid
from collections.abc import Iterable
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import (
    NUM_PARTITIONS_KEY,
    PARTITION_ID_KEY,
    SUPERLINK_NODE_ID,
    ErrorCode,
)
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

logger = logging.getLogger(__name__)


def run_federation(
    server_app: ServerApp,
    client_app: ClientApp,
    num_clients: int,
    cpus_per_client: float = 1.0,
    num_cpus: int | None = None,
    verbose: bool = False,
    ray_address: str | None = None,
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
    ray_address : str, optional
        An existing Ray cluster to run the ClientApps on (``auto`` or
        ``HOST:PORT`` of its head, as ``ray.init(address=...)`` takes it); its
        nodes bring their own CPUs, so ``num_cpus`` must then be ``None``.
        ``None`` starts a Ray instance on this machine for the run.
    """
    if ray_address is not None and num_cpus is not None:
        raise ValueError("num_cpus is the cluster's to say when joining one")
    # Telemetry would try the network on every event; these machines have none.
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    init_args: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": verbose}
    if num_cpus is not None:
        init_args["num_cpus"] = num_cpus
    if ray_address is not None:
        init_args["address"] = ray_address
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


class InProcessGrid(Grid):
    """A :class:`~flwr.serverapp.Grid` that runs every ClientApp call in this process.

    Flower's Ray engine pays for a Ray cluster, an actor pool and a serialisation
    round-trip per message; on a small machine that overhead is a large share of a
    short run, and parallel actors fight over the same cores that each client's torch
    already uses. This grid delivers each instruction to the ClientApp directly, one
    node after another, in the order the strategy sent them — deterministic, and as
    fast as the training itself. Every node keeps its own :class:`Context` (state
    persists across rounds, as on a SuperNode), instructions are deep-copied on
    delivery (a ClientApp cannot alter the message the strategy kept, nor another
    node's copy), and a ClientApp that raises yields an error reply, exactly as the Ray
    engine reports it, instead of stopping the run.

    Parameters
    ----------
    client_app : ClientApp
        The app every node runs.
    num_nodes : int
        Virtual nodes; node ``i`` gets ``partition-id = i`` and ``num-partitions``.
    run_id : int
        The run id stamped on messages and contexts.
    seed : int
        Seeds the node ids (random uint64, as a SuperLink assigns them).
    """

    def __init__(
        self, client_app: ClientApp, num_nodes: int, run_id: int = 1, seed: int = 0
    ) -> None:
        rng = random.Random(seed)
        node_ids: list[int] = []
        while len(node_ids) < num_nodes:
            candidate = rng.getrandbits(63)
            if candidate > SUPERLINK_NODE_ID and candidate not in node_ids:
                node_ids.append(candidate)
        self._client_app = client_app
        self._run = Run.create_empty(run_id)
        self._contexts = {
            node_id: Context(
                run_id=run_id,
                node_id=node_id,
                node_config={PARTITION_ID_KEY: index, NUM_PARTITIONS_KEY: num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for index, node_id in enumerate(node_ids)
        }
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        """Adopt ``run`` as the run this grid serves."""
        self._run = run

    @property
    def run(self) -> Run:
        """The run this grid serves."""
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """A new instruction for ``dst_node_id`` (Flower's deprecated helper)."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """Every virtual node's id."""
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Run each instruction's ClientApp now; keep the replies to be pulled."""
        message_ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            message_ids.append(message.metadata.message_id)
            self._replies[message.metadata.message_id] = self._deliver(message)
        return message_ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies to ``message_ids`` (each is handed out once)."""
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Deliver ``messages`` and return every reply (calls are synchronous here)."""
        return self.pull_messages(list(self.push_messages(messages)))

    def _deliver(self, message: Message) -> Message:
        node_id = message.metadata.dst_node_id
        context = self._contexts.get(node_id)
        if context is None:
            return _error_reply(message, ErrorCode.UNKNOWN, f"no node {node_id}")
        delivered = copy.deepcopy(message)
        server_node = TaskIdentity.node_id
        TaskIdentity.node_id = node_id
        try:
            reply = self._client_app(delivered, context)
        except Exception as err:  # a client's failure is its reply, not the run's end
            logger.exception("ClientApp on node %d raised", node_id)
            reply = _error_reply(
                message,
                ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                f"{type(err).__name__}: {err}",
            )
        finally:
            TaskIdentity.node_id = server_node
        reply.metadata.__dict__["_message_id"] = str(uuid.uuid4())
        return reply


def _error_reply(message: Message, code: int, reason: str) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=message)


def run_federation_in_process(
    server_app: ServerApp,
    client_app: ClientApp,
    num_clients: int,
    seed: int = 0,
    verbose: bool = False,
) -> None:
    """Run ``server_app`` against ``num_clients`` ClientApps in this process.

    The same apps, messages and strategy calls as :func:`run_federation`, on an
    :class:`InProcessGrid` instead of Ray: no worker processes, clients trained one
    after another with all cores, results identical from run to run for a seed.
    ``verbose`` keeps Flower's INFO logs.
    """
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    grid = InProcessGrid(client_app, num_clients, seed=seed)
    previous = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id = grid.run.run_id
    TaskIdentity.task_id = 1
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    context = Context(
        run_id=grid.run.run_id,
        node_id=SUPERLINK_NODE_ID,
        node_config={},
        state=RecordDict(),
        run_config={},
    )
    flwr_logger = logging.getLogger("flwr")
    previous_level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.WARNING)
    try:
        server_app(grid=grid, context=context)
    finally:
        flwr_logger.setLevel(previous_level)
        TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = previous
