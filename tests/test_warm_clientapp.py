"""The warm ClientApp executor forks Flower's ClientApp from a prepared process
and behaves like the command it stands in for (issue 13, item 1)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flp2p.peer.warm_clientapp import COMMAND, write_shim

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="Unix sockets, SCM_RIGHTS, /proc"
)

ENTRY = textwrap.dedent(
    """
    import json, os, sys, time

    def report():
        print(json.dumps({
            "argv": sys.argv, "cwd": os.getcwd(), "pid": os.getpid(),
            "ppid": os.getppid(), "marker": os.environ.get("MARKER"),
            "warm": os.environ.get("FLP2P_WARM_FORK"),
        }), flush=True)
        print("on stderr", file=sys.stderr, flush=True)
        if "--hang" in sys.argv:
            time.sleep(120)
        sys.exit(int(sys.argv[-1]))
    """
)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def executor(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A warm executor preloading nothing heavy, running the report entry."""
    (tmp_path / "warm_entry.py").write_text(ENTRY)
    folder = tmp_path / "warm"
    folder.mkdir(mode=0o700)
    socket_path = folder / "s.sock"
    shim = write_shim(folder / "bin", socket_path, "/bin/echo")
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(tmp_path), environment.get("PYTHONPATH", "")]
    )
    server = subprocess.Popen(
        [
            sys.executable, "-m", "flp2p.peer.warm_clientapp",
            str(socket_path), "warm_entry:report", "json",
        ],
        env=environment,
    )  # fmt: skip
    try:
        assert wait_for(socket_path.exists), "the executor did not listen"
        yield shim, server.pid
    finally:
        server.terminate()
        server.wait(timeout=20)


def run_shim(shim: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(shim), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "MARKER": "from-the-supernode"},
        timeout=60,
        check=False,
    )


def test_a_forked_clientapp_gets_the_shims_command_streams_and_exit_code(
    executor: tuple[Path, int], tmp_path: Path
) -> None:
    shim, server_pid = executor
    done = run_shim(shim, "--token", "t0k3n", "7", cwd=tmp_path)
    assert done.returncode == 7
    report = json.loads(done.stdout.splitlines()[0])
    assert report["argv"] == [COMMAND, "--token", "t0k3n", "7"]
    assert report["cwd"] == str(tmp_path)
    assert report["marker"] == "from-the-supernode"  # the shim's environment
    assert report["ppid"] == server_pid and report["warm"] == "1"  # forked warm
    assert "on stderr" in done.stderr
    assert run_shim(shim, "0", cwd=tmp_path).returncode == 0  # and again


def test_without_an_executor_the_shim_runs_the_real_command(tmp_path: Path) -> None:
    shim = write_shim(tmp_path / "bin", tmp_path / "absent.sock", "/bin/echo")
    done = run_shim(shim, "--token", "x", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "--token x"


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_stopping_the_shim_stops_the_forked_clientapp(
    executor: tuple[Path, int], tmp_path: Path, stop: signal.Signals
) -> None:
    shim, _ = executor
    out = tmp_path / "out.txt"
    with out.open("w") as stream:
        process = subprocess.Popen([str(shim), "--hang", "0"], stdout=stream)
    assert wait_for(lambda: out.read_text().strip() != "")
    child = json.loads(out.read_text().splitlines()[0])["pid"]
    assert alive(child)
    process.send_signal(stop)  # SIGTERM is forwarded; SIGKILL closes the socket
    process.wait(timeout=20)
    assert wait_for(lambda: not alive(child)), "the ClientApp outlived its shim"
