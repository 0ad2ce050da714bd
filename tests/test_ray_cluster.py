"""``simulation.ray_address``: the same simulation on an existing two-node Ray cluster.

A head and a worker node are started on loopback with ``ray start`` (one CPU
each, their own temp folders, the fixed ports on free ones, so nothing is shared
with another Ray on this machine), a short digits federation runs on them, and
both nodes are stopped in a ``finally``. They run with ``--block`` in sessions of
teardown ends exactly the processes this test started (``ray stop`` would end
every Ray of this user on the machine).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flp2p.config import ConfigError, RunSettings, compose
from flp2p.simulate import RayClusterUnreachable, simulate

RAY = Path(sys.executable).with_name("ray")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def node_ports(port: int) -> list[str]:
    """The one fixed port a second node on this machine would share (the
    dashboard agent's, 52365 by default); Ray picks the others free at random."""
    return [f"--dashboard-agent-listen-port={port}"]


def start_node(arguments: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(RAY), "start", "--block", "--num-cpus=1", *arguments],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: ended as a whole
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        )


def stop_node(node: subprocess.Popen[bytes]) -> None:
    if node.poll() is None:
        os.killpg(node.pid, signal.SIGTERM)
        try:
            node.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait(timeout=10)


def wait_until_started(
    node: subprocess.Popen[bytes], log: Path, deadline: float
) -> None:
    """Until ``ray start`` says its node runs (a probing driver would cost a Ray
    connection per try)."""
    while time.monotonic() < deadline:
        if "Ray runtime started" in log.read_text(errors="replace"):
            return
        if node.poll() is not None:
            raise AssertionError(f"ray start exited: {log.read_text()[-2000:]}")
        time.sleep(0.5)
    raise AssertionError(f"the Ray node never started: {log.read_text()[-2000:]}")


@pytest.fixture
def two_node_cluster() -> Iterator[str]:
    if not RAY.exists():
        pytest.skip("no ray command in this environment")
    nodes: list[subprocess.Popen[bytes]] = []
    # Short paths: Ray's Unix sockets live under the temp folder (≤ 107 bytes).
    with tempfile.TemporaryDirectory(prefix="r", dir="/tmp") as folder:
        base = Path(folder)
        ports = free_ports(4)
        head_port, client_port = ports[:2]
        address = f"127.0.0.1:{head_port}"
        # Ray turns 127.0.0.1 into this machine's own address (which stays on the
        # machine, as loopback does) and binds the nodes there.
        common = ["--object-store-memory=100000000"]
        try:
            nodes.append(
                start_node(
                    [
                        "--head",
                        f"--port={head_port}",
                        f"--ray-client-server-port={client_port}",
                        "--include-dashboard=false",
                        "--disable-usage-stats",
                        f"--temp-dir={base / 'h'}",
                        *common,
                        *node_ports(ports[2]),
                    ],
                    base / "head.log",
                )
            )
            deadline = time.monotonic() + 150
            wait_until_started(nodes[0], base / "head.log", deadline)
            nodes.append(
                start_node(
                    [
                        f"--address={address}",
                        f"--temp-dir={base / 'w'}",
                        *common,
                        *node_ports(ports[3]),
                    ],
                    base / "worker.log",
                )
            )
            wait_until_started(nodes[1], base / "worker.log", deadline)
            yield address
        finally:
            for node in reversed(nodes):
                stop_node(node)


def test_a_federation_runs_on_an_existing_two_node_cluster(
    two_node_cluster: str, tmp_path: Path
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flp2p.simulate",
            "dataset=digits",
            "rounds=2",
            "clients=2",
            "strategy=screened_fedavg",
            "train.max_steps=5",
            f"simulation.ray_address={two_node_cluster}",
            "output.progress=false",
            "output.plot=false",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = (tmp_path / "summary.json").read_text()
    assert '"status": "completed"' in summary
    assert '"rounds_completed": 2' in summary


def test_an_unreachable_cluster_stops_the_run_before_it_starts(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    settings = RunSettings.from_config(
        compose(
            [
                "dataset=digits",
                "rounds=1",
                "clients=2",
                f"simulation.ray_address=127.0.0.1:{port}",
            ]
        )
    )
    with pytest.raises(RayClusterUnreachable, match="no Ray head answers at 127"):
        simulate(settings, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing was written


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["simulation.ray_address=nowhere"], "must be auto or HOST:PORT"),
        (
            ["simulation.ray_address=auto", "simulation.num_cpus=2"],
            "num_cpus must be null",
        ),
        (
            ["simulation.ray_address=auto", "simulation.backend=in_process"],
            "needs simulation.backend=ray",
        ),
    ],
)
def test_the_ray_address_is_validated(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunSettings.from_config(compose(overrides))
    assert RunSettings.from_config(
        compose(["simulation.ray_address=10.0.0.5:6379"])
    ).ray_address == ("10.0.0.5:6379")
