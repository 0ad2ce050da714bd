"""``python -m flp2p.client``: take part in an flp2p federation from one machine.

::

    python -m flp2p.client --bootstrap 10.0.0.1:9400 --federation <id> \\
        --listen 0.0.0.0:9401 [--advertise 10.0.0.5] \\
        --partition-id 0 --num-partitions 4 [--aggregator-eligible] [--insecure]

The peer joins the DHT through the bootstrap peer, publishes its node record, finds
the federation's genesis and the aggregator lease (both checked by the address book:
signatures, signer entitled by the genesis, expiry), and runs a Flower SuperNode
against the lease's SuperLink, trusting only the certificate the lease pins. It
follows the lease: when the aggregator changes, the SuperNode is restarted against
the new one. With ``--aggregator-eligible`` (and its node id in the genesis) the peer
also keeps copies of the global model and takes the aggregator role
(:mod:`flp2p.peer.aggregator`) when the deterministic election names it.

Every service binds the ``--listen`` host; node records and the lease carry the
``--advertise`` host (:mod:`flp2p.peer.addresses`). An aggregator-eligible peer must
be reachable there on ``--superlink-port`` and ``--sync-port`` (TCP) and the listen
port (UDP). A plain participant only dials out: it joins the DHT as a client-only
node (:class:`flp2p.dht.AddressBook`, ``client_only``; never a contact in anyone's
routing table) and its SuperNode dials the SuperLink, so it works behind NAT.

Bad options — inconsistent flags, an address or port this host cannot bind or
advertise, an ``--identity`` that is no usable key file (a folder, a key others can
read, a file that is no flp2p identity) — end with one line on stderr and exit code
2, checked before the peer runtime (and with it Flower and PyTorch) is imported.
Failures a participant can act on end with one line on stderr and exit code 1: no
bootstrap peer reachable, unknown federation, this identity already live at another
address, no valid lease within the timeout, a refused lease (bad signature, signer
not eligible), a certificate that does not match the lease.

Every peer prints its own DHT address on stderr when it starts: once the founder is
gone, any live peer's address serves as ``--bootstrap`` (repeat the flag to give
several; the DHT asks them all and needs one to answer).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from flp2p.peer.addresses import (
    AddressError,
    check_listen,
    parse_address,
    parse_advertise,
    resolve_advertise,
)
from flp2p.peer.peer_options import (
    EXIT_FAILURE,
    EXIT_USAGE,
    PeerError,
    PeerOptions,
    UsageError,
)


def _port(text: str) -> int:
    if not text.isdigit() or int(text) >= 65536:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}")
    return int(text)


EXAMPLE = """\
example (the founder printed the federation id and its --bootstrap address):
  {prog} --bootstrap 10.77.0.1:9400 --federation $(cat federation.id) \\
      --identity me.key --work-dir me --listen 0.0.0.0:9404 \\
      --partition-id 0 --num-partitions 3
"""


def build_parser(prog: str = "python -m flp2p.client") -> argparse.ArgumentParser:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Join an flp2p federation as a client and/or standby aggregator.",
        epilog=EXAMPLE.format(prog=prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--bootstrap", type=parse_address, action="append", required=True,
        metavar="HOST:PORT", help="DHT address of a known peer (repeat)",
    )  # fmt: skip
    parser.add_argument("--federation", required=True, help="federation id (hex)")
    parser.add_argument("--identity", type=Path, default=Path("flp2p-identity.key"))
    parser.add_argument("--work-dir", type=Path, default=Path("flp2p-peer"))
    parser.add_argument(
        "--listen", type=parse_address, default=("127.0.0.1", 0),
        metavar="HOST:PORT",
        help="bind host of every service (0.0.0.0: all) and DHT UDP port (0: any)",
    )  # fmt: skip
    parser.add_argument(
        "--advertise", type=parse_advertise, metavar="HOST[:PORT]",
        help="address others reach this peer at (default: the listen host, or for "
        "a wildcard the interface that routes to the bootstrap peer)",
    )  # fmt: skip
    parser.add_argument(
        "--superlink-port", type=_port, default=0, metavar="PORT",
        help="TCP port of the SuperLink while aggregating (default: any free one)",
    )  # fmt: skip
    parser.add_argument(
        "--sync-port", type=_port, default=0, metavar="PORT",
        help="TCP port receiving model copies (eligible peers; default: any)",
    )  # fmt: skip
    parser.add_argument("--partition-id", type=int, help="train on this partition")
    parser.add_argument("--num-partitions", type=int, help="partitions in all")
    parser.add_argument("--data-dir", help="folder holding this peer's data set")
    parser.add_argument(
        "--aggregator-eligible", action="store_true",
        help="keep model copies and take the aggregator role when elected",
    )  # fmt: skip
    parser.add_argument(
        "--insecure", action="store_true",
        help="accept an aggregator without TLS / run the aggregator without TLS",
    )  # fmt: skip
    parser.add_argument("--lease-timeout", type=float, default=60.0, metavar="S")
    parser.add_argument("--record-ttl", type=float, default=9.0, metavar="S")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def options_from_args(args: argparse.Namespace) -> PeerOptions:
    """Validate parsed arguments against each other and this host's addresses.

    Raises
    ------
    UsageError
        With one line naming the flag at fault.
    """
    if (args.partition_id is None) != (args.num_partitions is None):
        raise UsageError("--partition-id and --num-partitions go together")
    if (
        args.partition_id is not None
        and not 0 <= args.partition_id < args.num_partitions
    ):
        raise UsageError(
            f"--partition-id must lie in [0, {args.num_partitions}), "
            f"got {args.partition_id}"
        )
    if args.partition_id is None and not args.aggregator_eligible:
        raise UsageError("nothing to do: give --partition-id or --aggregator-eligible")
    if args.lease_timeout <= 0 or args.record_ttl <= 0:
        raise UsageError("--lease-timeout and --record-ttl must be positive")
    listen_host, listen_port = args.listen
    advertise_host, advertise_port = args.advertise or (None, None)
    try:
        check_listen(listen_host, listen_port)
        if args.aggregator_eligible:
            for flag, port in (
                ("--superlink-port", args.superlink_port),
                ("--sync-port", args.sync_port),
            ):
                if port:
                    check_listen(listen_host, port, flag, socket.SOCK_STREAM)
        advertise = resolve_advertise(listen_host, advertise_host, args.bootstrap)
    except AddressError as error:
        raise UsageError(str(error)) from None
    check_identity_file(args.identity)
    return PeerOptions(
        bootstrap=tuple(args.bootstrap),
        federation=args.federation.lower(),
        # Absolute: the SuperLink and SuperNode run in folders of their own.
        identity=args.identity.resolve(),
        work_dir=args.work_dir.resolve(),
        listen=args.listen,
        advertise=advertise,
        advertise_port=advertise_port,
        superlink_port=args.superlink_port,
        sync_port=args.sync_port,
        partition_id=args.partition_id,
        num_partitions=args.num_partitions,
        data_dir=args.data_dir,
        aggregator_eligible=args.aggregator_eligible,
        insecure=args.insecure,
        lease_timeout=args.lease_timeout,
        record_ttl=args.record_ttl,
        status_line=not args.verbose,
    )


def check_identity_file(path: Path) -> None:
    """Load the ``--identity`` key now if there is one, so that a folder, an exposed
    key or a file that is no key is named before the heavy imports.

    Raises
    ------
    UsageError
        With the problem and its fix (:class:`flp2p.identity.IdentityFileError`).
    """
    # cryptography only (a tenth of a second), not Flower or PyTorch.
    from flp2p.identity import Identity, IdentityFileError, check_key_file

    try:
        check_key_file(path)
        if path.exists():
            Identity.load(path)
    except IdentityFileError as error:
        raise UsageError(f"--identity: {error}") from None
    except OSError as error:
        raise UsageError(f"--identity {path}: {error.strerror or error}") from None


def configure_logging(verbose: bool) -> None:
    """Progress lines of the peer with ``--verbose``; the DHT's chatter never.

    Importing Flower installs a root handler, so levels are set per logger rather
    than through :func:`logging.basicConfig` (which would then do nothing).
    """
    logging.basicConfig(format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("flp2p").setLevel(logging.INFO if verbose else logging.WARNING)
    # rpcudp logs every late UDP answer as an error; the DHT layer handles them.
    for noisy in ("kademlia", "rpcudp"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)


def main(
    argv: Sequence[str] | None = None, prog: str = "python -m flp2p.client"
) -> int:
    """Entry point of ``python -m flp2p.client`` and ``flp2p join`` (``prog``);
    returns the exit code."""
    args = build_parser(prog).parse_args(argv)
    name = prog.removeprefix("python -m ").removesuffix(" ")
    try:
        options = options_from_args(args)
    except UsageError as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(args.verbose)
    # Only now: the runtime imports Flower and PyTorch (seconds on a small machine).
    from flp2p.peer.runtime import run_peer

    try:
        print(asyncio.run(run_peer(options)), flush=True)
    except PeerError as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 130
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
