"""Child processes of a peer never outlive it: stop, group kill, parent death."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flp2p.peer.processes import (
    ManagedProcess,
    descendants,
    process_children,
    wait_for_port,
)

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="uses /proc and prctl"
)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


@linux_only
def test_stop_also_ends_a_detached_grandchild(tmp_path: Path) -> None:
    # Like flower-supernode starting flower-superexec in a session of its own.
    script = textwrap.dedent(
        """
        import subprocess, time
        child = subprocess.Popen(["sleep", "60"], start_new_session=True)
        print(child.pid, flush=True)
        time.sleep(60)
        """
    )
    log = tmp_path / "child.log"
    managed = ManagedProcess([sys.executable, "-c", script], log)
    deadline = time.monotonic() + 20
    while not log.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(log.read_text().split()[0])
    assert alive(grandchild)
    managed.stop(grace=2)
    assert not managed.running()
    assert wait_gone(grandchild)


@linux_only
def test_children_die_with_a_killed_peer(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from flp2p.peer.processes import ManagedProcess
        child = ManagedProcess(["sleep", "60"], Path({str(tmp_path / "c.log")!r}))
        print(child.pid, flush=True)
        time.sleep(60)
        """
    )
    peer = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    )
    assert peer.stdout is not None
    child = int(peer.stdout.readline())
    assert alive(child)
    peer.kill()  # SIGKILL of the peer alone, not its group
    peer.wait(10)
    assert wait_gone(child)


def test_process_children_parses_names_with_parentheses(tmp_path: Path) -> None:
    for pid, name, ppid in [(10, "a) (b", 1), (11, "x", 10), (12, "y y", 11)]:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(f"{pid} ({name}) S {ppid} 0 0\n")
    (tmp_path / "self").mkdir()  # not a pid: ignored
    tree = process_children(tmp_path)
    assert tree == {1: [10], 10: [11], 11: [12]}
    assert sorted(descendants(10, tree)) == [11, 12]


@linux_only
def test_process_children_sees_this_process() -> None:
    assert os.getpid() in process_children()[os.getppid()]


def test_wait_for_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        address = f"127.0.0.1:{server.getsockname()[1]}"
        assert wait_for_port(address, timeout=2)
    assert not wait_for_port(address, timeout=0.5)
