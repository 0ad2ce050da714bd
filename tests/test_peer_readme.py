"""The README's "Three machines" commands, run as written on three namespace hosts.

The only edits are the README's own placeholders (``<node id of B>``,
``<federation id>``), filled with what the earlier commands printed, as a user
would; every machine runs in a folder of its own. Needs root for ``ip netns``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers_netns import Hosts, hosts_or_skip
from test_peer_localhost import wait_until_none_left

from flp2p.peer.processes import descendants, flower_environment, process_children

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MACHINES = ("A", "B", "C")
TIMEOUT = 420.0
SETTLE_SECONDS = 2.0
"""Pause between starting two commands, as a person typing them would leave."""


def readme_steps() -> list[tuple[tuple[str, ...], str]]:
    """(machines, command) of every command in the section's code block, in order."""
    text = README.read_text()
    section = text[text.index("### Three machines") :]
    block = section[section.index("```bash\n") + 8 : section.index("```\n", 8)]
    steps: list[tuple[tuple[str, ...], str]] = []
    machines: tuple[str, ...] = ()
    for line in block.replace("\\\n", " ").splitlines():
        if line.startswith("# on "):
            machines = tuple(re.findall(r"\b([A-C])\b", line.split(":")[0]))
        elif line.strip():
            steps.append((machines, " ".join(line.split())))
    return steps


def test_the_readme_block_names_every_machine() -> None:
    steps = readme_steps()
    assert [m for m, _ in steps] == [
        ("B", "C"), ("A",), ("B", "C"), ("A",), ("B",), ("C",),
    ]  # fmt: skip
    assert steps[0][1] == "flp2p id --identity eligible.key"


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    yield from hosts_or_skip("flp2preadme", MACHINES)


class Machines:
    """One folder and one namespace per machine; every process started, logged."""

    def __init__(self, hosts: Hosts, root: Path) -> None:
        self.hosts = hosts
        self.root = root
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.environment = flower_environment({"PYTHONPATH": str(ROOT)})
        for machine in MACHINES:
            (root / machine).mkdir()

    def _command(self, machine: str, command: str) -> list[str]:
        return [*self.hosts.launcher(machine), "bash", "-c", f"exec {command}"]

    def run(self, machine: str, command: str) -> str:
        done = subprocess.run(
            self._command(machine, command),
            cwd=self.root / machine,
            env=self.environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout

    def start(self, machine: str, command: str) -> subprocess.Popen[bytes]:
        name = f"{machine}-{len(self.processes)}"
        with (self.root / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                self._command(machine, command),
                cwd=self.root / machine,
                env=self.environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.processes.append((name, process))
        return process

    def log(self, process: subprocess.Popen[bytes]) -> str:
        name = next(n for n, p in self.processes if p is process)
        return (self.root / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for _, process in self.processes:
            tree = descendants(process.pid, process_children())
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=15)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            for pid in tree:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture
def machines(hosts: Hosts, tmp_path: Path) -> Iterator[Machines]:
    running = Machines(hosts, tmp_path)
    try:
        yield running
    finally:
        running.stop()
        assert wait_until_none_left(tmp_path) == []


def _wait_for_file(path: Path, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text().strip()
        time.sleep(0.2)
    raise AssertionError(f"{path} was not written")


def test_the_three_machine_commands_work_as_written(machines: Machines) -> None:
    placeholders: dict[str, str] = {}
    participants: list[subprocess.Popen[bytes]] = []
    for hosts, command in readme_steps():
        for machine in hosts:
            filled = command
            for placeholder, value in placeholders.items():
                filled = filled.replace(placeholder, value)
            assert "<" not in filled, f"unfilled placeholder in {filled!r}"
            if command.startswith("flp2p id"):
                placeholders[f"<node id of {machine}>"] = machines.run(
                    machine, filled
                ).strip()
            elif "flp2p.peer.founder" in command:
                machines.start(machine, filled)
                federation_file = machines.root / machine / "federation.id"
                placeholders["<federation id>"] = _wait_for_file(federation_file)
            else:
                process = machines.start(machine, filled)
                if "--partition-id" in command:
                    participants.append(process)
                time.sleep(SETTLE_SECONDS)
    deadline = time.monotonic() + TIMEOUT
    for process in participants:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
    finals = [machines.log(p).strip().splitlines()[-1] for p in participants]
    assert [p.poll() for p in participants] == [0, 0, 0], finals
    federation = placeholders["<federation id>"]
    leases = {final.split(";")[0] for final in finals}
    assert len(leases) == 1, finals
    assert re.fullmatch(
        rf"federation {federation[:12]} finished: round 2, model [0-9a-f]{{12}}, "
        r"lease epoch 1",
        leases.pop(),
    ), finals[0]
    # Each participant ends with the final model the lease names.
    assert all(final.endswith("final_model.npz (hash matches)") for final in finals)
