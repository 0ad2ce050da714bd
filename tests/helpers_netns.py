"""Namespace hosts for tests: :mod:`benchmarks.netns_hosts` behind a fixture body."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from benchmarks.netns_hosts import Hosts, NamespacesUnavailable


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
