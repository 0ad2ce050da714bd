"""Every command in the README's ``bash`` blocks runs, as written or as a quick variant.

Each command is listed below with how it is checked: as written, as a quicker
variant (digits, fewer rounds and clients, in-process engine), or not at all with
the reason. A README command missing from the list (a new or edited one) fails the
test, and so does a listed command the README no longer has, so the two cannot
drift apart. Commands run in a scratch folder (``outputs/`` lands there); the
README's placeholders ``outputs/<date>/<time>`` and ``--db ...`` name the run folder
the README's own quick-check command wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
QUICK = (
    "dataset=digits rounds=1 clients=2 simulation.backend=in_process output.plot=false"
)


@dataclass(frozen=True)
class Check:
    """How one README command is checked."""

    variant: str | None = None
    """The command actually run (``None``: as written)."""
    cwd: str = "scratch"
    """``scratch`` (a fresh folder), ``run`` (the quick check's run folder) or
    ``app`` (a copy of the Flower App with the environment linked in, for
    ``flwr run .``, whose ServerApp writes ``outputs/`` where it runs)."""
    serves: bool = False
    """A server: started, asked for its page, stopped."""
    local_superlink: bool = False
    """``flwr run`` starts a detached local SuperLink that outlives it, on fixed
    ports: give it its own Flower home and ports, and stop it afterwards."""
    skip: str | None = None
    """Why it is not run."""


SIMULATE = ".venv/bin/python -m flp2p.simulate"
RAY_SKIP = Check(
    skip="a Ray cluster on fixed ports, stopped with `ray stop` (every Ray of the "
    "user); tests/test_ray_cluster.py runs the three commands on free ports, in "
    "their own temp folders and sessions"
)
QUICK_CHECK = f"{SIMULATE} dataset=digits rounds=2 clients=4"
CHECKS: dict[str, Check] = {
    # setup.sh is not run: it installs into the environment the tests run in.
    f"./scripts/setup.sh && {SIMULATE}": Check(variant=f"{SIMULATE} {QUICK}"),
    "./scripts/setup.sh && .venv/bin/python -m pytest": Check(
        skip="it is this test suite"
    ),
    QUICK_CHECK: Check(variant=f"{QUICK_CHECK} simulation.backend=in_process"),
    f"{SIMULATE} strategy=fedmedian partition.alpha=0.1": Check(
        variant=f"{SIMULATE} strategy=fedmedian partition.alpha=0.1 {QUICK}"
    ),
    f"{SIMULATE} -m strategy=fedavg,fedmedian seed=0,1": Check(
        variant=f"{SIMULATE} -m strategy=fedavg,fedmedian seed=0,1 {QUICK}"
    ),
    "PATH=$PWD/.venv/bin:$PATH FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 flwr "
    "run . --stream -c \"dataset='digits' rounds=2 clients=4\" --federation-config "
    '"num-supernodes=4"': Check(
        variant="PATH=$PWD/.venv/bin:$PATH "
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 flwr run . --stream "
        "-c \"dataset='digits' rounds=1 clients=2\" "
        '--federation-config "num-supernodes=2"',
        cwd="app",
        local_superlink=True,
    ),
    f"{SIMULATE} dataset=digits compression=int8": Check(
        variant=f"{SIMULATE} compression=int8 {QUICK}"
    ),
    f"{SIMULATE} dataset=digits compression=topk compression.fraction=0.05": Check(
        variant=f"{SIMULATE} compression=topk compression.fraction=0.05 {QUICK}"
    ),
    ".venv/bin/ray start --head --port 6379 --num-cpus 1": RAY_SKIP,
    ".venv/bin/ray start --address HEAD:6379 --num-cpus 1": RAY_SKIP,
    f"{SIMULATE} simulation.ray_address=HEAD:6379 dataset=digits rounds=2 "
    "clients=2": RAY_SKIP,
    ".venv/bin/flp2p leaderboard --db outputs/<date>/<time>/ledger.db": Check(),
    ".venv/bin/flp2p ledger verify --db outputs/<date>/<time>/ledger.db": Check(),
    ".venv/bin/flp2p ledger export --csv contributions.csv --db ...": Check(),
    ".venv/bin/flp2p status --db ...": Check(),
    ".venv/bin/flp2p dashboard --db outputs/<date>/<time>/ledger.db --run "
    "outputs/<date>/<time>": Check(serves=True),
    '.venv/bin/sqlite-utils query ledger.db "select identity, round(sum(tokens),2) '
    "as tokens, sum(verdict != 'rejected') as accepted, sum(verdict = 'rejected') as "
    'rejected from contribution_ledger group by identity order by tokens desc" '
    "--table": Check(cwd="run"),
    '.venv/bin/sqlite-utils rows ledger.db contribution_ledger --where "verdict != '
    "'accepted'\" -c server_round -c identity -c verdict -c reason -c scores "
    "--table": Check(cwd="run"),
    '.venv/bin/sqlite-utils query ledger.db "select height, server_round, '
    "substr(signer,1,12) as signer, substr(block_hash,1,12) as hash from rounds "
    'order by height desc limit 5" --table': Check(cwd="run"),
}
PEER_COMMANDS = (
    ".venv/bin/python -m flp2p.peer.",
    ".venv/bin/python -m flp2p.client ",
    ".venv/bin/flp2p found ",
    ".venv/bin/flp2p join ",
    ".venv/bin/flp2p status --dht ",
    ".venv/bin/flp2p dashboard --db flp2p-peer/ledger.db --dht ",
    # "Three machines": tests/test_peer_readme.py runs that block as written.
    "python -m flp2p.peer.founder ",
    "python -m flp2p.client ",
    "flp2p id --identity ",
)
PEER_SKIP = Check(
    skip="peer mode needs keys, node ids and several processes; "
    "tests/test_peer_localhost.py runs these commands through examples/localhost, "
    "tests/test_peer_readme.py the Three machines block, tests/test_client_cli.py "
    "flp2p join, found and status --dht, tests/test_dashboard.py dashboard --dht"
)


def readme_commands(text: str) -> list[str]:
    """Commands of the ``bash`` blocks: continuations joined, comments dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        joined = re.sub(r"\\\n\s*", "", block)
        for line in joined.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                commands.append(" ".join(command.split()))
    return commands


def check_for(command: str) -> Check | None:
    """How ``command`` is checked, ``None`` when nobody said."""
    return PEER_SKIP if command.startswith(PEER_COMMANDS) else CHECKS.get(command)


COMMANDS = readme_commands(README.read_text())


def test_every_readme_command_is_checked() -> None:
    assert len(COMMANDS) >= len(CHECKS)
    unlisted = [c for c in COMMANDS if check_for(c) is None]
    assert unlisted == [], "add these README commands to CHECKS"
    stale = sorted(set(CHECKS) - set(COMMANDS))
    assert stale == [], "the README no longer has these commands"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder (``outputs/<date>/<time>``) the README's quick check writes."""
    folder = tmp_path_factory.mktemp("quick-check")
    _run(_command(QUICK_CHECK, CHECKS[QUICK_CHECK], folder, None), folder)
    (run,) = sorted((folder / "outputs").glob("*/*"))
    return run


def _command(readme: str, check: Check, scratch: Path, run_dir: Path | None) -> str:
    """The command to run: placeholders filled, the repository's files by full path
    (it runs in a scratch folder)."""
    command = (check.variant or readme).replace("{scratch}", str(scratch))
    if run_dir is not None:
        command = command.replace("outputs/<date>/<time>", str(run_dir))
        command = command.replace("--db ...", f"--db {run_dir / 'ledger.db'}")
    return re.sub(r"(^|\s)(\.venv/bin/|\./scripts/)", rf"\g<1>{ROOT}/\g<2>", command)


def _copy_app(folder: Path) -> None:
    """The files ``flwr run .`` builds its app from, and a link to the environment."""
    folder.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, folder / name)
    for name in ("flp2p", "strategies", "conf"):
        shutil.copytree(
            ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    (folder / ".venv").symlink_to(ROOT / ".venv")


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **extra}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _superlinks_of(flwr_home: Path) -> list[int]:
    """Pids of the local SuperLinks started for ``flwr_home`` (it is in their args)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue  # the process ended meanwhile
        if any(b"flower-superlink" in a for a in args) and any(
            str(flwr_home).encode() in a for a in args
        ):
            pids.append(int(cmdline.parent.name))
    return pids


def _start_local_superlink_patiently(env: dict[str, str]) -> None:
    """Start the local SuperLink ``flwr run`` would start, with more patience.

    Flower gives its managed SuperLink a fixed 15 s to answer, which a loaded CI
    machine can exceed; starting it beforehand with Flower's own launcher and a
    longer wait lets ``flwr run`` find it running and use it, as it would reuse one
    a user started earlier.
    """
    launch = (
        "import flwr.cli.local_superlink as local; "
        "local.LOCAL_SUPERLINK_STARTUP_TIMEOUT = 120; "
        "local._start_local_superlink()"
    )
    subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-c", launch],
        env=_env(**env, PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"),
        capture_output=True,
        timeout=150,
        check=True,
    )


@contextlib.contextmanager
def _own_local_superlink(folder: Path) -> Iterator[dict[str, str]]:
    """Environment giving ``flwr run`` a private local SuperLink, stopped on exit."""
    flwr_home = folder / "flwr-home"
    env = {
        "FLWR_HOME": str(flwr_home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(_free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(_free_port()),
    }
    try:
        _start_local_superlink_patiently(env)
        yield env
    finally:
        for pid in _superlinks_of(flwr_home):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _superlinks_of(flwr_home) and time.monotonic() < deadline:
            time.sleep(0.2)


def _run(
    command: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command,
        shell=True,
        cwd=cwd,
        env=_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


def _serve(command: str, cwd: Path) -> None:
    port = _free_port()
    args = [*shlex.split(command), "--port", str(port)]
    proc = subprocess.Popen(
        args, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/", timeout=1
                ) as r:
                    assert r.status == 200
                    return
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "the server never answered"
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("readme", COMMANDS)
def test_readme_command_runs(readme: str, run_dir: Path, tmp_path: Path) -> None:
    check = check_for(readme)
    assert check is not None, "add this README command to CHECKS"
    if check.skip:
        pytest.skip(check.skip)
    if readme == QUICK_CHECK:  # the fixture ran it
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed"
        return
    cwd = {"scratch": tmp_path, "run": run_dir, "app": tmp_path / "app"}[check.cwd]
    if check.cwd == "app":
        _copy_app(cwd)
    command = _command(readme, check, tmp_path, run_dir)
    if check.serves:
        _serve(command, cwd)
    elif check.local_superlink:
        with _own_local_superlink(tmp_path) as env:
            _run(command, cwd, env)
    else:
        _run(command, cwd)
