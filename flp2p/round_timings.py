"""Time stamps of a round's phases, for ``python -m benchmarks.peer_rounds``.

With ``$FLP2P_TIMINGS`` naming a file, every process of a run appends one JSON line
per event to it: the ServerApp when it sends a round's instructions and when the
last reply arrived (:class:`TimedGrid`), each ClientApp when its process started,
when its mods got the instruction and when they returned the reply
(:func:`timing_mod`), and local training when the partition was ready and when
training ended, each with the CPU seconds the process used so far. Without the
variable nothing is written and each call costs one dictionary lookup. Lines are
short single ``write`` calls on an ``O_APPEND`` file, so processes writing at once
do not interleave them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flp2p.grid_delegation import DelegatingGrid

TIMINGS_ENV = "FLP2P_TIMINGS"
WARM_FORK_ENV = "FLP2P_WARM_FORK"
"""Set to ``1`` in a ClientApp forked by the warm executor
(:mod:`flp2p.peer.warm_clientapp`), so its time stamps say so."""


def note(event: str, at: float | None = None, **fields: Any) -> None:
    """Append ``event`` (at Unix time ``at``, default now) to ``$FLP2P_TIMINGS``."""
    path = os.environ.get(TIMINGS_ENV)
    if not path:
        return
    record = {"event": event, "t": time.time() if at is None else at}
    # CPU seconds this process has used so far: unlike wall time, hardly changed by
    # whatever else shares the machine (a forked child starts from zero).
    used = os.times()
    record.update(pid=os.getpid(), cpu=round(used.user + used.system, 3), **fields)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, (json.dumps(record) + "\n").encode())
    finally:
        os.close(descriptor)


def process_started_at(proc: Path = Path("/proc")) -> float | None:
    """Unix time at which this process was created (Linux; ``None`` elsewhere).

    Field 22 of ``/proc/self/stat`` counts clock ticks since boot; ``btime`` in
    ``/proc/stat`` is the boot time.
    """
    try:
        stat = (proc / "self" / "stat").read_text()
        boot = next(
            float(line.split()[1])
            for line in (proc / "stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration):
        return None
    ticks = int(stat[stat.rfind(")") + 2 :].split()[19])
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def instruction_round(msg: Any) -> str:
    """The ``server-round`` an instruction's config carries (Flower's strategies
    set no ``group_id``); empty if none."""
    config = msg.content.config_records.get("config")
    return "" if config is None else str(config.get("server-round", ""))


def message_fields(msg: Any, context: Any) -> dict[str, Any]:
    """Round, message type and partition of a ClientApp's instruction."""
    return {
        "round": instruction_round(msg),
        "type": str(msg.metadata.message_type),
        "partition": context.node_config.get("partition-id"),
        "warm": os.environ.get(WARM_FORK_ENV) == "1",
    }


def timing_mod(msg: Any, context: Any, call_next: Callable[[Any, Any], Any]) -> Any:
    """A Flower client mod noting the process start, entry and exit of the app."""
    if not os.environ.get(TIMINGS_ENV):
        return call_next(msg, context)
    fields = message_fields(msg, context)
    note("clientapp-process", at=process_started_at(), **fields)
    note("clientapp-entry", **fields)
    reply = call_next(msg, context)
    note("clientapp-exit", **fields)
    return reply


class TimedGrid(DelegatingGrid):
    """A Flower ``Grid`` noting when each ``send_and_receive`` starts and ends."""

    def send_and_receive(
        self, messages: Iterable[Any], *, timeout: float | None = None
    ) -> Iterable[Any]:
        """The wrapped grid's, between a ``round-sent`` and ``round-received``."""
        batch = list(messages)
        kinds = sorted({str(m.metadata.message_type) for m in batch})
        rounds = sorted({instruction_round(m) for m in batch})
        fields: dict[str, Any] = {"type": ",".join(kinds), "round": ",".join(rounds)}
        note("round-sent", messages=len(batch), **fields)
        replies = list(self._grid.send_and_receive(batch, timeout=timeout))
        note("round-received", replies=len(replies), **fields)
        return replies
