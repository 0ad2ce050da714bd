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


def wait_for_nodes(address: str, count: int, deadline: float) -> None:
    probe = (
        "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
        "print(sum(1 for n in ray.nodes() if n['Alive']))"
    )
    while time.monotonic() < deadline:
        done = subprocess.run(
            [sys.executable, "-c", probe, address],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        if done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == [
            str(count)
        ]:
            return
        time.sleep(1)
    raise AssertionError(f"the Ray cluster at {address} never had {count} nodes")


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
            wait_for_nodes(address, 1, deadline)
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
            wait_for_nodes(address, 2, deadline)
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


def test_an_unreachable_cluster_is_one_line_and_exit_1(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flp2p.simulate",
            "dataset=digits",
            "rounds=1",
            "clients=2",
            f"simulation.ray_address=127.0.0.1:{port}",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip().startswith("flp2p.simulate: error: no Ray head")
    assert "Traceback" not in done.stderr


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
