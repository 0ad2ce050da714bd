"""``python -m flp2p.peer.founder``: found a federation and serve as its bootstrap peer.

Writes the signed genesis (parameters and aggregator-eligible node ids) into the DHT,
prints the federation id (the genesis hash) on the first line of stdout — and into
``--federation-file`` when given — and keeps the DHT node running, heart-beating the
genesis, until SIGTERM or Ctrl-C::

    python -m flp2p.peer.founder --listen 0.0.0.0:9400 --advertise 10.0.0.1 \\
        --identity founder.key --federation-file federation.id \\
        --eligible <node id> --eligible <node id> \\
        --param rounds=2 --param dataset=digits --param clients=4

Peers bootstrap from the advertised host and the listen port (UDP). A listen or
advertise address this host does not have, and an ``--identity`` that is no usable
key file, are refused with one line and exit code 2 before the DHT (and Flower with
it) is imported.
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
from pathlib import Path
from typing import TYPE_CHECKING

from flp2p.peer.addresses import (
    AddressError,
    check_advertise,
    check_listen,
    is_wildcard,
    join_host_port,
    parse_address,
    parse_advertise,
)
from flp2p.peer.participant import UsageError, check_identity_file

if TYPE_CHECKING:
    from flp2p.dht.codec import JSONValue

EXIT_USAGE = 2


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


EXAMPLE = """\
example (node ids from `flp2p id --identity eligible.key` on each eligible peer):
  {prog} --listen 0.0.0.0:9400 --advertise 10.77.0.1 \\
      --identity founder.key --federation-file federation.id \\
      --eligible <node id of B> --eligible <node id of C> \\
      --param rounds=2 --param clients=3 --param dataset=digits
"""


def build_parser(prog: str = "python -m flp2p.peer.founder") -> argparse.ArgumentParser:
    """Command-line options of the founder."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.splitlines()[0],
        epilog=EXAMPLE.format(prog=prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--listen", type=parse_address, default=("127.0.0.1", 9400),
        metavar="HOST:PORT", help="DHT bind address (UDP; 0.0.0.0: all interfaces)",
    )  # fmt: skip
    parser.add_argument(
        "--advertise", type=parse_advertise, metavar="HOST[:PORT]",
        help="address peers bootstrap from (default: the listen host)",
    )  # fmt: skip
    parser.add_argument("--identity", required=True, help="founder key file")
    parser.add_argument(
        "--federation-file", type=Path, metavar="PATH",
        help="also write the federation id (one line) to this file",
    )  # fmt: skip
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


def bootstrap_address(options: argparse.Namespace) -> str:
    """``HOST:PORT`` peers pass as ``--bootstrap``, after checking that this host
    can bind the listen address and owns the advertised one.

    Raises
    ------
    AddressError
        Naming the flag at fault.
    """
    host, port = options.listen
    check_listen(host, port)
    advertised_host, advertised_port = options.advertise or (None, None)
    if advertised_host is None:
        if is_wildcard(host):
            raise AddressError(f"--listen {host}: give --advertise as well")
        advertised_host = host
    else:
        check_advertise(advertised_host)
    return join_host_port(advertised_host, advertised_port or port)


async def found(options: argparse.Namespace) -> None:
    """Publish the genesis and serve the DHT until cancelled."""
    from flp2p.dht import AddressBook, Genesis
    from flp2p.identity import Identity

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
        if options.federation_file is not None:
            options.federation_file.write_text(genesis.federation_id + "\n")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await book.stop()


def main(
    argv: Sequence[str] | None = None, prog: str = "python -m flp2p.peer.founder"
) -> int:
    """Entry point of the module and of ``flp2p found`` (``prog``); returns the
    exit code."""
    options = build_parser(prog).parse_args(argv)
    name = prog.removeprefix("python -m ")
    try:
        bootstrap = bootstrap_address(options)
        check_identity_file(Path(options.identity))
    except (AddressError, UsageError) as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"bootstrap peer at {bootstrap} (UDP)", file=sys.stderr, flush=True)
    try:
        asyncio.run(found(options))
    except (OSError, ValueError) as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
