"""What ``python -m flp2p.client`` was told, and how it fails.

Apart from :mod:`flp2p.peer.participant` (which parses the command line and then
imports :mod:`flp2p.peer.runtime`) so that the runtime can use these without
importing the command line back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EXIT_FAILURE = 1
EXIT_USAGE = 2


class PeerError(Exception):
    """A failure the participant can act on; the message is the one line shown."""


class UsageError(PeerError):
    """Options that cannot work together or on this host (exit code 2)."""


@dataclass(frozen=True)
class PeerOptions:
    """Everything ``python -m flp2p.client`` was told."""

    bootstrap: tuple[tuple[str, int], ...]
    federation: str
    identity: Path
    work_dir: Path
    listen: tuple[str, int] = ("127.0.0.1", 0)
    """Bind host of every service, and the DHT's UDP port (0: any)."""
    advertise: str = "127.0.0.1"
    """Host that node records and the lease carry (others dial it)."""
    advertise_port: int | None = None
    """DHT port others reach this peer on, if not the bound one (a port mapping)."""
    superlink_port: int = 0
    """TCP port of this peer's SuperLink when it aggregates (0: any free one)."""
    sync_port: int = 0
    """TCP port receiving model and ledger pushes (eligible peers; 0: any)."""
    partition_id: int | None = None
    num_partitions: int | None = None
    data_dir: str | None = None
    aggregator_eligible: bool = False
    insecure: bool = False
    lease_timeout: float = 60.0
    record_ttl: float = 9.0
    poll_interval: float = 1.0
    settle_seconds: float = 3.0
    status_line: bool = False
    """Show the one-line status (:mod:`flp2p.peer.status_line`; without -v)."""
    refusals_to_fail: int = 2
    """Consecutive probes, :data:`flp2p.peer.runtime.REPROBE_SECONDS` apart, in which
    the holder's advertised SuperLink must refuse connections before a standby treats
    the holder as dead without waiting for its lease to lapse."""
