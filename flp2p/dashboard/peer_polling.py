"""The peer-mode panel's source: a slow look at the federation, taken off the page.

Asking the DHT takes a round trip at best and the RPC timeout when nobody answers,
while each refresh of the page must answer at once. :class:`PeerViewPoller` looks
in a background thread, one look after another, and the page reads the latest
answer. A look that fails — an exception, or a view that names a problem — never
ends the thread: the panel says what went wrong and keeps the last view that
worked, with its age, until the DHT answers again.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

from .readings import PeerView

Look = Callable[[], PeerView]
"""One look at the federation (blocking); may raise."""


class PeerViewPoller:
    """Calls ``look`` every ``every_s`` seconds in a daemon thread; calling the
    poller returns the latest :class:`PeerView` (a
    :data:`~flp2p.dashboard.readings.PeerViewSource`).

    Parameters
    ----------
    look
        One look at the federation; its exceptions become the view's ``problem``.
    every_s
        Pause between the end of one look and the start of the next.
    describe
        What is being asked (``"the DHT at 10.0.0.2:9401"``), for messages.
    """

    def __init__(self, look: Look, every_s: float, describe: str) -> None:
        if not every_s > 0:
            raise ValueError(f"every_s must be > 0, got {every_s}")
        self._look = look
        self._every_s = every_s
        self._describe = describe
        self._latest = PeerView(
            None, None, problem=f"no answer yet from {describe} (asking)"
        )
        self._last_good: PeerView | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="flp2p-peer-view", daemon=True
        )

    def start(self) -> PeerViewPoller:
        """Start looking (returns ``self``)."""
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the look in progress (waits up to ``timeout`` seconds)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __call__(self) -> PeerView:
        # One reference read: the thread replaces the view, never mutates it.
        return self._latest

    def poll_once(self) -> PeerView:
        """Take one look now and make it the latest view (what the thread does)."""
        try:
            view = self._look()
        except Exception as error:  # the panel reports it; the thread goes on
            detail = " ".join(str(error).split()) or type(error).__name__
            view = PeerView(None, None, problem=f"{self._describe}: {detail}")
        if view.problem is None:
            view = dataclasses.replace(view, seen_at=view.seen_at or time.time())
            self._last_good = view
        elif self._last_good is not None:
            view = dataclasses.replace(self._last_good, problem=view.problem)
        self._latest = view
        return view

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self._every_s)
