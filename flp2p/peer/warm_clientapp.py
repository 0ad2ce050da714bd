"""A warm ClientApp executor: a fork server with Flower, PyTorch and flp2p imported.

Flower 1.42 starts one ``flwr-clientapp`` process per message (its SuperExec runs
the command by name from ``PATH``), and each spent seconds starting Python and
importing Flower, PyTorch and the ClientApp before it could train. Here the
participant keeps one server process that has imported all of that once
(:data:`PRELOAD`). The SuperNode's ``PATH`` starts with a folder whose
``flwr-clientapp`` is a small standard-library script (:func:`shim_script`, run
with ``python -IS``): it hands its command line, environment, working folder and
standard streams (``SCM_RIGHTS``) to the server over a Unix socket in a private
folder, and the server forks a child that runs Flower's own ``flwr-clientapp``
entry point with them — the same code, minus the start-up.

Robustness, in order of what can go wrong:

* no server, or one not listening yet: the shim ``exec``\\ s the real
  ``flwr-clientapp``, so a round is never lost to the executor, only slower;
* the shim is stopped (SIGTERM, SIGINT, SIGHUP): it forwards the signal to the
  child, and Flower's own handlers end the task; the shim killed outright: the
  child notices its end of the socket close and stops itself the same way;
* the child's exit code comes back to the shim, which exits with it;
* the server forks only from its single thread (nothing runs concurrently at
  ``fork``), accepts only its own user (``SO_PEERCRED``) and dies with the peer
  (``PR_SET_PDEATHSIG``, :func:`flp2p.peer.processes.die_with_parent`); children of
  a dead server are killed by the same mechanism.
"""

from __future__ import annotations

import array
import contextlib
import importlib
import json
import os
import select
import signal
import socket
import struct
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flp2p.round_timings import WARM_FORK_ENV

PRELOAD = (
    "flwr.supernode.cli.flwr_clientapp",
    "flp2p.peer.federation_app",
)
"""Modules the server imports once: Flower's ClientApp process and the peer
ClientApp (and with it PyTorch)."""
ENTRY = "flwr.supernode.cli.flwr_clientapp:flwr_clientapp"
"""What each child runs: Flower's ``flwr-clientapp`` console entry point."""
COMMAND = "flwr-clientapp"
"""The command Flower's SuperExec launches by name (``TASK_TYPE_TO_COMMAND``)."""
REQUEST_TIMEOUT = 10.0
"""Seconds the server waits for a connected shim's request before dropping it."""
REAP_SECONDS = 0.2
"""How often the server looks for exited children while idle."""
LENGTH = struct.Struct("!I")

SHIM = """#!{python} -IS
# flwr-clientapp through flp2p's warm executor (flp2p/peer/warm_clientapp.py).
import array, json, os, signal, socket, struct, sys

SOCKET = {socket!r}
COLD = {cold!r}


def cold():
    os.execv(COLD, [COLD, *sys.argv[1:]])


try:
    link = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    link.connect(SOCKET)
except OSError:
    cold()
request = json.dumps(
    {{"argv": [{command!r}, *sys.argv[1:]], "cwd": os.getcwd(),
     "env": dict(os.environ)}}
).encode()
try:
    link.sendmsg(
        [struct.pack("!I", len(request))],
        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1, 2]))],
    )
    link.sendall(request)
    replies = link.makefile("rb")
    started = replies.readline()
except OSError:
    started = b""
if not started.strip():
    cold()  # the server forked nothing
child = int(started)


def forward(received, _frame):
    try:
        os.kill(child, received)
    except OSError:
        pass


for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(number, forward)
while True:
    try:
        ended = replies.readline()
        break
    except InterruptedError:
        continue
sys.exit(int(ended) if ended.strip() else 1)
"""


def shim_script(socket_path: Path, cold_command: str, python: str = "") -> str:
    """The ``flwr-clientapp`` that asks the server at ``socket_path`` to fork, or
    runs ``cold_command`` (the real one) when it cannot."""
    return SHIM.format(
        python=python or sys.executable,
        socket=str(socket_path),
        cold=cold_command,
        command=COMMAND,
    )


def write_shim(bin_dir: Path, socket_path: Path, cold_command: str) -> Path:
    """Write the shim as ``bin_dir/flwr-clientapp`` (executable); return its path."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / COMMAND
    path.write_text(shim_script(socket_path, cold_command))
    path.chmod(0o700)
    return path


def resolve(entry: str) -> Callable[[], Any]:
    """``module:function`` as the function."""
    module, _, name = entry.partition(":")
    function: Callable[[], Any] = getattr(importlib.import_module(module), name)
    return function


def receive_request(link: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One shim's request and the descriptors of its standard streams.

    Raises
    ------
    ValueError
        For anything but a complete request with three descriptors.
    """
    fds = array.array("i")
    data, ancillary, _, _ = link.recvmsg(
        LENGTH.size, socket.CMSG_SPACE(3 * fds.itemsize)
    )
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % fds.itemsize
            fds.frombytes(payload[:usable])
    if len(data) != LENGTH.size or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError("incomplete request")
    (size,) = LENGTH.unpack(data)
    body = b""
    while len(body) < size:
        chunk = link.recv(size - len(body))
        if not chunk:
            break
        body += chunk
    try:
        request = json.loads(body)
        if not isinstance(request.get("argv"), list):
            raise ValueError("no argv")
    except (ValueError, AttributeError):
        for fd in fds:
            os.close(fd)
        raise ValueError("malformed request") from None
    return request, list(fds)


def same_user(link: socket.socket) -> bool:
    """Whether the process at the other end runs as this user (Linux)."""
    credentials = link.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
    )
    _, uid, _ = struct.unpack("3i", credentials)
    return uid == os.getuid()


def watch_shim(link: socket.socket) -> None:
    """In a child: stop this process (as Flower handles SIGTERM) once the shim's
    end of ``link`` closes — the shim was killed."""
    with contextlib.suppress(OSError):
        while link.recv(1):
            pass
    os.kill(os.getpid(), signal.SIGTERM)


def run_child(
    link: socket.socket, request: dict[str, Any], fds: list[int], entry: str
) -> int:
    """Become the requested ClientApp process; return its exit code."""
    import threading

    from flp2p.peer.processes import die_with_parent

    die_with_parent()  # a ClientApp does not outlive the server
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(number, signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(str(request.get("cwd") or "."))
    environment = request.get("env")
    if isinstance(environment, dict):
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in environment.items()})
    os.environ[WARM_FORK_ENV] = "1"
    sys.argv = [str(a) for a in request["argv"]]
    threading.Thread(target=watch_shim, args=(link,), daemon=True).start()
    try:
        resolve(entry)()
    except SystemExit as done:
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def serve(
    socket_path: Path, entry: str = ENTRY, preload: Sequence[str] = PRELOAD
) -> None:
    """Import ``preload``, listen at ``socket_path`` and fork one child per request.

    The socket appears (by rename) only once everything is imported, so a shim
    that comes earlier starts the ClientApp cold instead of waiting.
    """
    for module in preload:
        importlib.import_module(module)
    resolve(entry)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = socket_path.with_name(socket_path.name + ".staging")
    staging.unlink(missing_ok=True)
    listener.bind(str(staging))
    listener.listen(16)
    os.replace(staging, socket_path)
    children: dict[int, socket.socket] = {}

    def stop(_number: int, _frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            readable, _, _ = select.select([listener], [], [], REAP_SECONDS)
            if readable:
                link, _ = listener.accept()
                fork_child(link, listener, children, entry)
            reap(children)
    finally:
        socket_path.unlink(missing_ok=True)


def fork_child(
    link: socket.socket,
    listener: socket.socket,
    children: dict[int, socket.socket],
    entry: str,
) -> None:
    """Read ``link``'s request and fork its ClientApp (or drop a bad request)."""
    link.settimeout(REQUEST_TIMEOUT)
    try:
        if not same_user(link):
            raise ValueError("another user")
        request, fds = receive_request(link)
    except (OSError, ValueError):
        link.close()
        return
    link.settimeout(None)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError:  # no memory or no pids left: this shim starts the app cold
        for fd in fds:
            os.close(fd)
        link.close()
        return
    if pid == 0:  # the child: never returns into the server loop
        code = 1
        try:
            listener.close()
            for other in children.values():
                other.close()
            code = run_child(link, request, fds, entry)
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    for fd in fds:
        os.close(fd)
    with contextlib.suppress(OSError):  # a shim gone already: the child notices
        link.sendall(f"{pid}\n".encode())
    children[pid] = link


def reap(children: dict[int, socket.socket]) -> None:
    """Collect exited children and tell each one's shim its exit code."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        link = children.pop(pid, None)
        if link is None:
            continue
        with contextlib.suppress(OSError):
            link.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
        link.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flp2p.peer.warm_clientapp SOCKET [ENTRY [PRELOAD...]]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m flp2p.peer.warm_clientapp SOCKET", file=sys.stderr)
        return 2
    entry = args[1] if len(args) > 1 else ENTRY
    preload = args[2:] if len(args) > 2 else PRELOAD
    serve(Path(args[0]), entry, preload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
