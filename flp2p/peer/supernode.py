"""A Flower SuperNode that follows the aggregator lease.

Whenever the lease names another SuperLink (a new holder, address or epoch), the old
SuperNode is stopped and a new one started against the new address, trusting only
the certificate the lease pins — or, for a lease without TLS, only if the participant
passed ``--insecure``.

Before its first SuperNode starts, the follower has the participant's partition
prepared (``prepare``, :func:`flp2p.peer.prepared_data.prepare_partition`, run once in
a worker thread) and names the folder in the node config, so no ClientApp loads or
splits the data set. It also starts the warm ClientApp executor
(:mod:`flp2p.peer.warm_clientapp`) once and puts its ``flwr-clientapp`` first on the
SuperNode's ``PATH``; ``FLP2P_WARM_CLIENTAPP=0`` turns that off.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from flp2p.dht import Lease
from flp2p.local_training import PARTITION_DIR_NODE_KEY
from flp2p.peer.processes import (
    ManagedProcess,
    flower_environment,
    flower_executable,
    free_port,
    supernode_command,
)
from flp2p.peer.tls import INSECURE_FINGERPRINT, fetch_pinned_certificate
from flp2p.peer.warm_clientapp import COMMAND, write_shim

log = logging.getLogger(__name__)

WARM_CLIENTAPP_ENV = "FLP2P_WARM_CLIENTAPP"
"""``0`` starts every ClientApp cold (Flower's own ``flwr-clientapp``)."""


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
    prepare
        Writes this participant's partition and returns its folder (blocking; run
        once, in a thread, before the first SuperNode starts).
    """

    def __init__(
        self,
        work_dir: Path,
        node_config: Mapping[str, int | str],
        allow_insecure: bool = False,
        prepare: Callable[[], Path] | None = None,
    ) -> None:
        self.work_dir = work_dir
        self.node_config = dict(node_config)
        self.allow_insecure = allow_insecure
        self.prepare = prepare
        self.warm_executor: ManagedProcess | None = None
        self._warm_dir: Path | None = None
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
        root = await self._trust(lease)  # a refused lease fails before the data
        if self.prepare is not None:
            prepare, self.prepare = self.prepare, None
            folder = await asyncio.to_thread(prepare)
            self.node_config[PARTITION_DIR_NODE_KEY] = str(folder)
        self.stop()
        self.process = ManagedProcess(
            supernode_command(
                lease.superlink_address, root, free_port(), self.node_config
            ),
            self.work_dir / "supernode.log",
            environment=self._environment(),
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

    def _environment(self) -> dict[str, str]:
        """The SuperNode's environment: with the warm executor's ``flwr-clientapp``
        first on ``PATH`` (the executor started if it is not running)."""
        environment = flower_environment()
        if os.environ.get(WARM_CLIENTAPP_ENV, "1") == "0":
            return environment
        if self.warm_executor is None or not self.warm_executor.running():
            self._stop_warm_executor()
            # A private folder (0700) with a short path: a Unix socket's path is
            # limited to 107 bytes, and only this user may ask for a fork.
            self._warm_dir = Path(tempfile.mkdtemp(prefix="flp2p-warm-"))
            socket_path = self._warm_dir / "clientapp.sock"
            write_shim(self._warm_dir / "bin", socket_path, flower_executable(COMMAND))
            self.warm_executor = ManagedProcess(
                [sys.executable, "-m", "flp2p.peer.warm_clientapp", str(socket_path)],
                self.work_dir / "warm-clientapp.log",
                cwd=self.work_dir,
            )
        assert self._warm_dir is not None
        bin_dir = str(self._warm_dir / "bin")
        environment["PATH"] = bin_dir + os.pathsep + environment["PATH"]
        return environment

    def _stop_warm_executor(self) -> None:
        if self.warm_executor is not None:
            self.warm_executor.stop()
            self.warm_executor = None
        if self._warm_dir is not None:
            shutil.rmtree(self._warm_dir, ignore_errors=True)
            self._warm_dir = None

    def _running(self) -> bool:
        return self.process is not None and self.process.running()

    def stop(self) -> None:
        """Stop the SuperNode, if any."""
        if self.process is not None:
            self.process.stop()
            self.process = None
            self.target = None

    def close(self) -> None:
        """Stop the SuperNode and the warm ClientApp executor."""
        self.stop()
        self._stop_warm_executor()
