"""Canonical JSON: the one byte encoding that block hashes and signatures cover.

Keys sorted, no insignificant whitespace, UTF-8, in the spirit of RFC 8785 (JSON
Canonicalization Scheme). Floats are written with Python's shortest round-trip
``repr``, which SQLite's 8-byte REAL stores exactly, so a block rebuilt from its rows
encodes to the same bytes. JSON has no NaN or infinity; detector scores can be
non-finite (a poisoned update), so such values travel as the strings below.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

JSONValue = None | bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"]
"""A value that canonical JSON can encode."""

NON_FINITE_NAMES = ("nan", "inf", "-inf")
"""String spellings of the floats JSON cannot carry."""


_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
# One shared encoder: ``json.dumps`` builds a new one per call whenever an option
# differs from the defaults, which dominated encoding many small score maps.


def canonical_json(value: JSONValue) -> bytes:
    """Encode ``value`` as canonical JSON bytes.

    Raises
    ------
    ValueError
        If ``value`` holds a non-finite float (encode it with :func:`json_float`).
    """
    return _ENCODER.encode(value).encode("utf-8")


def json_float(value: float) -> float | str:
    """``value`` as a float, or its string spelling when it is not finite."""
    number = float(value)
    if math.isfinite(number):
        return number
    if math.isnan(number):
        return "nan"
    return "inf" if number > 0 else "-inf"


def json_float_map(values: Mapping[str, float]) -> dict[str, float | str]:
    """Map of names to :func:`json_float` values (e.g. detector scores)."""
    return {str(name): json_float(number) for name, number in values.items()}
