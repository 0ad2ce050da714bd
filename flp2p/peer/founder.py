"""``python -m flp2p.peer.founder``: found a federation and serve as its bootstrap peer.

Writes the signed genesis (parameters and aggregator-eligible node ids) into the DHT,
prints the federation id (the genesis hash) on the first line of stdout, and keeps the
DHT node running — heart-beating the genesis — until SIGTERM or Ctrl-C::

    python -m flp2p.peer.founder --listen 127.0.0.1:9400 --identity founder.key \\
        --eligible <node id> --eligible <node id> \\
        --param rounds=2 --param dataset=digits --param clients=4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Sequence

from flp2p.dht import AddressBook, Genesis
from flp2p.dht.codec import JSONValue
from flp2p.identity import Identity


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` as a tuple (``argparse`` type)."""
    host, sep, port = text.rpartition(":")
    if not (sep and host and port.isdigit() and 0 <= int(port) < 65536):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def parse_parameter(text: str) -> tuple[str, JSONValue]:
    """``key=value`` with ``value`` read as JSON when it parses (``rounds=2``), else
    as a string (``dataset=digits``)."""
    key, sep, value = text.partition("=")
    if not (sep and key):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the founder."""
    parser = argparse.ArgumentParser(
        prog="python -m flp2p.peer.founder", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--listen", type=parse_address, default=("127.0.0.1", 9400))
    parser.add_argument("--identity", required=True, help="founder key file")
    parser.add_argument(
        "--eligible",
        action="append",
        required=True,
        help="node id allowed to hold the aggregator lease (repeat)",
    )
    parser.add_argument(
        "--param",
        action="append",
        type=parse_parameter,
        default=[],
        help="federation parameter KEY=VALUE, e.g. rounds=2 (repeat)",
    )
    return parser


async def found(options: argparse.Namespace) -> None:
    """Publish the genesis and serve the DHT until cancelled."""
    founder = Identity.load_or_create(options.identity)
    genesis = Genesis(
        founder=founder.node_id,
        parameters=dict(options.param),
        eligible=tuple(options.eligible),
        created_at=time.time(),
    )
    book = AddressBook(founder)
    await book.start(*options.listen)
    try:
        await book.publish(genesis)
        print(genesis.federation_id, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await book.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    options = build_parser().parse_args(argv)
    try:
        asyncio.run(found(options))
    except (OSError, ValueError) as error:
        print(f"flp2p.peer.founder: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
