"""``python -m flp2p.peer.founder``: found a federation and serve as its bootstrap peer.

Writes the signed genesis (parameters and aggregator-eligible node ids) into the DHT,
prints the federation id (the genesis hash) on the first line of stdout — and into
``--federation-file`` when given — and keeps the DHT node running, heart-beating the
genesis, until SIGTERM or Ctrl-C::

    python -m flp2p.peer.founder --listen 0.0.0.0:9400 --advertise 10.0.0.1 \\
        --identity founder.key --federation-file federation.id \\
        --eligible <node id> --eligible <node id> \\
        --param rounds=2 --param dataset=digits --param clients=4

Peers bootstrap from the advertised host and the listen port (UDP). While it runs,
the founder also dials the SuperLink the aggregator lease advertises, from its side
of the network, and says in one line on stderr — within
:data:`UNREACHABLE_REPORT_SECONDS` plus one probe — when that address does not accept
connections (a firewall, a wrong ``--advertise`` or ``--superlink-port`` on the
holder): participants could not train there either. A listen or
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
from collections.abc import Callable, Sequence
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
    from flp2p.dht import AddressBook, Genesis, Lease
    from flp2p.dht.codec import JSONValue

EXIT_USAGE = 2
PROBE_SECONDS = 2.0
"""Pause between two looks at the lease's SuperLink, and the timeout of one dial."""
UNREACHABLE_REPORT_SECONDS = 4.0
"""How long one lease's SuperLink may stay out of reach before the founder says so.

The holder publishes its lease only once the SuperLink listens, so a live holder's
answers at once; the margin covers a failover, in which the dead holder's lease
names a closed port until the successor's (about a second later) supersedes it.
"""


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


def unreachable_line(lease: Lease, seconds: float, answer: bool | None) -> str:
    """The founder's one line about a lease whose SuperLink it cannot reach."""
    why = "connection refused" if answer is False else "no answer"
    return (
        f"warning: the aggregator's SuperLink at {lease.superlink_address} (lease "
        f"epoch {lease.epoch}, holder {lease.holder[:12]}…) has not accepted "
        f"connections from this bootstrap peer for {seconds:.0f} s ({why}): "
        "participants cannot train there; its host must accept TCP on that port at "
        "the address it advertises (--advertise, --superlink-port)"
    )


async def watch_superlinks(
    book: AddressBook,
    genesis: Genesis,
    report: Callable[[str], None],
    probe_seconds: float = PROBE_SECONDS,
) -> None:
    """Dial each lease's advertised SuperLink every ``probe_seconds`` and
    ``report`` once per lease (epoch and address) that stays out of reach for
    :data:`UNREACHABLE_REPORT_SECONDS`; runs until cancelled.

    A lease that advertises the federation's last round is left alone: its holder
    closes the SuperLink once every client saw the end, and the lease lapses.
    """
    from flp2p.peer.leases import probe_superlink

    rounds = genesis.parameters.get("rounds")
    last_round = rounds if isinstance(rounds, int) else None
    failing_since: dict[tuple[int, str], float] = {}
    reported: set[tuple[int, str]] = set()
    while True:
        lease = await book.get_lease(genesis.federation_id)
        finished = (
            last_round is not None
            and lease is not None
            and (lease.last_round >= last_round)
        )
        if lease is not None and not finished:
            key = (lease.epoch, lease.superlink_address)
            started = time.monotonic()
            answer = await probe_superlink(lease.superlink_address, probe_seconds)
            if answer is True:
                failing_since.pop(key, None)
            else:
                since = failing_since.setdefault(key, started)
                failing = time.monotonic() - since
                if failing >= UNREACHABLE_REPORT_SECONDS and key not in reported:
                    reported.add(key)
                    report(unreachable_line(lease, failing, answer))
        await asyncio.sleep(probe_seconds)


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
        watch = asyncio.ensure_future(watch_superlinks(book, genesis, say))
        await stop.wait()
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
    finally:
        await book.stop()


def say(line: str) -> None:
    """One line on stderr, at once (the founder's output may be a pipe or file)."""
    print(line, file=sys.stderr, flush=True)


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
