"""The founder says within seconds when the lease's SuperLink is out of its reach.

A founder process on loopback, an eligible peer's address book publishing leases:
first one whose SuperLink listens (nothing said), then one advertising a port where
nothing listens (one warning line, within 10 s of the lease, naming the address),
then the last round's lease at that port (a finished holder: nothing said).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flp2p.dht import AddressBook, Lease
from flp2p.identity import Identity
from flp2p.peer.founder import UNREACHABLE_REPORT_SECONDS
from flp2p.peer.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
REPORT_WITHIN_SECONDS = 10.0
"""Issue 12, bad input: reported within 10 s, not after a lease timeout."""


def warnings_in(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if "warning:" in line]


def federation_id_in(log: Path, founder: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and founder.poll() is None:
        for line in log.read_text().splitlines():
            if len(line) == 64 and all(c in "0123456789abcdef" for c in line):
                return line
        time.sleep(0.1)
    raise AssertionError(f"the founder did not start: {log.read_text()}")


def lease(
    holder: Identity, federation: str, address: str, epoch: int, last_round: int = 0
) -> Lease:
    return Lease(
        federation_id=federation,
        holder=holder.node_id,
        superlink_address=address,
        tls_fingerprint="ab" * 32,
        epoch=epoch,
        last_round=last_round,
        model_sha256="cd" * 32,
    )


def test_a_superlink_out_of_the_founders_reach_is_reported_within_ten_seconds(
    tmp_path: Path,
) -> None:
    eligible = Identity.generate()
    port = free_port()
    log = tmp_path / "founder.log"
    with log.open("wb") as out:
        founder = subprocess.Popen(
            [
                sys.executable, "-m", "flp2p.peer.founder",
                "--listen", f"127.0.0.1:{port}",
                "--identity", str(tmp_path / "founder.key"),
                "--eligible", eligible.node_id, "--param", "rounds=2",
            ],
            stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
    try:
        federation = federation_id_in(log, founder)
        dead = f"127.0.0.1:{free_port()}"  # nothing listens there

        async def holder() -> float:
            book = AddressBook(eligible, rpc_timeout=1.0)
            await book.start()
            listening = await asyncio.start_server(
                lambda r, w: w.close(), "127.0.0.1", 0
            )
            try:
                await book.bootstrap([("127.0.0.1", port)])
                alive = f"127.0.0.1:{listening.sockets[0].getsockname()[1]}"
                await book.publish(lease(eligible, federation, alive, 1))
                # Longer than the founder would take to report an unreachable one.
                await asyncio.sleep(UNREACHABLE_REPORT_SECONDS + 3.0)
                assert warnings_in(log) == []
                await book.publish(lease(eligible, federation, dead, 2))
                published = time.monotonic()
                while not warnings_in(log):
                    assert time.monotonic() - published < 30, log.read_text()
                    await asyncio.sleep(0.1)
                took = time.monotonic() - published
                # The last round's lease: its holder closes the SuperLink once the
                # clients saw the end, which is no reason to warn.
                await book.publish(lease(eligible, federation, dead, 3, last_round=2))
                await asyncio.sleep(UNREACHABLE_REPORT_SECONDS + 3.0)
                return took
            finally:
                listening.close()
                await book.stop()

        took = asyncio.run(holder())
    finally:
        founder.send_signal(signal.SIGTERM)
        founder.wait(timeout=30)
    [line] = warnings_in(log)
    assert took <= REPORT_WITHIN_SECONDS, line
    assert f"SuperLink at {dead} (lease epoch 2, holder {eligible.node_id[:12]}" in line
    assert "connection refused" in line and "must accept TCP on that port" in line
    assert founder.returncode == 0
    print(f"reported {took:.1f} s after the lease")
