"""The ``flp2p`` command line: a peer's life (``join``, ``found``, ``id``, ``status
--dht``) and the ledger's (leaderboard, status, ledger tools, the dashboard).

The ledger commands read a ledger file given by ``--db`` (default ``$FLP2P_LEDGER``
or ``flp2p-ledger.db``) and never create or change it. Bad input — a missing file, a
corrupt or foreign database, a broken chain — is reported as one line on stderr with
a non-zero exit status, never a traceback.

``flp2p join`` is ``python -m flp2p.client`` and ``flp2p found`` is ``python -m
flp2p.peer.founder``: both check their arguments before Flower or PyTorch is
imported, so this module imports nothing heavy at the top (the ledger, rich and the
strategies come in with the commands that use them).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from flp2p.dashboard.peer_polling import PeerViewPoller
    from flp2p.dashboard.readings import PeerView
    from flp2p.ledger import Ledger
    from flp2p.peer.federation_status import FederationStatus

DEFAULT_LEDGER = "flp2p-ledger.db"
LEDGER_ENV = "FLP2P_LEDGER"
SHORT_ID_CHARS = 12
"""Characters of an identity or key shown in tables (enough to tell peers apart)."""

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
COMMITTEE_SIZE_DEFAULT = 3
"""``--committee-size`` when not given; equal to
:data:`flp2p.audit.committee.DEFAULT_COMMITTEE_SIZE` (a test says so), written out
so that building the parser imports no strategy code."""

Command = Callable[[argparse.Namespace, "Console"], int]


def short_id(identity: str | None) -> str:
    """First characters of a hex identity, for tables."""
    if identity is None:
        return "-"
    return identity if len(identity) <= SHORT_ID_CHARS else identity[:SHORT_ID_CHARS]


def escape(text: str) -> str:
    """``text`` safe to print through rich (no markup)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def _open(args: argparse.Namespace) -> Ledger:
    """Open the ``--db`` ledger for reading (never creates a file)."""
    from flp2p.ledger import Ledger

    return Ledger.open(Path(args.db))


def _committee_size(text: str) -> int:
    """``--committee-size``: a non-negative integer (argparse reports the rest)."""
    try:
        size = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if size < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {size}")
    return size


def cmd_leaderboard(args: argparse.Namespace, console: Console) -> int:
    """Print identities ranked by tokens earned."""
    from rich.table import Table

    from flp2p.ledger.reports import leaderboard

    with _open(args) as ledger:
        entries = leaderboard(ledger)
    table = Table(title=f"flp2p leaderboard — {escape(ledger.federation)}")
    table.add_column("rank", justify="right")
    table.add_column("peer")
    table.add_column("tier")
    for numeric in ("reputation", "tokens", "accepted/rejected"):
        table.add_column(numeric, justify="right")
    for entry in entries[: args.limit]:
        reputation = "-" if entry.reputation is None else f"{entry.reputation:.3f}"
        table.add_row(
            str(entry.rank),
            short_id(entry.identity),
            entry.tier,
            reputation,
            f"{entry.tokens:.2f}",
            f"{entry.accepted}/{entry.rejected}",
        )
    console.print(table)
    return EXIT_OK


def cmd_status(args: argparse.Namespace, console: Console) -> int:
    """Print federation, aggregator (last signer), round and known peers — from the
    ledger, or with ``--dht`` from the live federation."""
    if args.dht:
        return cmd_dht_status(args, console)
    from flp2p.ledger.reports import ledger_status

    with _open(args) as ledger:
        status = ledger_status(ledger)
    console.print(f"federation   {escape(status.federation)}")
    console.print(
        f"aggregator   {short_id(status.aggregator_node_id)} "
        f"(key {short_id(status.aggregator)})"
    )
    round_text = "-" if status.last_round is None else str(status.last_round)
    height_text = "-" if status.last_height is None else str(status.last_height)
    console.print(f"round        {round_text}")
    console.print(f"blocks       {status.blocks} (last height {height_text})")
    console.print(f"known peers  {status.known_peers}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, console: Console) -> int:
    """Recompute every block's hash link and signature, then count co-signatures.

    A broken chain is an error; a block without enough co-signatures is not (the
    last one may still be collecting them), so each block's line says where it
    stands, and every co-signature that does not count is listed with the reason.
    """
    from flp2p.ledger.reports import finality_report

    with _open(args) as ledger:
        checked = ledger.verify()
        statuses = finality_report(ledger, args.committee_size)
    console.print(
        f"ok: {checked} blocks verified for federation {escape(ledger.federation)}"
    )
    for status in statuses:
        console.print(escape(status.summary()))
        refused = () if status.finality is None else status.finality.refused
        for reason in refused:
            console.print(f"  not counted: {escape(reason)}")
    final = sum(status.is_final for status in statuses)
    audited = sum(status.committee is not None for status in statuses)
    console.print(f"final: {final} of {audited} audited round blocks")
    return EXIT_OK


def cmd_export(args: argparse.Namespace, console: Console) -> int:
    """Write every contribution with its reward as CSV (to PATH or stdout)."""
    from flp2p.ledger.reports import export_csv

    with _open(args) as ledger:
        if args.csv == "-":
            export_csv(ledger, sys.stdout)
            return EXIT_OK
        # Open the ledger first, so a bad ledger leaves no output file behind.
        with open(args.csv, "w", newline="", encoding="utf-8") as stream:
            count = export_csv(ledger, stream)
    console.print(f"wrote {count} contributions to {escape(args.csv)}")
    return EXIT_OK


def dashboard_usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the dashboard's options (``None``: nothing); checked
    before Dash, Plotly or the DHT code is imported."""
    if args.dht and not args.federation:
        return "dashboard --dht needs --federation ID"
    if args.federation and not args.dht:
        return "dashboard --federation needs --dht HOST:PORT (a live peer)"
    if args.federation and not is_hex(args.federation):
        return f"--federation must be a hex federation id, got {args.federation!r}"
    if not 0 < args.port < 65536:
        return f"--port must lie in 1..65535, got {args.port}"
    if not args.refresh > 0:
        return f"--refresh must be > 0 seconds, got {args.refresh:g}"
    return None


def is_hex(text: str) -> bool:
    """Whether ``text`` is a non-empty string of hex digits."""
    return bool(text) and all(c in "0123456789abcdefABCDEF" for c in text)


def cmd_dashboard(args: argparse.Namespace, console: Console) -> int:
    """Serve the live, read-only web page over the ledger (and the run folder); with
    ``--dht``, the federation's lease holder, epoch and live peers as well."""
    problem = dashboard_usage_problem(args)
    if problem is not None:
        print(f"flp2p: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    # Imported here: Dash and Plotly take a second to import, the other commands
    # need neither.
    from flp2p.dashboard import create_app, serve
    from flp2p.dashboard.readings import open_read_only

    db = Path(args.db)
    if db.exists():
        open_read_only(db).close()  # a foreign or corrupt file fails here, at once
    else:
        console.print(f"waiting for {escape(str(db))} to appear (is the run starting?)")
    run_dir = Path(args.run) if args.run else None
    if run_dir is not None and not run_dir.is_dir():
        raise OSError(f"no run folder at {run_dir}")
    peer_view = (
        dht_peer_view(args.dht, args.federation.lower(), every_s=args.refresh)
        if args.dht
        else None
    )
    app = create_app(
        db, run_dir, peer_view=peer_view, refresh_ms=int(args.refresh * 1000)
    )
    console.print(f"flp2p dashboard on http://{args.host}:{args.port}/ (Ctrl-C stops)")
    try:
        serve(app, args.host, args.port)
    finally:
        if peer_view is not None:
            peer_view.stop(timeout=1)
    return EXIT_OK


def dht_peer_view(
    bootstrap: Sequence[tuple[str, int]],
    federation: str,
    every_s: float,
    rpc_timeout: float = 2.0,
) -> PeerViewPoller:
    """A started poller that looks the federation up in its DHT (as ``flp2p status
    --dht`` does) every ``every_s`` seconds, for the dashboard's peer panel."""
    import asyncio

    from flp2p.dashboard.peer_polling import PeerViewPoller
    from flp2p.peer.addresses import join_host_port
    from flp2p.peer.federation_status import federation_status

    def look() -> PeerView:
        report = asyncio.run(federation_status(bootstrap, federation, rpc_timeout))
        return peer_view_of(report)

    asked = ", ".join(join_host_port(host, port) for host, port in bootstrap)
    return PeerViewPoller(look, every_s, describe=f"the DHT at {asked}").start()


def peer_view_of(report: FederationStatus) -> PeerView:
    """What the dashboard's peer panel shows of one look at the DHT."""
    from flp2p.dashboard.readings import PeerContact, PeerView

    if report.genesis is None:
        return PeerView(None, None, problem=report.problem or "nothing found")
    rounds = report.genesis.parameters.get("rounds")
    contacts = tuple(
        PeerContact(peer.node_id_prefix, peer.address, peer.roles)
        for peer in report.peers
    )
    lease = report.lease
    return PeerView(
        lease_holder=None if lease is None else lease.holder,
        epoch=None if lease is None else lease.epoch,
        live_peers=tuple(contact.node_id for contact in contacts),
        contacts=contacts,
        superlink=None if lease is None else lease.superlink_address,
        last_round=None if lease is None else lease.last_round,
        rounds=rounds if isinstance(rounds, int) else None,
        problem=report.problem,
    )


def cmd_id(args: argparse.Namespace, console: Console) -> int:
    """Print the node id of the peer whose key is ``--identity`` (the founder lists
    these with ``--eligible``); a missing key file is created first, as
    ``python -m flp2p.client`` would."""
    from flp2p.identity import Identity

    path = Path(args.identity)
    existed = path.exists()
    try:
        identity = Identity.load_or_create(path)
    except ValueError as error:
        print(f"flp2p: error: {path}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    if not existed:
        print(f"created a new identity key at {path}", file=sys.stderr)
    print(identity.node_id)
    return EXIT_OK


def cmd_dht_status(args: argparse.Namespace, console: Console) -> int:
    """Ask the federation's DHT who is live, who holds the lease and at which epoch."""
    import asyncio

    from flp2p.peer.federation_status import federation_status

    if not args.federation:
        print("flp2p: error: status --dht needs --federation ID", file=sys.stderr)
        return EXIT_USAGE
    report = asyncio.run(federation_status(args.dht, args.federation.lower()))
    if report.genesis is None:
        print(f"flp2p: error: {report.problem}", file=sys.stderr)
        return EXIT_FAILURE
    for line in report.lines():
        console.print(escape(line))
    return EXIT_OK


PEER_COMMANDS = {
    "join": ("flp2p.peer.participant", "join a federation (= python -m flp2p.client)"),
    "found": (
        "flp2p.peer.founder",
        "found a federation (= python -m flp2p.peer.founder)",
    ),
}
"""Subcommands that are whole programs of their own: ``flp2p NAME ...`` hands the
rest of the command line to that module's ``main``, which checks it before any
heavy import."""


def run_peer_command(name: str, argv: Sequence[str]) -> int:
    """``flp2p join`` / ``flp2p found``: the module's ``main`` under this name."""
    import importlib

    module = importlib.import_module(PEER_COMMANDS[name][0])
    code: int = module.main(list(argv), prog=f"flp2p {name}")
    return code


def _dht_addresses(text: str) -> tuple[str, int]:
    from flp2p.peer.addresses import parse_address

    return parse_address(text)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``flp2p``."""
    db_option = argparse.ArgumentParser(add_help=False)
    db_option.add_argument(
        "--db",
        default=os.environ.get(LEDGER_ENV, DEFAULT_LEDGER),
        metavar="PATH",
        help=f"ledger file (default: ${LEDGER_ENV} or {DEFAULT_LEDGER})",
    )
    parser = argparse.ArgumentParser(
        prog="flp2p", description="Federated learning between untrusting peers."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    board = commands.add_parser(
        "leaderboard", parents=[db_option], help="rank peers by tokens earned"
    )
    board.add_argument("--limit", type=int, default=None, help="show the top N")
    board.set_defaults(handler=cmd_leaderboard)

    for name, (_, summary) in PEER_COMMANDS.items():
        # Listed for --help only: main() hands these over before parsing.
        commands.add_parser(name, help=summary, add_help=False)

    status = commands.add_parser(
        "status",
        parents=[db_option],
        help="federation, aggregator, round, peers (from a ledger, or --dht live)",
        description="From a ledger file (--db), or live from the federation's DHT "
        "(--dht HOST:PORT --federation ID), e.g. "
        "flp2p status --dht 10.77.0.2:9401 --federation $(cat federation.id)",
    )
    status.add_argument(
        "--dht", type=_dht_addresses, action="append", metavar="HOST:PORT",
        help="ask the DHT through this peer instead of reading a ledger (repeat)",
    )  # fmt: skip
    status.add_argument("--federation", metavar="ID", help="federation id (--dht)")
    status.set_defaults(handler=cmd_status)

    ledger = commands.add_parser("ledger", help="inspect the rewards ledger")
    ledger_commands = ledger.add_subparsers(dest="ledger_command", required=True)
    verify = ledger_commands.add_parser(
        "verify",
        parents=[db_option],
        help="check every block's hash, signature and co-signatures",
    )
    verify.add_argument(
        "--committee-size",
        type=_committee_size,
        default=COMMITTEE_SIZE_DEFAULT,
        metavar="K",
        help="auditors per round the federation uses "
        f"(default {COMMITTEE_SIZE_DEFAULT})",
    )
    verify.set_defaults(handler=cmd_verify)
    export = ledger_commands.add_parser(
        "export", parents=[db_option], help="export contributions and rewards"
    )
    export.add_argument(
        "--csv",
        nargs="?",
        const="-",
        required=True,
        metavar="PATH",
        help="write CSV to PATH (stdout when omitted)",
    )
    export.set_defaults(handler=cmd_export)

    dashboard = commands.add_parser(
        "dashboard",
        parents=[db_option],
        help="live read-only web page over a ledger",
        description="A live, read-only web page over a ledger file (--db) and its run "
        "folder (--run); in peer mode, over a participant's replica with the "
        "federation's lease holder, epoch and live peers from its DHT, e.g. "
        "flp2p dashboard --db work/ledger.db --dht 10.77.0.2:9401 "
        "--federation $(cat federation.id)",
    )
    dashboard.add_argument(
        "--run", metavar="RUN_DIR", help="run folder whose metrics.csv to plot"
    )
    dashboard.add_argument("--port", type=int, default=8050, help="(default: 8050)")
    dashboard.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)"
    )
    dashboard.add_argument(
        "--refresh",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how often the page re-reads the ledger (default: 2)",
    )
    dashboard.add_argument(
        "--dht", type=_dht_addresses, action="append", metavar="HOST:PORT",
        help="peer mode: show the lease holder, epoch and live peers, asking the "
        "federation's DHT through this peer (repeat for more)",
    )  # fmt: skip
    dashboard.add_argument(
        "--federation", metavar="ID", help="federation id (with --dht)"
    )
    dashboard.set_defaults(handler=cmd_dashboard)

    node_id = commands.add_parser(
        "id",
        help="print a peer's node id (creates its key file if missing)",
        description=(
            "Print the node id a key file signs as (what the founder's --eligible "
            "takes), e.g. flp2p id --identity flp2p-peer/identity.key"
        ),
    )
    node_id.add_argument(
        "--identity", required=True, metavar="PATH", help="the peer's key file"
    )
    node_id.set_defaults(handler=cmd_id)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``flp2p``; return the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in PEER_COMMANDS:
        return run_peer_command(arguments[0], arguments[1:])
    args = build_parser().parse_args(arguments)
    from rich.console import Console

    from flp2p.ledger import LedgerError

    console = Console(highlight=False)
    handler: Command = args.handler
    try:
        return handler(args, console)
    except (LedgerError, sqlite3.DatabaseError, OSError) as error:
        # One line, no traceback: these are problems with the input, not bugs.
        message = " ".join(str(error).split())
        print(f"flp2p: error: {message}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
