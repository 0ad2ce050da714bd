"""A Flower SuperNode that follows the aggregator lease.

Whenever the lease names another SuperLink (a new holder, address or epoch), the old
SuperNode is stopped and a new one started against the new address, trusting only
the certificate the lease pins — or, for a lease without TLS, only if the participant
passed ``--insecure``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path

from flp2p.dht import Lease
from flp2p.peer.processes import ManagedProcess, free_port, supernode_command
from flp2p.peer.tls import INSECURE_FINGERPRINT, fetch_pinned_certificate

log = logging.getLogger(__name__)


class InsecureLeaseRefused(ConnectionError):
    """The lease's SuperLink runs without TLS and ``--insecure`` was not given."""


def lease_target(lease: Lease) -> tuple[str, str, int]:
    """What identifies one SuperLink incarnation: holder, address, epoch."""
    return (lease.holder, lease.superlink_address, lease.epoch)


class SuperNodeFollower:
    """Runs at most one SuperNode, always pointed at the current lease.

    Parameters
    ----------
    work_dir
        Folder for pinned certificates and logs.
    node_config
        Flower node config (``partition-id``, ``num-partitions``, ``data-dir``).
    allow_insecure
        Accept leases whose SuperLink runs without TLS.
    """

    def __init__(
        self,
        work_dir: Path,
        node_config: Mapping[str, int | str],
        allow_insecure: bool = False,
    ) -> None:
        self.work_dir = work_dir
        self.node_config = dict(node_config)
        self.allow_insecure = allow_insecure
        self.target: tuple[str, str, int] | None = None
        self.process: ManagedProcess | None = None
        self.restarts = 0

    async def follow(self, lease: Lease) -> bool:
        """Make sure the SuperNode serves ``lease``'s SuperLink.

        Returns
        -------
        bool
            Whether a SuperNode was (re)started by this call.

        Raises
        ------
        InsecureLeaseRefused
            For a lease without TLS when insecure leases are not allowed.
        flp2p.peer.tls.FingerprintMismatch
            If the SuperLink serves a certificate other than the pinned one.
        OSError
            If the SuperLink does not answer TLS yet (try again later).
        """
        if lease_target(lease) == self.target and self._running():
            return False
        root = await self._trust(lease)
        self.stop()
        self.process = ManagedProcess(
            supernode_command(
                lease.superlink_address, root, free_port(), self.node_config
            ),
            self.work_dir / "supernode.log",
            cwd=self.work_dir,
        )
        self.target = lease_target(lease)
        self.restarts += 1
        log.info("SuperNode → %s (epoch %d)", lease.superlink_address, lease.epoch)
        return True

    async def _trust(self, lease: Lease) -> Path | None:
        if lease.tls_fingerprint == INSECURE_FINGERPRINT:
            if not self.allow_insecure:
                raise InsecureLeaseRefused(
                    f"the aggregator at {lease.superlink_address} runs without TLS; "
                    "pass --insecure to accept that"
                )
            return None
        pem = await asyncio.to_thread(
            fetch_pinned_certificate, lease.superlink_address, lease.tls_fingerprint
        )
        path = self.work_dir / f"superlink-epoch{lease.epoch}.pem"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(pem)
        return path

    def _running(self) -> bool:
        return self.process is not None and self.process.running()

    def stop(self) -> None:
        """Stop the SuperNode, if any."""
        if self.process is not None:
            self.process.stop()
            self.process = None
            self.target = None
