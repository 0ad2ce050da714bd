"""A round's replies, pulled every few tenths of a second rather than every 3 s.

Flower 1.42's ``HttpGrid.send_and_receive`` (the grid a ServerApp gets in deployment)
pushes the instructions and then pulls replies with a fixed ``time.sleep(3)`` between
pulls: every round waits on average 1.5 s after its last reply. No option sets that
interval, but the grid's ``push_messages`` and ``pull_messages`` are public, so
:func:`send_and_poll` does the same with its own interval. One pull is one small
local request to the SuperLink.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from flwr.serverapp import Grid

from flp2p.grid_delegation import DelegatingGrid

REPLY_POLL_SECONDS = 0.2
"""Pause between two pulls of a round's replies."""


def send_and_poll(
    grid: Any,
    messages: Iterable[Any],
    timeout: float | None,
    interval: float = REPLY_POLL_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Any]:
    """Flower's ``send_and_receive`` with ``interval`` between pulls.

    Pushes ``messages``, then pulls until every one has its reply or ``timeout``
    seconds passed (``None``: no limit); returns the replies in the order pulled.
    """
    pending = set(grid.push_messages(messages))
    deadline = None if timeout is None else clock() + timeout
    replies: list[Any] = []
    while pending:
        pulled = list(grid.pull_messages(pending))
        replies.extend(pulled)
        pending.difference_update(m.metadata.reply_to_message_id for m in pulled)
        if not pending:
            break
        if deadline is not None:
            left = deadline - clock()
            if left <= 0:
                break
            sleep(min(interval, left))
        else:
            sleep(interval)
    return replies


class PollingGrid(DelegatingGrid):
    """A Flower ``Grid`` whose ``send_and_receive`` is :func:`send_and_poll`;
    everything else is the wrapped grid's."""

    def __init__(self, grid: Grid, interval: float = REPLY_POLL_SECONDS) -> None:
        super().__init__(grid)
        self.interval = interval

    def send_and_receive(
        self, messages: Iterable[Any], *, timeout: float | None = None
    ) -> list[Any]:
        """Push ``messages`` and pull their replies every ``interval`` seconds."""
        return send_and_poll(self._grid, messages, timeout, self.interval)
