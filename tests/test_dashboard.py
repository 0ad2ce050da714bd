"""``flp2p dashboard``: what it reads (no browser) and the page in headless Chromium.

The browser test drives Debian's ``chromium`` over the DevTools protocol: it loads
the page once, checks that the peers of the finished rounds appear, appends a block
to the ledger and waits for the same page (no reload) to show it, and fails on any
console error, uncaught exception or failed resource load (a CDN the machine cannot
reach would be one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from helpers_dht import LoopbackDht
from helpers_ledger import (
    FEDERATION,
    KeySigner,
    database_dump,
    make_report,
    make_reputations,
    record_rounds,
)
from websockets.sync.client import ClientConnection, connect

from flp2p import cli
from flp2p.dashboard import read_snapshot
from flp2p.dashboard.figures import leaderboard_rows
from flp2p.dht import NodeRecord
from flp2p.ledger import Ledger
from flp2p.peer.addresses import parse_address
from flp2p.peer.tls import INSECURE_FINGERPRINT
from strategies.trusted import LEFT_OUT

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium")


@pytest.fixture
def dht() -> Iterator[LoopbackDht]:
    network = LoopbackDht()
    yield network
    network.close()


def _ledger(path: Path, rounds: list[int], peers: int = 4) -> None:
    with Ledger.open(
        path, federation=FEDERATION, signer=KeySigner(1), create=True
    ) as ledger:
        record_rounds(ledger, rounds, peers)


def test_an_accepted_reply_at_weight_0_is_listed_with_its_reason(
    tmp_path: Path,
) -> None:
    """The default strategy's robust stage can give no weight to a reply the
    detectors accepted; the table of replies that did not count in full shows it."""
    report = make_report(1)
    first, *others = report.contributions
    moved = replace(first, weight=0.0, reason=LEFT_OUT)
    total = sum(c.weight for c in others if c.weight > 0)
    others = [replace(c, weight=c.weight / total) for c in others]
    report = replace(report, contributions=(moved, *others))
    db = tmp_path / "ledger.db"
    with Ledger.open(
        db, federation=FEDERATION, signer=KeySigner(1), create=True
    ) as ledger:
        ledger.record_round(report, make_reputations(report))
    judged = {(j.identity, j.verdict, j.reason) for j in read_snapshot(db).judgements}
    assert judged == {
        ("peer-000", "accepted", LEFT_OUT),
        ("peer-003", "rejected", "norm outlier"),
    }


def test_snapshot_reads_verdicts_reputation_tokens_and_chain(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    _ledger(db, [1, 2])
    (tmp_path / "metrics.csv").write_text(
        "round,accuracy,loss,seconds,epsilon,epsilon_median\n"
        "0,0.1,2.3,0.0,,\n1,0.5,1.2,1.0,0.8,0.6\n2,0.7,0.9,2.0,1.1,0.9\n3,0.8"
    )
    snapshot = read_snapshot(db, tmp_path)
    assert snapshot.problem is None
    assert snapshot.chain is not None and snapshot.chain.ok
    assert snapshot.chain.detail == "3 blocks verified"
    assert snapshot.status is not None and snapshot.status.last_round == 2
    assert [(v.server_round, v.accepted, v.rejected) for v in snapshot.verdicts] == [
        (1, 3, 1),
        (2, 3, 1),
    ]
    assert {(j.server_round, j.identity, j.reason) for j in snapshot.judgements} == {
        (1, "peer-003", "norm outlier"),
        (2, "peer-003", "norm outlier"),
    }
    assert len(snapshot.reputations) == 8  # 4 peers x 2 rounds
    assert {p.tier for p in snapshot.reputations if p.identity == "peer-003"} == {
        "bronze"
    }
    rows = leaderboard_rows(snapshot)
    assert rows[0]["rank"] == 1 and rows[-1]["peer"] == "peer-003"
    assert float(rows[0]["tokens"]) > float(rows[-1]["tokens"])
    # The torn last line (a row being written) is skipped, ε kept where present.
    assert [(p.server_round, p.epsilon) for p in snapshot.metrics] == [
        (0, None),
        (1, 0.8),
        (2, 1.1),
    ]
    assert snapshot.metrics[2].epsilon_median == 0.9


def test_snapshot_never_writes_and_names_what_is_missing(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    assert "no ledger" in (read_snapshot(db).problem or "")
    assert not db.exists()
    _ledger(db, [1])
    before = database_dump(db)
    read_snapshot(db)
    assert database_dump(db) == before
    foreign = tmp_path / "foreign.db"
    foreign.write_bytes(b"not a database at all" * 100)
    assert "not" in (read_snapshot(foreign).problem or "")


def test_snapshot_reports_a_broken_chain(tmp_path: Path) -> None:
    from helpers_ledger import tamper

    db = tmp_path / "ledger.db"
    _ledger(db, [1, 2])
    tamper(db, ("UPDATE contributions SET weight = 0.9 WHERE height = 1", ()))
    snapshot = read_snapshot(db)
    assert snapshot.chain is not None and not snapshot.chain.ok
    assert "1" in snapshot.chain.detail


def test_figures_plot_epsilon_and_tiers_from_the_snapshot(tmp_path: Path) -> None:
    from flp2p.dashboard.figures import epsilon_figure, tier_figure, verdicts_figure

    db = tmp_path / "ledger.db"
    _ledger(db, [1, 2])
    (tmp_path / "metrics.csv").write_text(
        "round,accuracy,loss,seconds,epsilon,epsilon_median,delta\n"
        "0,0.1,2.3,0.0,,,\n1,0.5,1.2,1.0,0.8,0.6,1e-05\n2,0.7,0.9,2.0,1.1,0.9,1e-05\n"
    )
    snapshot = read_snapshot(db, tmp_path)
    traces = {trace.name: trace for trace in epsilon_figure(snapshot).data}
    assert list(traces["ε (max)"].y) == [0.8, 1.1]
    assert list(traces["ε (median)"].x) == [1, 2]
    rejected = next(t for t in verdicts_figure(snapshot).data if t.name == "rejected")
    assert list(rejected.y) == [1, 1]
    (heatmap,) = tier_figure(snapshot).data
    row = list(heatmap.y).index("peer-003")
    assert list(heatmap.z[row]) == [0, 0]  # bronze after both rounds
    assert list(heatmap.z[0]) == [1, 1]  # peer-000: silver


def test_peer_mode_shows_lease_epoch_and_live_peers(tmp_path: Path) -> None:
    from flp2p.dashboard import PeerView
    from flp2p.dashboard.page import peer_view_text

    db = tmp_path / "ledger.db"
    _ledger(db, [1])
    assert peer_view_text(read_snapshot(db)) == ""  # not in peer mode: no section
    view = PeerView("a" * 64, epoch=3, live_peers=("b" * 64, "c" * 64))
    text = peer_view_text(read_snapshot(db, peer_view=lambda: view))
    assert "lease      aaaaaaaaaaaa (epoch 3)" in text
    assert "live peers bbbbbbbbbbbb, cccccccccccc" in text


def test_peer_panel_lists_contacts_with_roles_and_says_why_it_is_stale(
    tmp_path: Path,
) -> None:
    from flp2p.dashboard import PeerView
    from flp2p.dashboard.page import peer_problem_text, peer_view_text
    from flp2p.dashboard.readings import PeerContact

    db = tmp_path / "ledger.db"
    _ledger(db, [1])
    founder = PeerContact("f" * 40, "10.0.0.1:9400", ("founder",))
    aggregator = PeerContact("a" * 40, "10.0.0.2:9401", ("eligible", "aggregator"))
    view = PeerView(
        "a" * 64,
        epoch=4,
        contacts=(founder, aggregator, PeerContact("c" * 40, "10.0.0.3:9402")),
        superlink="10.0.0.2:9092",
        last_round=7,
        rounds=10,
        seen_at=time.mktime((2026, 1, 2, 13, 14, 15, 0, 0, -1)),
    )
    snapshot = read_snapshot(db, peer_view=lambda: view)
    assert peer_view_text(snapshot).splitlines() == [
        "lease      aaaaaaaaaaaa (epoch 4)",
        "           round 7/10, SuperLink 10.0.0.2:9092",
        "live peers 3 answering the DHT",
        "  10.0.0.1:9400          ffffffffffff  founder",
        "  10.0.0.2:9401          aaaaaaaaaaaa  eligible, aggregator",
        "  10.0.0.3:9402          cccccccccccc  participant",
        "seen       13:14:15",
    ]
    assert peer_problem_text(snapshot) == ""
    stale = dataclasses.replace(view, problem="no DHT peer answered at 10.0.0.1:9400")
    snapshot = read_snapshot(db, peer_view=lambda: stale)
    assert peer_problem_text(snapshot) == (
        "federation not visible: no DHT peer answered at 10.0.0.1:9400 "
        "(showing the DHT's answer of 13:14:15)"
    )
    nothing = PeerView(None, None, problem="no genesis of federation ab… in the DHT")
    snapshot = read_snapshot(db, peer_view=lambda: nothing)
    assert peer_view_text(snapshot).startswith("lease      none live")
    assert peer_problem_text(snapshot) == (
        "federation not visible: no genesis of federation ab… in the DHT"
    )
    assert peer_problem_text(read_snapshot(db)) == ""  # not in peer mode


def test_poller_turns_failures_into_the_panel_message_and_keeps_looking() -> None:
    from flp2p.dashboard import PeerView
    from flp2p.dashboard.peer_polling import PeerViewPoller

    answers: list[PeerView | Exception] = [
        PeerView("a" * 64, epoch=1),
        OSError("network is unreachable"),
        PeerView(None, None, problem="no DHT peer answered at 10.0.0.1:9400"),
        PeerView("a" * 64, epoch=2),
    ]
    looked = threading.Event()

    def look() -> PeerView:
        answer = answers.pop(0) if answers else PeerView("a" * 64, epoch=2)
        if not answers:
            looked.set()
        if isinstance(answer, Exception):
            raise answer
        return answer

    poller = PeerViewPoller(look, every_s=60, describe="the DHT at 10.0.0.1:9400")
    first = poller()
    assert first.problem == "no answer yet from the DHT at 10.0.0.1:9400 (asking)"
    seen = poller.poll_once()
    assert (seen.epoch, seen.problem) == (1, None) and seen.seen_at is not None
    failed = poller.poll_once()
    assert failed.problem == "the DHT at 10.0.0.1:9400: network is unreachable"
    assert (failed.lease_holder, failed.epoch, failed.seen_at) == (
        "a" * 64,
        1,
        seen.seen_at,
    )  # the last view that worked, marked stale
    assert poller.poll_once().problem == "no DHT peer answered at 10.0.0.1:9400"
    assert poller() is poller._latest
    # The thread does the same, one look after another.
    poller = PeerViewPoller(look, every_s=0.01, describe="x").start()
    try:
        assert looked.wait(5)
        deadline = time.monotonic() + 5
        while poller().epoch != 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (poller().epoch, poller().problem) == (2, None)
    finally:
        poller.stop(timeout=5)


def test_dht_peer_view_reads_holder_epoch_and_peers_from_a_real_dht(
    dht: LoopbackDht,
) -> None:
    federation = dht.genesis.federation_id
    poller = cli.dht_peer_view([parse_address(dht.address)], federation, every_s=60)
    poller.stop(timeout=10)  # the test drives the looks itself
    dht.publish_lease("127.0.0.1:9092", INSECURE_FINGERPRINT, epoch=3)
    deadline = time.monotonic() + 30
    view = poller.poll_once()
    while view.epoch is None and time.monotonic() < deadline:
        view = poller.poll_once()  # a loaded DHT may miss a fresh record once
    assert view.problem is None
    assert (view.lease_holder, view.epoch) == (dht.eligible.node_id, 3)
    assert (view.superlink, view.last_round, view.rounds) == ("127.0.0.1:9092", 0, 2)
    roles = {c.address: c.roles for c in view.contacts}
    assert roles[dht.address] == ("founder",)
    holder = dht.eligible_book
    assert holder is not None
    assert roles["{}:{}".format(*holder.address)] == (
        "eligible",
        "aggregator (epoch 3)",
    )
    assert view.live_peers == tuple(c.node_id for c in view.contacts)
    unknown = cli.dht_peer_view([parse_address(dht.address)], "ab", every_s=60)
    unknown.stop(timeout=10)
    assert unknown.poll_once().problem == "no genesis of federation ab… in the DHT"
    dht.stop_nodes()
    gone = poller.poll_once()
    assert gone.problem == f"no DHT peer answered at {dht.address}"
    assert gone.epoch == 3  # the last answer, shown as stale


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dht", "127.0.0.1:9400"], "dashboard --dht needs --federation ID"),
        (["--federation", "ab"], "dashboard --federation needs --dht HOST:PORT"),
        (
            ["--dht", "127.0.0.1:9400", "--federation", "xyz"],
            "--federation must be a hex federation id, got 'xyz'",
        ),
        (["--refresh", "0"], "--refresh must be > 0 seconds, got 0"),
        (["--port", "70000"], "--port must lie in 1..65535, got 70000"),
    ],
)
def test_cli_dashboard_usage_errors_are_one_line_before_dash_loads(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    script = (
        "import sys; from flp2p import cli; "
        f"code = cli.main({['dashboard', '--db', str(tmp_path / 'l.db'), *extra]!r}); "
        "print(code, 'dash' in sys.modules, 'flp2p.dht' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.stdout.split() == [str(cli.EXIT_USAGE), "False", "False"]
    assert done.stderr.startswith(f"flp2p: error: {message}")
    assert len(done.stderr.strip().splitlines()) == 1


def test_cli_dashboard_refuses_a_foreign_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = tmp_path / "foreign.db"
    foreign.write_bytes(b"x" * 4096)
    assert cli.main(["dashboard", "--db", str(foreign)]) == cli.EXIT_FAILURE
    err = capsys.readouterr().err
    assert err.startswith("flp2p: error:") and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ real browser


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextlib.contextmanager
def _process(args: list[str], **kwargs: Any) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(args, text=True, **kwargs)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class DevTools:
    """The few Chrome DevTools Protocol calls the test needs, over one websocket."""

    def __init__(self, socket: ClientConnection) -> None:
        self._socket = socket
        self._next_id = 0
        self.errors: list[str] = []
        self.requested: list[str] = []
        """Every URL the page asked for (to prove nothing comes from a CDN)."""

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        call_id = self._next_id
        self._socket.send(
            json.dumps({"id": call_id, "method": method, "params": params})
        )
        while True:
            message = json.loads(self._socket.recv(timeout=10))
            if message.get("id") == call_id:
                assert "error" not in message, message
                result: dict[str, Any] = message.get("result", {})
                return result
            self._note(message)

    def _note(self, event: dict[str, Any]) -> None:
        """Keep every console error, uncaught exception and failed load."""
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] == "error":
            self.errors.append(
                " ".join(
                    str(a.get("value", a.get("description"))) for a in params["args"]
                )
            )
        elif method == "Runtime.exceptionThrown":
            self.errors.append(json.dumps(params["exceptionDetails"])[:500])
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(params["entry"]["text"])
        elif method == "Network.requestWillBeSent":
            self.requested.append(params["request"]["url"])

    def text(self) -> str:
        result = self.call(
            "Runtime.evaluate", expression="document.body.innerText", returnByValue=True
        )
        return str(result["result"].get("value", ""))

    def wait_for_text(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if re.search(pattern, text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} never appeared; page:\n{text}")
            time.sleep(0.2)


@contextlib.contextmanager
def _dashboard_in_chromium(
    dashboard_args: list[str], tmp_path: Path
) -> Iterator[tuple[DevTools, str]]:
    """``flp2p dashboard ARGS`` served on a free port and headless Chromium on it:
    yields the page's DevTools (navigated there) and the page's URL."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server_args = [sys.executable, "-m", "flp2p.cli", "dashboard", *dashboard_args]
    # Dash drops an answer a newer tick superseded: the refresh must outlast a
    # callback on a busy machine.
    server_args += ["--port", str(port), "--refresh", "1"]
    page_url = f"http://127.0.0.1:{port}/"
    assert CHROMIUM is not None
    devtools_port = _free_port()
    browser_args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu"]
    browser_args += ["--no-first-run", f"--remote-debugging-port={devtools_port}"]
    browser_args += [f"--user-data-dir={tmp_path / 'chromium'}", "about:blank"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    with (
        _process(server_args, env=env, **quiet),
        _process(browser_args, **quiet),
    ):
        targets_url = f"http://127.0.0.1:{devtools_port}/json/list"
        _wait_http(targets_url, timeout=60)
        with urllib.request.urlopen(targets_url, timeout=5) as reply:
            targets = json.load(reply)
        page = next(t for t in targets if t["type"] == "page")
        _wait_http(page_url, timeout=60)  # Dash imports slowly on a busy machine
        with connect(page["webSocketDebuggerUrl"], max_size=None) as socket:
            tools = DevTools(socket)
            for domain in ("Runtime", "Log", "Page", "Network"):
                tools.call(f"{domain}.enable")
            tools.call("Page.navigate", url=page_url)
            yield tools, page_url


def _assert_clean(tools: DevTools, page_url: str) -> None:
    """No console error, and every resource came from the dashboard itself."""
    tools.text()  # drain events that arrived meanwhile
    assert tools.errors == []
    assert any(url.endswith(".js") or ".js?" in url for url in tools.requested)
    remote = [u for u in tools.requested if "://" in u.split(",")[0]]
    assert [u for u in remote if not u.startswith(page_url)] == []


@pytest.mark.timeout(180)
@pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (scripts/setup.sh)"
)
def test_page_in_headless_chromium_shows_peers_and_follows_the_ledger(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ledger.db"
    _ledger(db, [1, 2])
    (tmp_path / "metrics.csv").write_text(
        "round,accuracy,loss,seconds\n0,0.1,2.3,0.0\n1,0.5,1.2,1.0\n2,0.7,0.9,2.0\n"
    )
    args = ["--db", str(db), "--run", str(tmp_path)]
    with _dashboard_in_chromium(args, tmp_path) as (tools, page_url):
        # Each panel is its own Dash callback: the table of rejections may land
        # a tick after the standings, so wait for both.
        tools.wait_for_text(r"peer-003", timeout=30)
        text = tools.wait_for_text(r"norm outlier", timeout=30)
        for peer in ("peer-000", "peer-001", "peer-002", "peer-003"):
            assert peer in text
        assert "round 2" in text and "chain: ok, 3 blocks verified" in text
        assert "peer-004" not in text

        with Ledger.open(db, signer=KeySigner(1)) as ledger:
            report = make_report(3, peers=5)
            ledger.record_round(report, make_reputations(report))
        text = tools.wait_for_text(r"peer-004", timeout=10)
        assert "round 3" in text and "chain: ok, 4 blocks verified" in text
        assert "lease" not in text  # not in peer mode: no federation panel
        _assert_clean(tools, page_url)


@pytest.mark.timeout(180)
@pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (scripts/setup.sh)"
)
def test_peer_mode_page_follows_the_lease_in_a_real_dht(
    dht: LoopbackDht, tmp_path: Path
) -> None:
    db = tmp_path / "ledger.db"
    _ledger(db, [1])
    dht.publish_lease("127.0.0.1:9092", INSECURE_FINGERPRINT, epoch=1)
    holder = dht.eligible_book
    assert holder is not None
    holder_address = "{}:{}".format(*holder.address)
    record = NodeRecord(dht.eligible.node_id, holder_address, ("aggregator",))
    dht.call(holder.publish(record))
    args = ["--db", str(db), "--dht", dht.address]
    args += ["--federation", dht.genesis.federation_id]
    short_holder = dht.eligible.node_id[:12]
    with _dashboard_in_chromium(args, tmp_path) as (tools, page_url):
        tools.wait_for_text(rf"lease +{short_holder} \(epoch 1\)", timeout=30)
        # The ledger part still works; it is its own callback, so on a busy machine
        # it can land a tick after the DHT panel.
        text = tools.wait_for_text(r"chain: ok, 2 blocks verified", timeout=30)
        assert re.search(rf"lease +{short_holder} \(epoch 1\)", text)
        assert "SuperLink 127.0.0.1:9092" in text
        assert "live peers 2 answering the DHT" in text
        assert holder_address in text and "aggregator (epoch 1)" in text
        assert dht.address in text and "founder" in text

        dht.publish_lease("127.0.0.1:9093", INSECURE_FINGERPRINT, epoch=2)
        text = tools.wait_for_text(rf"lease +{short_holder} \(epoch 2\)", timeout=20)
        assert "SuperLink 127.0.0.1:9093" in text and "(epoch 1)" not in text

        # The DHT goes away: the panel says so and keeps the last answer.
        dht.stop_nodes()
        text = tools.wait_for_text(r"federation not visible: .*no DHT peer", 20)
        assert f"lease      {short_holder} (epoch 2)" in text
        assert "chain: ok, 2 blocks verified" in text
        _assert_clean(tools, page_url)
