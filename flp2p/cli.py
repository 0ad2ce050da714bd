"""The ``flp2p`` command line: leaderboard, status and ledger tools, and a peer's id.

Every command reads a ledger file given by ``--db`` (default ``$FLP2P_LEDGER`` or
``flp2p-ledger.db``) and never creates or changes it. Bad input — a missing file, a
corrupt or foreign database, a broken chain — is reported as one line on stderr with
a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flp2p.ledger import Ledger, LedgerError
from flp2p.ledger.reports import export_csv, leaderboard, ledger_status

DEFAULT_LEDGER = "flp2p-ledger.db"
LEDGER_ENV = "FLP2P_LEDGER"
SHORT_ID_CHARS = 12
"""Characters of an identity or key shown in tables (enough to tell peers apart)."""

EXIT_OK = 0
EXIT_FAILURE = 1

Command = Callable[[argparse.Namespace, Console], int]


def short_id(identity: str | None) -> str:
    """First characters of a hex identity, for tables."""
    if identity is None:
        return "-"
    return identity if len(identity) <= SHORT_ID_CHARS else identity[:SHORT_ID_CHARS]


def _open(args: argparse.Namespace) -> Ledger:
    """Open the ``--db`` ledger for reading (never creates a file)."""
    return Ledger.open(Path(args.db))


def cmd_leaderboard(args: argparse.Namespace, console: Console) -> int:
    """Print identities ranked by tokens earned."""
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
    """Print federation, aggregator (last signer), round and known peers."""
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
    """Recompute every block's hash link and signature."""
    with _open(args) as ledger:
        checked = ledger.verify()
    console.print(
        f"ok: {checked} blocks verified for federation {escape(ledger.federation)}"
    )
    return EXIT_OK


def cmd_export(args: argparse.Namespace, console: Console) -> int:
    """Write every contribution with its reward as CSV (to PATH or stdout)."""
    with _open(args) as ledger:
        if args.csv == "-":
            export_csv(ledger, sys.stdout)
            return EXIT_OK
        # Open the ledger first, so a bad ledger leaves no output file behind.
        with open(args.csv, "w", newline="", encoding="utf-8") as stream:
            count = export_csv(ledger, stream)
    console.print(f"wrote {count} contributions to {escape(args.csv)}")
    return EXIT_OK


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

    status = commands.add_parser(
        "status", parents=[db_option], help="federation, aggregator, round, peers"
    )
    status.set_defaults(handler=cmd_status)

    ledger = commands.add_parser("ledger", help="inspect the rewards ledger")
    ledger_commands = ledger.add_subparsers(dest="ledger_command", required=True)
    verify = ledger_commands.add_parser(
        "verify", parents=[db_option], help="check every block's hash and signature"
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

    node_id = commands.add_parser(
        "id", help="print a peer's node id (creates its key file if missing)"
    )
    node_id.add_argument(
        "--identity", required=True, metavar="PATH", help="the peer's key file"
    )
    node_id.set_defaults(handler=cmd_id)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``flp2p``; return the exit status."""
    args = build_parser().parse_args(argv)
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
