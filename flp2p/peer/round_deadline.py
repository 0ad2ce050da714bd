"""Rounds that end: a deadline per round and sampling that follows who is connected.

Flower's ``Strategy.start`` waits up to one ``timeout`` (3600 s by default) for every
reply of every round, and its sampler waits, with no limit, until
``min_available_nodes`` nodes are connected. Between peers that is a federation that
stops when one participant does: a participant killed mid-round holds the round for
an hour, and one that never returns — or an eligible participant that became the
aggregator and stopped training — holds every later round for ever.

:class:`DeadlineGrid` sits between the strategy and Flower's grid. Each
``send_and_receive`` waits at most the round's deadline (:class:`RoundDeadline`);
replies after it are dropped by Flower and the strategy aggregates what arrived.
``get_node_ids`` waits, before the first round only, for every expected participant
— at most ``join_grace`` seconds, and no longer than ``settle`` seconds after the
last one connected (a successor aggregator's first round would otherwise wait the
whole grace for itself and for the holder that died) — so the first round does not
start with whoever was quickest; afterwards it answers at once with the nodes
connected now. The strategy's
``min_available_nodes`` and ``min_train_nodes`` are lowered to
:func:`peer_sampling`'s floor, so sampling never waits for a node that is gone.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.serverapp import Grid

from flp2p.grid_delegation import DelegatingGrid

log = logging.getLogger(__name__)

ROUND_DEADLINE_KEY = "peer.round-deadline"
"""Run-config key: a fixed round deadline in seconds (default: derived, see
:class:`RoundDeadline`); the genesis parameter of the same name sets it
(:func:`deadline_run_config`)."""
ROUND_MIN_NODES_KEY = "peer.round-min-nodes"
"""Run-config key: fewest replies a round aggregates, hence the fewest connected
nodes a round starts with (default :data:`DEFAULT_MIN_NODES`); from the genesis
too."""
DEFAULT_MIN_NODES = 1
"""A round runs with whoever is connected: waiting for a count that may never come
back is what stalled peer federations."""
DEADLINE_FLOOR_SECONDS = 30.0
"""No derived deadline is shorter: a ClientApp's start-up alone takes seconds."""
DEADLINE_FACTOR = 3.0
"""A derived deadline is this many times the median of the recent rounds."""
FIRST_ROUND_SECONDS = 120.0
"""Deadline before any round finished complete (nothing to derive it from yet; the
first round also pays every participant's first ClientApp start)."""
RECENT_ROUNDS = 5
"""How many complete rounds (of one message type) the median looks at."""
JOIN_GRACE_SECONDS = 60.0
"""How long the first round waits for every expected participant to connect."""
JOIN_SETTLE_SECONDS = 10.0
"""...and how long after the last one connected, when some never do."""


@dataclass
class RoundDeadline:
    """How long a round may wait for replies.

    With ``fixed`` set, that. Otherwise
    :math:`\\max(\\text{floor}, \\text{factor} \\cdot \\operatorname{median}(d))` over
    the durations :math:`d` of the last :data:`RECENT_ROUNDS` complete rounds of the
    same message type (``train``, ``evaluate``), and :data:`FIRST_ROUND_SECONDS`
    before there is one. Only rounds in which every reply arrived count: a round cut
    at its deadline says nothing about how long a round takes.
    """

    fixed: float | None = None
    floor: float = DEADLINE_FLOOR_SECONDS
    factor: float = DEADLINE_FACTOR
    first: float = FIRST_ROUND_SECONDS
    durations: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RoundDeadline:
        """``peer.round-deadline`` if set (a positive number of seconds)."""
        value = run_config.get(ROUND_DEADLINE_KEY)
        if value is None or value == "":
            return cls()
        seconds = float(value)
        if not seconds > 0:
            raise ValueError(f"{ROUND_DEADLINE_KEY} must be positive, got {value!r}")
        return cls(fixed=seconds)

    def seconds(self, kind: str) -> float:
        """The deadline of the next round of message type ``kind``."""
        if self.fixed is not None:
            return self.fixed
        recent = self.durations.get(kind, [])[-RECENT_ROUNDS:]
        if not recent:
            return self.first
        return max(self.floor, self.factor * statistics.median(recent))

    def record(self, kind: str, seconds: float) -> None:
        """Remember a complete round's duration."""
        self.durations.setdefault(kind, []).append(seconds)


PEER_SETTINGS_GROUP = "peer"
"""Group of the resolved settings (``conf/config.yaml``) holding the founder's choice
of ``round-deadline`` and ``round-min-nodes``: genesis parameters such as
``--param peer.round-deadline=60``."""


def deadline_run_config(settings: Mapping[str, Any]) -> dict[str, float | int]:
    """The ``peer`` group of the resolved settings as the run-config keys above
    (unset values left out, so the defaults apply).

    The genesis fixes them for the whole federation: every aggregator, the
    successor after a failover included, runs rounds under the same rules.
    """
    group = settings.get(PEER_SETTINGS_GROUP) or {}
    if not isinstance(group, Mapping):
        raise ValueError(f"{PEER_SETTINGS_GROUP!r} must be a group of settings")
    config: dict[str, float | int] = {}
    for key in (ROUND_DEADLINE_KEY, ROUND_MIN_NODES_KEY):
        value = group.get(key.removeprefix(f"{PEER_SETTINGS_GROUP}."))
        if value is not None:
            config[key] = value
    return config


def peer_sampling(run_config: Mapping[str, Any]) -> dict[str, int]:
    """Strategy arguments that keep sampling from waiting for absent nodes."""
    floor = int(run_config.get(ROUND_MIN_NODES_KEY, DEFAULT_MIN_NODES))
    if floor < 1:
        raise ValueError(f"{ROUND_MIN_NODES_KEY} must be 1 or more, got {floor}")
    return {"min_available_nodes": floor, "min_train_nodes": floor}


def _message_kind(messages: list[Any]) -> str:
    kinds = {str(getattr(m.metadata, "message_type", "")) for m in messages}
    return kinds.pop() if len(kinds) == 1 else "mixed"


class DeadlineGrid(DelegatingGrid):
    """A Flower ``Grid`` whose rounds end at their deadline (module docstring).

    Parameters
    ----------
    grid : Grid
        Flower's grid; everything but the two methods below is passed through.
    deadline : RoundDeadline
        Decides each round's deadline and learns from complete rounds.
    expected_nodes : int
        Participants the first round waits for (up to ``join_grace``).
    join_grace, settle : float
        Seconds the first sampling waits for ``expected_nodes`` at most, and at
        most after the last new node (none connected: the whole grace).
    clock, sleep : callables
        Monotonic time and a pause (tests replace them).
    """

    def __init__(
        self,
        grid: Grid,
        deadline: RoundDeadline,
        expected_nodes: int,
        join_grace: float = JOIN_GRACE_SECONDS,
        settle: float = JOIN_SETTLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        poll: float = 0.5,
    ) -> None:
        super().__init__(grid)
        self.deadline = deadline
        self.expected_nodes = expected_nodes
        self.join_grace, self.settle = join_grace, settle
        self._clock, self._sleep, self._poll = clock, sleep, poll
        self._rounds_sent = 0

    def get_node_ids(self) -> Iterable[int]:
        """Connected nodes; before the first round, after waiting for all of them
        (at most ``join_grace``)."""
        nodes = list(self._grid.get_node_ids())
        if self._rounds_sent:
            return nodes
        started = last_new = self._clock()
        while len(nodes) < self.expected_nodes:
            now = self._clock()
            if now - started >= self.join_grace or (
                nodes and now - last_new >= self.settle
            ):
                break
            self._sleep(self._poll)
            seen = len(nodes)
            nodes = list(self._grid.get_node_ids())
            if len(nodes) > seen:
                last_new = self._clock()
        if len(nodes) < self.expected_nodes:
            log.warning(
                "starting with %d of %d participants connected after %.0f s",
                len(nodes),
                self.expected_nodes,
                self._clock() - started,
            )
        return nodes

    def send_and_receive(
        self, messages: Iterable[Any], *, timeout: float | None = None
    ) -> Iterable[Any]:
        """Flower's ``send_and_receive``, cut at the round's deadline."""
        batch = list(messages)
        self._rounds_sent += 1
        if not batch:
            return []
        kind = _message_kind(batch)
        seconds = self.deadline.seconds(kind)
        if timeout is not None:
            seconds = min(seconds, timeout)
        started = self._clock()
        replies = list(self._grid.send_and_receive(batch, timeout=seconds))
        took = self._clock() - started
        if len(replies) == len(batch):
            self.deadline.record(kind, took)
        else:
            log.warning(
                "%s round: %d of %d replies within its %.0f s deadline; "
                "aggregating those",
                kind,
                len(replies),
                len(batch),
                math.ceil(seconds),
            )
        return replies
