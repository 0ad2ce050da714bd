"""One builder for the config groups whose file names a class with ``_target_``.

``conf/<group>/<name>.yaml`` gives ``name``, ``_target_`` (a dotted class path) and
the class's arguments; data sets, attacks, privacy settings and update codecs are
all built this way. Every group wants the same checks with the same one-line
messages — the class imports, it is the group's kind of object, its arguments fit —
so they live here once. Import by :mod:`importlib` rather than Hydra's
``get_class``: the strategies package stays free of Hydra.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

Built = TypeVar("Built")


def instantiate_config(
    spec: Mapping[str, Any],
    base: type[Built],
    *,
    group: str,
    default: Callable[[], Built] | None = None,
    reserved: Collection[str] = ("name",),
) -> Built:
    """``base`` subclass named by ``spec["_target_"]``, built from the other keys.

    Parameters
    ----------
    spec : Mapping
        One config group's entry (``name``, ``_target_``, arguments).
    base : type
        What the class must be (``issubclass``): a wrong path is refused here,
        not when the object is first used rounds later.
    group : str
        The config group (``dataset``, ``attack`` …), for messages and the file
        they point at (``conf/<group>/<name>.yaml``).
    default : callable, optional
        Built when the spec names no class, no arguments and ``name`` is
        ``"none"`` (the group's "off" entry); without it a missing ``_target_``
        is an error.
    reserved : collection of str
        Keys that are the config's own, not the class's arguments.

    Raises
    ------
    ValueError, TypeError
        No ``_target_``, a path that does not import, a class that is not a
        ``base``, or the class's own complaint about an argument; every message
        starts with the group and the config's name.
    """
    name = str(spec.get("name", "none"))
    where = f"{group} {name!r}"
    params = {k: v for k, v in spec.items() if k not in reserved}
    target = params.pop("_target_", None)
    if target is None:
        if default is not None and name == "none" and not params:
            return default()
        raise ValueError(
            f"{where} has no _target_: name its class in conf/{group}/{name}.yaml"
        )
    module, _, attribute = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"{where}: cannot import {target!r}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(
            f"{where}: {target!r} is not a {base.__module__}.{base.__qualname__} class"
        )
    try:
        built = cls(**params)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{where}: {err}") from None
    assert isinstance(built, base)
    return built
