"""One command, a whole federation on 127.0.0.1: a founder (bootstrap peer), two
aggregator-eligible peers and N clients, each its own ``python -m`` process.

::

    .venv/bin/python examples/localhost/run.py --clients 4 --rounds 2
    .venv/bin/python examples/localhost/run.py --kill-aggregator-after 1   # failover
    .venv/bin/python examples/localhost/run.py --eligible 4 --byzantine-aggregator alter

Every process logs to ``<work dir>/<name>.log``. With ``--kill-aggregator-after R`` the
lease holder's whole process group (peer, SuperLink, ServerApp) gets SIGKILL as soon
as its lease advertises round R; the other eligible peer takes over and the clients
follow it. With ``--byzantine-aggregator {alter,drop,reward,replay}`` the first
aggregator lies in every round it aggregates (tests of verifiable aggregation: its
committee refuses to co-sign and revokes its lease; an honest peer continues from
the last final block); ``--byzantine-auditor`` makes one other eligible peer accuse
falsely. ``--eligible 4`` gives the aggregator a committee of three. Exit code 0
when every client reports the federation finished.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flp2p.dht import AddressBook, Lease
from flp2p.identity import Identity
from flp2p.peer.auditor import BYZANTINE_AUDITOR_ENV
from flp2p.peer.election import elect_successor
from flp2p.peer.participant import configure_logging
from flp2p.peer.processes import (
    descendants,
    flower_environment,
    free_port,
    process_children,
)
from flp2p.peer.round_audit import BYZANTINE_AGGREGATOR_ENV, LIES

PYTHON = sys.executable
LOG_TIME_FORMAT = "%Y-%m-%d %H:%M:%S,%f"
"""Time stamp of the peers' ``--verbose`` lines (``logging``'s ``asctime``)."""


def on_this_host(name: str) -> tuple[Sequence[str], str]:
    """Where process ``name`` runs: no launcher prefix, listening on loopback."""
    return (), "127.0.0.1"


@dataclass
class LocalFederation:
    """The processes of one localhost federation and where they log."""

    work_dir: Path
    clients: int = 4
    rounds: int = 2
    dataset: str = "digits"
    strategy: str = "trusted"
    """flp2p's default pipeline: it checks every reply's signature and records each
    round in the ledger (Flower's built-in strategies do neither)."""
    insecure: bool = False
    lease_timeout: float = 120.0
    record_ttl: float | None = None
    """``--record-ttl`` of every peer: lifetime of node records and the lease, which
    are renewed every sixth to third of it (``None``: the peers' default)."""
    placement: Callable[[str], tuple[Sequence[str], str]] = on_this_host
    """Process name → (command prefix that launches it, host it listens on): e.g.
    ``ip netns exec NS`` and that namespace's address, one "machine" per peer."""
    bootstrap_port: int = 0
    """UDP port of the founder (0: one free on this host)."""
    observe: Callable[[Coroutine[Any, Any, Any]], Any] = asyncio.run
    """Runs the observer's DHT lookups (from where the bootstrap peer is reachable)."""
    parameters: Sequence[str] = ()
    """More genesis parameters (``KEY=VALUE``), e.g. ``peer.round-deadline=60``."""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    commands: dict[str, list[str]] = field(default_factory=dict)
    """Process name → the arguments it was started with (:meth:`restart`)."""
    federation_id: str = ""
    bootstrap: str = ""
    eligible: dict[str, str] = field(default_factory=dict)
    """Process name → node id of the aggregator-eligible peers."""
    eligible_peers: int = 2
    """How many aggregator-eligible peers (4: the holder has a committee of 3)."""
    byzantine_aggregator: str | None = None
    """The lie the first aggregator tells (one of LIES), or None."""
    byzantine_auditor: bool = False
    """Whether one eligible peer other than the first aggregator accuses falsely."""

    def first_aggregator(self) -> str:
        """Process name of the peer the first election names."""
        first = elect_successor(self.eligible.values(), self.eligible.values())
        return next(n for n, node_id in self.eligible.items() if node_id == first)

    def lying_auditor(self) -> str:
        """Process name of the peer that accuses falsely (``byzantine_auditor``)."""
        return next(n for n in self.eligible if n != self.first_aggregator())

    def _environment(self, name: str) -> dict[str, str]:
        extra = {}
        if self.byzantine_aggregator and name == self.first_aggregator():
            extra[BYZANTINE_AGGREGATOR_ENV] = self.byzantine_aggregator
        if self.byzantine_auditor and name == self.lying_auditor():
            extra[BYZANTINE_AUDITOR_ENV] = "accuse"
        return flower_environment(extra)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.work_dir / f"{name}.log").open("ab")
        prefix, _ = self.placement(name)
        process = subprocess.Popen(
            [*prefix, PYTHON, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self._environment(name),
            start_new_session=True,  # one group per peer: kill -9 takes its children
        )
        log.close()
        self.processes[name] = process
        self.commands[name] = args
        return process

    def start(self) -> None:
        """Found the federation, then start the eligible peers and the clients."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.byzantine_aggregator not in (None, *LIES):
            raise ValueError(f"byzantine_aggregator must be one of {LIES}")
        for name in (
            f"eligible-{chr(ord('a') + i)}" for i in range(self.eligible_peers)
        ):
            key = self.work_dir / name / "identity.key"
            self.eligible[name] = Identity.load_or_create(key).node_id
        _, host = self.placement("founder")
        self.bootstrap = f"{host}:{self.bootstrap_port or free_port()}"
        founder = self._spawn(
            "founder",
            [
                "-m", "flp2p.peer.founder", "--listen", self.bootstrap,
                "--identity", str(self.work_dir / "founder.key"),
                *(a for n in self.eligible.values() for a in ("--eligible", n)),
                "--param", f"rounds={self.rounds}",
                "--param", f"clients={self.clients}",
                "--param", f"dataset={self.dataset}",
                "--param", f"strategy={self.strategy}",
                "--param", "output.progress=false",
                *(a for p in self.parameters for a in ("--param", p)),
            ],
        )  # fmt: skip
        self.federation_id = self._read_federation_id(founder)
        # The peer the election names first starts first, so that it is live (and
        # wins) whenever the others look: the Byzantine aggregator is that one.
        first = self.first_aggregator()
        for name in sorted(self.eligible, key=lambda n: n != first):
            self._spawn(name, [*self._peer_args(name), "--aggregator-eligible"])
        for index in range(self.clients):
            partition = ["--partition-id", str(index), "--num-partitions"]
            self._spawn(
                f"client-{index}",
                [*self._peer_args(f"client-{index}"), *partition, str(self.clients)],
            )

    def _read_federation_id(self, founder: subprocess.Popen[bytes]) -> str:
        log_path = self.work_dir / "founder.log"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for line in log_path.read_text().splitlines():
                if len(line) == 64 and all(c in "0123456789abcdef" for c in line):
                    return line
            if founder.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"the founder did not start; see {log_path}")

    def _peer_args(self, name: str) -> list[str]:
        args = [
            "-m", "flp2p.client", "--bootstrap", self.bootstrap,
            "--federation", self.federation_id,
            "--identity", str(self.work_dir / name / "identity.key"),
            "--work-dir", str(self.work_dir / name),
            "--listen", f"{self.placement(name)[1]}:0",
            "--lease-timeout", str(self.lease_timeout), "--verbose",
        ]  # fmt: skip
        if self.record_ttl is not None:
            args += ["--record-ttl", str(self.record_ttl)]
        return [*args, "--insecure"] if self.insecure else args

    def client_names(self) -> list[str]:
        """Names of the client processes."""
        return [f"client-{i}" for i in range(self.clients)]

    def wait_clients(self, timeout: float) -> dict[str, int | None]:
        """Exit code of every client (``None``: still running at the timeout)."""
        deadline = time.monotonic() + timeout
        for name in self.client_names():
            remaining = max(0.1, deadline - time.monotonic())
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.processes[name].wait(timeout=remaining)
        return {n: self.processes[n].poll() for n in self.client_names()}

    def holder_name(self, lease: Lease) -> str | None:
        """Process name of the peer holding ``lease``."""
        names = [n for n, node_id in self.eligible.items() if node_id == lease.holder]
        return names[0] if names else None

    def kill(self, name: str) -> None:
        """SIGKILL ``name`` as if its machine died: its process group and every
        process below it (Flower detaches SuperExec and the ServerApp into
        sessions of their own, which a group kill would miss)."""
        process = self.processes[name]
        tree = descendants(process.pid, process_children())
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        process.wait(timeout=10)

    def restart(self, name: str, bootstrap: str | None = None) -> None:
        """Start ``name`` again as it was (same identity, same work folder), joining
        through ``bootstrap`` (``HOST:PORT`` of any live peer) if given."""
        args = list(self.commands[name])
        if bootstrap is not None:
            args[args.index("--bootstrap") + 1] = bootstrap
        self._spawn(name, args)

    def dht_address_of(self, name: str) -> str:
        """The DHT address ``name`` printed (others may ``--bootstrap`` from it)."""
        text = (self.work_dir / f"{name}.log").read_text(errors="replace")
        marker = "DHT node at "
        for line in text.splitlines():
            if marker in line:
                return line.split(marker, 1)[1].split()[0]
        raise RuntimeError(f"{name} printed no DHT address")

    def stop(self) -> None:
        """Terminate every process group still running (then kill stragglers)."""
        for process in self.processes.values():
            # Even when the peer exited, a process it left behind may hold its group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)

    def log_tail(self, name: str, lines: int = 5) -> str:
        """Last lines of a process log (for failure messages)."""
        text = (self.work_dir / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


async def watch_lease(
    federation: LocalFederation, wanted: Callable[[Lease], bool], timeout: float
) -> Lease | None:
    """Read the lease as an observer until ``wanted`` holds for it."""
    # A DHT client: watching changes nobody's routing table.
    book = AddressBook(Identity.generate(), rpc_timeout=2.0, client_only=True)
    await book.start(federation.placement("observer")[1])
    try:
        host, port = federation.bootstrap.rsplit(":", 1)
        await book.bootstrap([(host, int(port))])
        deadline = time.monotonic() + timeout
        # Leases are checked against the genesis: fetch it first, as peers do (a
        # genesis missed inside a lease check is only asked again 30 s later).
        while await book.get_genesis(federation.federation_id) is None:
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.5)
        while time.monotonic() < deadline:
            lease = await book.get_lease(federation.federation_id)
            if lease is not None and wanted(lease):
                return lease
            await asyncio.sleep(0.5)
        return None
    finally:
        await book.stop()


@dataclass(frozen=True)
class Failover:
    """What happened around a SIGKILL of the lease holder (seconds after the kill)."""

    victim: str
    killed_after_round: int
    new_lease_after: float | None
    next_round_after: float | None
    successor_epoch: int | None
    resumed_from_round: int | None
    killed_at: float = 0.0
    """Unix time of the SIGKILL (to line it up with the processes' logs)."""
    victim_superlink: str = ""
    successor_superlink: str | None = None
    """SuperLink addresses the two leases advertised."""


def kill_holder_and_watch(
    federation: LocalFederation, after_round: int, timeout: float
) -> Failover:
    """SIGKILL the holder once round ``after_round`` is advertised; time the resume.

    Raises
    ------
    RuntimeError
        If no lease reaches that round within ``timeout``.
    """
    lease = federation.observe(
        watch_lease(federation, lambda x: x.last_round >= after_round, timeout)
    )
    victim = None if lease is None else federation.holder_name(lease)
    if lease is None or victim is None:
        raise RuntimeError(f"no lease advertised round {after_round} in {timeout} s")
    federation.kill(victim)
    killed_at, killed_at_unix = time.monotonic(), time.time()
    successor = federation.observe(
        watch_lease(federation, lambda x: x.epoch > lease.epoch, timeout)
    )
    new_lease_after = None if successor is None else time.monotonic() - killed_at
    progressed = federation.observe(
        watch_lease(
            federation,
            lambda x: x.epoch > lease.epoch and x.last_round > lease.last_round,
            timeout,
        )
    )
    return Failover(
        victim=victim,
        killed_after_round=lease.last_round,
        new_lease_after=new_lease_after,
        next_round_after=None if progressed is None else time.monotonic() - killed_at,
        successor_epoch=None if successor is None else successor.epoch,
        resumed_from_round=None if successor is None else successor.last_round,
        killed_at=killed_at_unix,
        victim_superlink=lease.superlink_address,
        successor_superlink=None if successor is None else successor.superlink_address,
    )


def supernodes_moved_after(
    federation: LocalFederation, failover: Failover
) -> float | None:
    """Seconds from the kill until every client's SuperNode had been started
    against the successor's SuperLink (from the clients' logs; ``None`` if one
    never was)."""
    wanted = f"SuperNode → {failover.successor_superlink} (epoch"
    moved: list[float] = []
    for name in federation.client_names():
        text = (federation.work_dir / f"{name}.log").read_text(errors="replace")
        times = [
            datetime.datetime.strptime(line[:23], LOG_TIME_FORMAT).timestamp()
            for line in text.splitlines()
            if wanted in line
        ]
        if not times:
            return None
        moved.append(min(times))
    return max(moved) - failover.killed_at


def main(argv: list[str] | None = None) -> int:
    """Run the example; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--strategy", default="trusted")
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--kill-aggregator-after", type=int, metavar="ROUND")
    parser.add_argument("--eligible", type=int, default=2, metavar="N")
    parser.add_argument("--byzantine-aggregator", choices=LIES)
    parser.add_argument("--byzantine-auditor", action="store_true")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    configure_logging(verbose=False)  # the observer's DHT node is chatty otherwise
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="flp2p-localhost-"))
    federation = LocalFederation(
        work_dir,
        args.clients,
        args.rounds,
        args.dataset,
        args.strategy,
        args.insecure,
        eligible_peers=args.eligible,
        byzantine_aggregator=args.byzantine_aggregator,
        byzantine_auditor=args.byzantine_auditor,
        parameters=tuple(args.param),
    )
    started = time.monotonic()
    try:
        federation.start()
        print(f"federation {federation.federation_id} · logs in {work_dir}")
        if args.kill_aggregator_after is not None:
            failover = kill_holder_and_watch(
                federation, args.kill_aggregator_after, args.timeout
            )
            print(failover)
            moved = supernodes_moved_after(federation, failover)
            print(f"all SuperNodes on the new SuperLink after {moved} s")
        codes = federation.wait_clients(args.timeout)
    finally:
        federation.stop()
    for name, code in codes.items():
        print(f"{name}: exit {code} · {federation.log_tail(name, 1)}")
    print(f"total {time.monotonic() - started:.0f} s")
    return 0 if all(code == 0 for code in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
