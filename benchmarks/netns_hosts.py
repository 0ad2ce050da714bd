"""Linux network namespaces as stand-in machines for multi-host tests and benchmarks
(root only).

Each "host" is a namespace with loopback and one veth end (``e0``) carrying an
address of :data:`SUBNET`; the other ends hang on a bridge that lives in a namespace
of its own, so nothing is added to the machine's own network: the addresses exist
only inside namespaces made here, and 127.0.0.1 of one host is not another's.
Every namespace is deleted on exit (which also removes its veth and the bridge),
whatever happened in between.

:func:`namespace_federation` places the localhost example's federation
(``examples/localhost/run.py``) on such hosts, one process per host.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.util
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from types import ModuleType
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
        return outcome["value"]

    def asyncio_on(self, name: str) -> Callable[[Coroutine[Any, Any, T]], T]:
        """``asyncio.run`` on host ``name``."""
        return lambda coroutine: self.run_on(name, lambda: asyncio.run(coroutine))


EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "localhost" / "run.py"
EXAMPLE_MODULE = "localhost_example"


def localhost_example() -> ModuleType:
    """``examples/localhost/run.py`` as a module (loaded once per process)."""
    if EXAMPLE_MODULE in sys.modules:
        return sys.modules[EXAMPLE_MODULE]
    spec = importlib.util.spec_from_file_location(EXAMPLE_MODULE, EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def namespace_federation(
    hosts: Hosts,
    work_dir: Path,
    wildcard_listeners: Sequence[str] = ("eligible-a", "eligible-b"),
    **fields: Any,
) -> Any:
    """The example's ``LocalFederation`` with every process on the host of its name.

    ``hosts`` must have a ``founder``, ``eligible-a``, ``eligible-b`` and one
    ``client-<i>`` per client; the observer (lease watching) runs on the founder's
    host. Names in ``wildcard_listeners`` listen on ``0.0.0.0`` and so advertise
    the address that routes to the founder. ``fields`` go to ``LocalFederation``
    (``clients``, ``rounds``, ``record_ttl``, ...). The peers import the checkout
    this module belongs to (``PYTHONPATH``).
    """

    def placement(name: str) -> tuple[Sequence[str], str]:
        host = "founder" if name == "observer" else name
        listen = "0.0.0.0" if name in wildcard_listeners else hosts.address[host]
        return hosts.launcher(host), listen

    return localhost_example().LocalFederation(
        work_dir,
        placement=placement,
        observe=hosts.asyncio_on("founder"),
        bootstrap_port=9400,
        **fields,
    )
