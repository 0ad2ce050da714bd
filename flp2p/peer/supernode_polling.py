"""``python -m flp2p.peer.supernode_polling ARGS``: ``flower-supernode ARGS`` that
polls its SuperLink every few tenths of a second.

Flower 1.42's SuperNode sleeps a fixed 3 s after every pull that found no message
(``start_client_internal``; no option or environment variable sets it) and 0.5 s
between looks for the ClientApp's reply: on average 1.5 s + 0.25 s added to every
round, for every participant. This entry point runs Flower's own CLI with the
``time`` module of that one Flower module replaced by one whose :func:`sleep` waits
at most ``$FLP2P_SUPERNODE_POLL_INTERVAL`` seconds
(:data:`flp2p.peer.processes.SUPERNODE_POLL_SECONDS`). Nothing else changes; if a
Flower version no longer has the module or its ``time`` reference, the SuperNode
runs unchanged, with Flower's own intervals (see docs/library-notes.md).
"""

from __future__ import annotations

import math
import os
import sys
import time
from types import ModuleType
from typing import Any

POLL_ENV = "FLP2P_SUPERNODE_POLL_INTERVAL"
"""Same value as :data:`flp2p.peer.processes.SUPERNODE_POLL_ENV` (this module must
not import the peer package: it starts a SuperNode, nothing more)."""
FLOWER_COMMAND = "flower-supernode"


class ShorterSleeps:
    """Stands in for the ``time`` module: ``sleep`` waits at most ``interval``."""

    def __init__(self, interval: float) -> None:
        self.interval = interval

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        """Wait ``min(seconds, interval)``."""
        time.sleep(min(seconds, self.interval))


def poll_interval(environ: dict[str, str] | os._Environ[str] = os.environ) -> float:
    """The configured interval; ``nan`` when unset or not a positive number."""
    try:
        interval = float(environ.get(POLL_ENV, "nan"))
    except ValueError:
        return math.nan
    return interval if interval > 0 else math.nan


def shorten_polls(module: ModuleType, interval: float) -> bool:
    """Make ``module``'s ``time.sleep`` wait at most ``interval``; whether it did."""
    if math.isnan(interval) or getattr(module, "time", None) is not time:
        return False
    module.time = ShorterSleeps(interval)  # type: ignore[attr-defined]
    return True


def main() -> None:
    """Run ``flower-supernode`` with the shorter polls."""
    import importlib

    from flwr.supernode.cli import flower_supernode

    internal = importlib.import_module("flwr.supernode.start_client_internal")
    shorten_polls(internal, poll_interval())
    # Flower names its telemetry event after the command it was started as.
    sys.argv[0] = FLOWER_COMMAND
    flower_supernode()


if __name__ == "__main__":
    main()
