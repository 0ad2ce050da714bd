"""A Grid that passes every message through and shows training replies to an observer.

Each client's DP-SGD ε travels in its own training reply (``dp-epsilon``), but a
strategy aggregates reply metrics before anyone else sees them — Flower's FedAvg into
an example-weighted mean, flp2p's over accepted replies only — and neither a mean nor
a filtered set is the privacy a round spent. Reading the replies where they enter
the server, at the grid, gives every strategy's run the same per-client values
without touching the strategy: the strategy still receives exactly the replies the
wrapped grid returned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from flp2p.grid_delegation import DelegatingGrid
from strategies.records import METRICS_KEY

ReplyMetrics = Mapping[str, float]
TrainRepliesObserver = Callable[[int, Sequence[ReplyMetrics]], None]
"""Called with the round and the metrics of each training reply that has any."""


def instruction_round(message: Message) -> int | None:
    """``server-round`` of an instruction's config (Flower's strategies set it)."""
    for config in message.content.config_records.values():
        value = config.get("server-round")
        if isinstance(value, int):
            return value
    return None


def reply_metrics(reply: Message) -> ReplyMetrics | None:
    """The numeric metrics of a reply (``None`` for an error or a metric-less reply)."""
    if reply.has_error():
        return None
    record = reply.content.metric_records.get(METRICS_KEY)
    if record is None:
        return None
    return {
        key: float(value)
        for key, value in record.items()
        if isinstance(value, int | float)
    }


class ReplyTap(DelegatingGrid):
    """Delegates to ``grid``; shows each training round's reply metrics to ``observe``.

    Only ``send_and_receive`` (what :meth:`Strategy.start` uses) is observed.
    """

    def __init__(self, grid: Grid, observe: TrainRepliesObserver) -> None:
        super().__init__(grid)
        self._observe = observe

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        rounds = {
            instruction_round(m)
            for m in messages
            if m.metadata.message_type == MessageType.TRAIN
        }
        if len(rounds) == 1 and (server_round := rounds.pop()) is not None:
            metrics = [m for m in map(reply_metrics, replies) if m is not None]
            self._observe(server_round, metrics)
        return replies
