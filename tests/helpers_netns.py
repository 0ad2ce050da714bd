"""Linux network namespaces as stand-in machines for multi-host tests (root only).

Each "host" is a namespace with loopback and one veth end (``e0``) carrying an
address of :data:`SUBNET`; the other ends hang on a bridge that lives in a namespace
of its own, so nothing is added to the machine's own network: the addresses exist
only inside namespaces made here, and 127.0.0.1 of one host is not another's.
Every namespace is deleted on exit (which also removes its veth and the bridge),
whatever happened in between.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import subprocess
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

SUBNET = "10.77.0"
"""First three octets of the hosts' /24 (only on interfaces made here)."""
CLONE_NEWNET = 0x40000000
"""``setns`` namespace type (linux/sched.h)."""
T = TypeVar("T")


class NamespacesUnavailable(RuntimeError):
    """This machine cannot make network namespaces (not root, no ``ip``, ...)."""


def _ip(*args: str) -> None:
    done = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class Hosts:
    """Namespaces ``<prefix>-<name>`` joined by a bridge, one address each.

    Parameters
    ----------
    prefix
        Unique start of every namespace name (e.g. with the test's pid).
    names
        One host per name, addressed ``SUBNET.1``, ``SUBNET.2``, ... in order.
    """

    def __init__(self, prefix: str, names: Sequence[str]) -> None:
        self.prefix = prefix
        self.bridge = f"{prefix}-br"
        self.address = {n: f"{SUBNET}.{i + 1}" for i, n in enumerate(names)}
        self.made: list[str] = []

    def namespace(self, name: str) -> str:
        """Namespace name of host ``name``."""
        return f"{self.prefix}-{name}"

    def _add(self, namespace: str) -> None:
        _ip("netns", "add", namespace)
        self.made.append(namespace)
        _ip("-n", namespace, "link", "set", "lo", "up")

    def __enter__(self) -> Hosts:
        try:
            self._add(self.bridge)
        except (RuntimeError, OSError) as error:
            raise NamespacesUnavailable(str(error)) from None
        try:
            _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.bridge, "link", "set", "br0", "up")
            for index, (name, address) in enumerate(self.address.items()):
                namespace = self.namespace(name)
                self._add(namespace)
                veth = f"v{index}"
                _ip(
                    "-n", self.bridge, "link", "add", veth, "type", "veth",
                    "peer", "name", "e0", "netns", namespace,
                )  # fmt: skip
                _ip("-n", self.bridge, "link", "set", veth, "master", "br0", "up")
                _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "e0")
                _ip("-n", namespace, "link", "set", "e0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Delete every namespace made (their interfaces go with them)."""
        for namespace in reversed(self.made):
            subprocess.run(
                ["ip", "netns", "del", namespace],
                capture_output=True,
                timeout=30,
                check=False,
            )
        self.made.clear()

    def left_over(self) -> list[str]:
        """Namespaces with this prefix that still exist."""
        listed = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=False
        ).stdout.split()
        return [n for n in listed if n.startswith(f"{self.prefix}-")]

    def launcher(self, name: str) -> list[str]:
        """Command prefix that runs a program on host ``name``."""
        return ["ip", "netns", "exec", self.namespace(name)]

    def run_on(self, name: str, work: Callable[[], T]) -> T:
        """Call ``work`` in a thread that lives in host ``name``'s namespace.

        The network namespace is a per-thread attribute on Linux, and sockets keep
        the namespace they were made in, so everything ``work`` opens is on that
        host.
        """
        outcome: dict[str, Any] = {}

        def enter_and_work() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(Path("/run/netns") / self.namespace(name), os.O_RDONLY)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                finally:
                    os.close(fd)
                outcome["value"] = work()
            except BaseException as error:  # re-raised in the caller's thread
                outcome["error"] = error

        thread = threading.Thread(target=enter_and_work, daemon=True)
        thread.start()
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]  # type: ignore[no-any-return]

    def asyncio_on(self, name: str) -> Callable[[Coroutine[Any, Any, T]], T]:
        """``asyncio.run`` on host ``name``."""
        return lambda coroutine: self.run_on(name, lambda: asyncio.run(coroutine))


def hosts_or_skip(prefix: str, names: Sequence[str]) -> Iterator[Hosts]:
    """Body of a pytest fixture: the namespaces ``names``, torn down afterwards (and
    checked gone), or the test skipped with the reason they cannot be made."""
    import pytest

    made = Hosts(f"{prefix}{os.getpid()}", names)
    try:
        made.__enter__()
    except NamespacesUnavailable as reason:
        pytest.skip(f"cannot make network namespaces here: {reason}")
    try:
        yield made
    finally:
        made.close()
        assert made.left_over() == []
