"""Flower SuperLink and SuperNode as managed subprocesses.

Flower's deployment engine has no public Python API for either (docs/library-notes.md),
so the peer runtime runs the installed CLIs. Children stay in the peer's process group,
so killing a peer's group (``kill -9 -PGID``) takes its SuperLink or SuperNode with it,
as a crashed machine would. Flower detaches SuperExec into a session of its own; it
watches its parent's pid and exits with it, but an app process it started may outlive
it, so :meth:`ManagedProcess.stop` signals the whole tree it finds under the child.
Stopping is bounded in time: terminate, wait, then kill."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from flp2p.peer.addresses import split_host_port

PR_SET_PDEATHSIG = 1
"""``prctl`` option: signal to deliver when the parent dies (linux/prctl.h)."""
SUPERNODE_API_HOST = "127.0.0.1"
"""Bind host of a SuperNode's runtime API: only the SuperExec it starts on the same
host dials it, so it never listens beyond loopback (the SuperNode itself dials out to
the SuperLink)."""
STOP_GRACE_SECONDS = 5.0
"""How long a child may take to exit after SIGTERM before it is killed."""
SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
"""Flower's own setting: seconds between two SuperExec requests for a task to
launch (default 1 s), i.e. how long a ClientApp or ServerApp waits to be started."""
SUPEREXEC_POLL_SECONDS = 0.1
"""What flp2p sets it to: a round waits at most this long for each ClientApp start,
for one cheap local request ten times a second."""
SUPERNODE_POLL_ENV = "FLP2P_SUPERNODE_POLL_INTERVAL"
"""Seconds a SuperNode waits between two pulls that found no message
(:mod:`flp2p.peer.supernode_polling`; Flower hard-codes 3 s)."""
SUPERNODE_POLL_SECONDS = 0.2
"""What flp2p sets it to: each pull is one small request to the SuperLink."""


def flower_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower children: no telemetry, no dependency installation.

    The virtual environment's ``bin`` goes first on ``PATH``: the SuperLink and the
    SuperNode start ``flower-superexec`` and the app processes by name.
    """
    environment = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    environment["PATH"] = bin_dir + os.pathsep + environment.get("PATH", "")
    environment["FLWR_TELEMETRY_ENABLED"] = "0"
    environment["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    # Flower's fixed polls otherwise add seconds to every round.
    environment[SUPEREXEC_POLL_ENV] = str(SUPEREXEC_POLL_SECONDS)
    environment[SUPERNODE_POLL_ENV] = str(SUPERNODE_POLL_SECONDS)
    environment.update(extra or {})
    return environment


def flower_executable(name: str) -> str:
    """Path of a Flower console script installed beside this interpreter."""
    return str(Path(sys.executable).parent / name)


def die_with_parent() -> None:
    """In a forked child: ask Linux to SIGKILL it when its parent dies.

    A peer killed alone (``kill -9 PID`` rather than its group) would otherwise leave
    its SuperLink or SuperNode running under init, still serving a federation that
    has moved on. ``prctl(PR_SET_PDEATHSIG)`` is Linux-only; elsewhere this does
    nothing and only group kills clean up.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def process_children(proc_dir: Path = Path("/proc")) -> dict[int, list[int]]:
    """Parent pid → child pids of every visible process (Linux ``/proc``; empty
    elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in proc_dir.glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process exited while we looked
            continue
        # The command name may contain spaces and parentheses: split after the last ")".
        fields = text[text.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return children


def descendants(pid: int, children: dict[int, list[int]]) -> list[int]:
    """Every process below ``pid`` in the tree ``children`` (depth first)."""
    found: list[int] = []
    stack = list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, []))
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def wait_for_port(address: str, timeout: float) -> bool:
    """Whether something accepts TCP connections at ``address`` within ``timeout``."""
    host, port = split_host_port(address)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def superlink_command(host: str, port: int, tls: tuple[Path, Path] | None) -> list[str]:
    """``flower-superlink`` serving every API on ``host:port`` (a wildcard binds
    every interface).

    ``tls`` is (certificate, key) of a self-signed certificate, which is also its own
    CA; ``None`` runs without TLS.
    """
    command = [
        flower_executable("flower-superlink"),
        "--host",
        host,
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]
    if tls is None:
        return [*command, "--insecure"]
    certificate, key = tls
    return [
        *command,
        "--ssl-ca-certfile",
        str(certificate),
        "--ssl-certfile",
        str(certificate),
        "--ssl-keyfile",
        str(key),
    ]


def supernode_command(
    superlink_address: str,
    root_certificate: Path | None,
    runtime_port: int,
    node_config: Mapping[str, int | str],
) -> list[str]:
    """``flower-supernode`` for one partition; ``root_certificate=None``: no TLS.

    It runs through :mod:`flp2p.peer.supernode_polling` (the same CLI, polling the
    SuperLink every :data:`SUPERNODE_POLL_SECONDS` instead of every 3 s).
    """
    config = " ".join(
        f"{k}={v}" if isinstance(v, int) else f'{k}="{v}"'
        for k, v in node_config.items()
    )
    trust = (
        ["--insecure"]
        if root_certificate is None
        else ["--root-certificates", str(root_certificate)]
    )
    return [
        sys.executable,
        "-m",
        "flp2p.peer.supernode_polling",
        "--superlink",
        superlink_address,
        *trust,
        "--host",
        SUPERNODE_API_HOST,
        "--port",
        str(runtime_port),
        "--node-config",
        config,
    ]


class ManagedProcess:
    """A child process logging to a file.

    Parameters
    ----------
    command
        Program and arguments.
    log_path
        File receiving stdout and stderr (appended).
    environment
        Environment of the child (default: :func:`flower_environment`).
    cwd
        Working directory of the child.
    """

    def __init__(
        self,
        command: Sequence[str],
        log_path: Path,
        environment: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.command = list(command)
        self.log_path = log_path
        with log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                self.command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(environment or flower_environment()),
                cwd=cwd,
                # Fires when the forking *thread* exits: create children from the
                # event-loop thread, never from a worker thread.
                preexec_fn=die_with_parent,
            )

    @property
    def pid(self) -> int:
        """Process id."""
        return self.process.pid

    def running(self) -> bool:
        """Whether the child has not exited yet."""
        return self.process.poll() is None

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> int | None:
        """Terminate the child and its descendants; kill what is left after
        ``grace`` seconds.

        Returns the child's exit code (``None`` if it could not be reaped).
        """
        tree = descendants(self.process.pid, process_children())
        for send in (self.process.terminate, self.process.kill):
            if self.process.poll() is not None:
                break
            send()
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
        for pid in tree:  # e.g. a ClientApp still training for a vanished SuperLink
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        return self.process.poll()
