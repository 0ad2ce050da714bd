"""Where a peer binds and what it tells others: ``--listen`` and ``--advertise``.

A peer binds its services to the ``--listen`` host (which may be a wildcard such as
``0.0.0.0``) and puts the ``--advertise`` host into its node record and lease — the
address other hosts dial. Without ``--advertise`` that is the listen host, unless
it is a wildcard: then it is the address of the interface that routes to the first
bootstrap peer, found with a connected UDP socket (the kernel picks the source
address; no datagram is sent).

Everything here uses the standard library only, so that ``python -m flp2p.client``
rejects a bad address before it imports Flower, NumPy or PyTorch.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
from collections.abc import Sequence

WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
"""Hosts that bind every interface, which nobody can dial."""
LOOPBACK_HOST = "127.0.0.1"
"""Where a peer reaches services on its own machine when it listens on a wildcard
(Flower dials the same, ``resolve_bind_address``)."""


class AddressError(ValueError):
    """A ``--listen`` or ``--advertise`` this host cannot serve; the message names
    the flag."""


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT`` for IPv6) as a tuple (``argparse`` type)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not (sep and host and port.isdigit() and 0 <= int(port) < 65536):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def parse_advertise(text: str) -> tuple[str, int | None]:
    """``HOST``, ``HOST:PORT``, ``[V6]`` or ``[V6]:PORT`` (type of ``--advertise``)."""
    if text.endswith("]") or (text.count(":") != 1 and not text.startswith("[")):
        host = text.strip("[]")  # no port: a name, IPv4, bare or bracketed IPv6
        if not host:
            raise argparse.ArgumentTypeError(f"expected HOST[:PORT], got {text!r}")
        return host, None
    return parse_address(text)


def split_host_port(address: str) -> tuple[str, int]:
    """Inverse of :func:`join_host_port` (``[v6]:port`` loses its brackets)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def join_host_port(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 literal."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_wildcard(host: str) -> bool:
    """Whether binding ``host`` means every interface."""
    return host in WILDCARD_HOSTS


def local_host(listen_host: str) -> str:
    """Where this peer dials its own services bound to ``listen_host``."""
    return LOOPBACK_HOST if is_wildcard(listen_host) else listen_host


def _family(host: str) -> socket.AddressFamily:
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        return socket.AF_INET
    return socket.AF_INET6 if version == 6 else socket.AF_INET


def route_source(peer: tuple[str, int]) -> str:
    """The local address of the interface that routes to ``peer``.

    ``connect`` on a UDP socket only asks the kernel for a route and a source
    address; nothing goes over the wire.

    Raises
    ------
    AddressError
        If this host has no route to ``peer``.
    """
    host, port = peer
    try:
        with socket.socket(_family(host), socket.SOCK_DGRAM) as probe:
            probe.connect((host, port))
            return str(probe.getsockname()[0])
    except OSError as error:
        raise AddressError(
            f"--advertise: no route to the bootstrap peer {join_host_port(host, port)}"
            f" to pick an address from ({error.strerror or error}); give --advertise"
        ) from None


def check_listen(
    host: str, port: int, flag: str = "--listen", kind: int = socket.SOCK_DGRAM
) -> None:
    """Raise :class:`AddressError` unless this host can bind ``host:port``: UDP by
    default (the DHT's socket; the TCP services bind the same host), TCP with
    ``kind=socket.SOCK_STREAM`` (a fixed ``--superlink-port`` or ``--sync-port``)."""
    try:
        with socket.socket(_family(host), kind) as probe:
            probe.bind((host, port))
    except OSError as error:
        raise AddressError(
            f"{flag} {join_host_port(host, port)}: cannot bind here "
            f"({error.strerror or error})"
        ) from None


def check_advertise(host: str) -> None:
    """Raise :class:`AddressError` unless ``host`` names an address of this host.

    A name is resolved first; an address belongs to this host when a socket can
    bind it.
    """
    if is_wildcard(host):
        raise AddressError(f"--advertise {host}: a wildcard is no address to dial")
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        raise AddressError(f"--advertise {host}: cannot resolve this name") from None
    for family, _, _, _, address in infos:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.bind((address[0], 0))
                return
        except OSError:
            continue
    raise AddressError(f"--advertise {host}: not an address of this host")


def resolve_advertise(
    listen_host: str,
    advertise_host: str | None,
    bootstrap: Sequence[tuple[str, int]],
) -> str:
    """The host to advertise: ``advertise_host`` checked, else derived (module
    docstring). Raises :class:`AddressError`."""
    if advertise_host is not None:
        check_advertise(advertise_host)
        return advertise_host
    if not is_wildcard(listen_host):
        return listen_host
    if not bootstrap:
        raise AddressError(f"--listen {listen_host}: give --advertise as well")
    return route_source(bootstrap[0])
