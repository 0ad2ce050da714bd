"""Flower's poll intervals, as flp2p sets them, reach the Flower processes
(issue 13, item 1)."""

from __future__ import annotations

import asyncio
import importlib
import os
import time
import types
from pathlib import Path
from typing import Any

import pytest

from flp2p.dht import Lease
from flp2p.peer import supernode_polling
from flp2p.peer.processes import (
    SUPEREXEC_POLL_ENV,
    SUPEREXEC_POLL_SECONDS,
    SUPERNODE_POLL_ENV,
    SUPERNODE_POLL_SECONDS,
    flower_environment,
    supernode_command,
)
from flp2p.peer.reply_polling import PollingGrid, send_and_poll
from flp2p.peer.supernode import WARM_CLIENTAPP_ENV, SuperNodeFollower
from flp2p.peer.tls import INSECURE_FINGERPRINT
from flp2p.peer.warm_clientapp import COMMAND


def test_flower_reads_the_superexec_interval_flp2p_sets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flwr.supercore.superexec import run_superexec

    environment = flower_environment()
    assert float(environment[SUPEREXEC_POLL_ENV]) == SUPEREXEC_POLL_SECONDS
    assert float(environment[SUPERNODE_POLL_ENV]) == SUPERNODE_POLL_SECONDS
    monkeypatch.setenv(SUPEREXEC_POLL_ENV, environment[SUPEREXEC_POLL_ENV])
    assert run_superexec._get_task_poll_interval() == SUPEREXEC_POLL_SECONDS


def test_supernodes_start_through_the_polling_entry_point() -> None:
    command = supernode_command("127.0.0.1:9000", None, 9100, {"partition-id": 0})
    assert command[1:3] == ["-m", "flp2p.peer.supernode_polling"]
    assert command[command.index("--superlink") + 1] == "127.0.0.1:9000"


def test_shorter_sleeps_cap_every_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    waited: list[float] = []
    monkeypatch.setattr(time, "sleep", waited.append)
    module = types.ModuleType("fake_flower_module")
    module.time = time  # type: ignore[attr-defined]
    assert supernode_polling.shorten_polls(module, 0.2)
    module.time.sleep(3)  # type: ignore[attr-defined]
    module.time.sleep(0.05)  # type: ignore[attr-defined]
    assert waited == [0.2, 0.05]
    assert module.time.monotonic is time.monotonic  # type: ignore[attr-defined]
    # Unset or nonsense: Flower's own intervals stay.
    assert not supernode_polling.shorten_polls(
        types.ModuleType("m"), supernode_polling.poll_interval({})
    )
    assert supernode_polling.poll_interval({SUPERNODE_POLL_ENV: "-1"}) != 0.2


def test_the_flower_module_still_has_the_sleep_it_patches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    internal = importlib.import_module("flwr.supernode.start_client_internal")
    monkeypatch.setattr(internal, "time", time)  # restored after the test
    assert supernode_polling.shorten_polls(internal, SUPERNODE_POLL_SECONDS)
    assert isinstance(internal.time, supernode_polling.ShorterSleeps)


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="uses /proc")
def test_the_launched_supernode_gets_the_intervals_and_the_warm_executor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(WARM_CLIENTAPP_ENV, raising=False)
    lease = Lease(
        federation_id="ab" * 32,
        holder="cd" * 32,
        superlink_address="127.0.0.1:9",  # nobody listens: it keeps retrying
        tls_fingerprint=INSECURE_FINGERPRINT,
        epoch=1,
        last_round=0,
        model_sha256="00" * 32,
    )
    prepared: list[int] = []

    def prepare() -> Path:
        prepared.append(1)
        return tmp_path / "partition"

    follower = SuperNodeFollower(
        tmp_path, {"partition-id": 0}, allow_insecure=True, prepare=prepare
    )
    try:
        assert asyncio.run(follower.follow(lease))
        assert follower.process is not None and follower.warm_executor is not None
        environment = environ_of(follower.process.pid)
        assert environment[SUPEREXEC_POLL_ENV] == str(SUPEREXEC_POLL_SECONDS)
        assert environment[SUPERNODE_POLL_ENV] == str(SUPERNODE_POLL_SECONDS)
        # The SuperExec the SuperNode starts finds the warm executor's shim first.
        first = Path(environment["PATH"].split(os.pathsep)[0])
        assert (first / COMMAND).is_file() and os.access(first / COMMAND, os.X_OK)
        # The partition was prepared once and its folder is in the node config.
        assert prepared == [1]
        config = follower.process.command[
            follower.process.command.index("--node-config") + 1
        ]
        assert f'partition-dir="{tmp_path / "partition"}"' in config
        assert environ_of(follower.warm_executor.pid)[SUPERNODE_POLL_ENV]
    finally:
        follower.close()
    assert follower.process is None and follower.warm_executor is None
    assert not first.exists()  # the private folder is gone


class FakeGrid:
    """Replies arrive over several pulls; ``pulls`` counts them."""

    def __init__(self, arrivals: list[list[str]]) -> None:
        self.arrivals = arrivals
        self.pulls = 0

    def push_messages(self, messages: Any) -> list[str]:
        return [str(m) for m in messages]

    def pull_messages(self, ids: Any) -> list[Any]:
        self.pulls += 1
        batch = self.arrivals.pop(0) if self.arrivals else []
        return [
            types.SimpleNamespace(metadata=types.SimpleNamespace(reply_to_message_id=i))
            for i in batch
            if i in ids
        ]


def test_replies_are_pulled_every_interval_until_all_are_in() -> None:
    grid = FakeGrid([[], ["a"], [], ["b", "c"]])
    pauses: list[float] = []
    replies = send_and_poll(grid, ["a", "b", "c"], None, 0.2, sleep=pauses.append)
    assert [r.metadata.reply_to_message_id for r in replies] == ["a", "b", "c"]
    assert grid.pulls == 4 and pauses == [0.2, 0.2, 0.2]


def test_reply_polling_stops_at_the_timeout() -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    grid = FakeGrid([["a"]])
    replies = send_and_poll(
        grid, ["a", "b"], 1.0, 0.3, clock=lambda: now[0], sleep=sleep
    )
    assert [r.metadata.reply_to_message_id for r in replies] == ["a"]
    assert now[0] == pytest.approx(1.0)  # the last pause is cut to the deadline


def test_polling_grid_passes_everything_else_through() -> None:
    grid = FakeGrid([["x"]])
    polling = PollingGrid(grid, interval=0.01)
    assert polling.push_messages(["y"]) == ["y"]
    assert len(polling.send_and_receive(["x"], timeout=5)) == 1
