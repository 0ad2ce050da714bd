"""Reply validation: the first step of every round, and the one that never raises.

Flower's ``FedAvg`` checks the replies of a round *together* and raises
``InconsistentMessageReplies`` when one of them is odd, which aborts the whole run
(``flwr.serverapp.strategy.strategy_utils.validate_message_reply_consistency``). In a
federation of peers that do not trust each other a single bad reply must cost its
sender that round, not everybody the run. :func:`validate_reply` therefore judges one
reply at a time against the global model the server sent, and turns every problem
into a :class:`RejectedReply` with a short human reason.

What validation checks is *form*: records present, example count, array names,
shapes, dtypes, finite values and (in peer mode) the signature. A compressed reply
(:mod:`strategies.update_codecs`) is decoded first, to the model it stands for, and
every check, the digest and the signature are about that decoded update. Whether a
well-formed update is *plausible* (norms, directions) is for the detectors and
robust rules.

Nothing here mutates the reply: arrays are read-only views on the reply's own bytes
(no copy of the payload, see :func:`decode_array`).
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import SType

from strategies.records import (
    IDENTITY_ID,
    IDENTITY_KEY,
    IDENTITY_PUBLIC_KEY,
    IDENTITY_SIGNATURE,
    NUM_EXAMPLES_KEY,
    ReplyAuthenticator,
    update_sha256,
)
from strategies.update_codecs import decoded_update, is_payload, max_payload_bytes

RecordT = TypeVar("RecordT", ArrayRecord, MetricRecord)

NUMERIC_DTYPE_KINDS = frozenset("biuf")
"""NumPy dtype kinds a model array may have when no reference model is known."""

_NPY_HEADER_ALLOWANCE = 4096
"""Bytes a serialised ``.npy`` payload may exceed the raw array size by (header)."""

_DECODE_ATTEMPTS = 3
"""Tries of a decode that fails with a spurious ``SystemError`` (see
:func:`decode_array`)."""


@dataclass(frozen=True)
class ValidReply:
    """A reply that passed validation, in plain numpy.

    Attributes
    ----------
    identity : str
        Persistent identity the reply names (``"node-<node_id>"`` when it names none).
    node_id : int
        Flower's per-registration id of the sending node.
    num_examples : int
        Positive number of local training examples (the FedAvg weight).
    arrays : Mapping[str, np.ndarray]
        The model the client sent, name → read-only view on the reply's bytes, in
        the reference's key order (or the reply's order when there is no
        reference); for a compressed reply, the decoded model (new arrays).
    update_digest : str
        :func:`strategies.records.update_sha256` of ``arrays``.
    metrics : Mapping[str, float]
        Finite scalar metrics the client reported, without the example count.
    """

    identity: str
    node_id: int
    num_examples: int
    arrays: Mapping[str, np.ndarray]
    update_digest: str
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RejectedReply:
    """A reply that failed validation.

    Attributes
    ----------
    identity : str
        Identity the reply names, best effort (``"node-<node_id>"`` otherwise).
    node_id : int
        Flower's per-registration id of the sending node (``-1`` if unreadable).
    reason : str
        Short human reason, e.g. ``"array 'fc.weight' has shape (3,), expected (4,)"``.
    update_digest : str
        Digest of the arrays when they could be read (e.g. a bad signature), else
        ``""``.
    """

    identity: str
    node_id: int
    reason: str
    update_digest: str = ""


class _Rejection(Exception):
    """Internal: carries a rejection reason out of nested checks."""


def validate_reply(
    message: Message,
    reference: Mapping[str, np.ndarray] | None,
    server_round: int,
    authenticator: ReplyAuthenticator | None = None,
    *,
    weighted_by_key: str = NUM_EXAMPLES_KEY,
) -> ValidReply | RejectedReply:
    """Judge one training reply; never raises.

    Parameters
    ----------
    message : Message
        A reply to a training instruction.
    reference : Mapping[str, np.ndarray] | None
        The global model sent in the instruction. When given, the reply must carry
        exactly these array names with the same shapes and dtypes. When ``None``,
        any finite numeric arrays are accepted.
    server_round : int
        Current round, passed to the authenticator (signatures bind the round).
    authenticator : ReplyAuthenticator | None
        Peer mode: checks the identity record's signature over the update digest.
        ``None`` (simulation) skips authentication.
    weighted_by_key : str
        Metric holding the example count (Flower's ``weighted_by_key``).

    Returns
    -------
    ValidReply | RejectedReply
        The reply in numpy form, or why it was rejected.
    """
    node_id = _node_id(message)
    identity = f"node-{node_id}"
    digest = ""
    try:
        content = _reply_content(message)
        identity = _identity(content.config_records.get(IDENTITY_KEY), node_id)
        array_record = _single_record(content.array_records, "ArrayRecord")
        metric_record = _single_record(content.metric_records, "MetricRecord")
        num_examples = _num_examples(metric_record, weighted_by_key)
        arrays = _read_update(array_record, reference)
        digest = update_sha256(arrays, _reject_non_finite)
        if authenticator is not None:
            _authenticate(
                authenticator,
                identity,
                content.config_records.get(IDENTITY_KEY),
                server_round,
                digest,
            )
        metrics = numeric_metrics(metric_record, exclude=weighted_by_key)
    except _Rejection as rejection:
        return RejectedReply(identity, node_id, str(rejection), digest)
    except Exception as error:  # a reply must never abort the round
        reason = f"unreadable reply ({type(error).__name__}: {error})"
        return RejectedReply(identity, node_id, reason[:200], digest)
    return ValidReply(identity, node_id, num_examples, arrays, digest, metrics)


@dataclass(frozen=True)
class ValidEvaluation:
    """An evaluation reply that passed validation.

    Attributes
    ----------
    identity : str
        Identity the reply names (``"node-<node_id>"`` when it names none).
    node_id : int
        Flower's per-registration id of the sending node.
    num_examples : int
        Positive number of local evaluation examples.
    metrics : Mapping[str, float]
        Finite scalar metrics, without the example count.
    """

    identity: str
    node_id: int
    num_examples: int
    metrics: Mapping[str, float]


def validate_evaluate_reply(
    message: Message, *, weighted_by_key: str = NUM_EXAMPLES_KEY
) -> ValidEvaluation | RejectedReply:
    """Judge one evaluation reply (exactly one MetricRecord); never raises.

    Parameters
    ----------
    message : Message
        A reply to an evaluation instruction.
    weighted_by_key : str
        Metric holding the example count.

    Returns
    -------
    ValidEvaluation | RejectedReply
        The reply's metrics, or why it was dropped.
    """
    node_id = _node_id(message)
    identity = f"node-{node_id}"
    try:
        content = _reply_content(message)
        identity = _identity(content.config_records.get(IDENTITY_KEY), node_id)
        metric_record = _single_record(content.metric_records, "MetricRecord")
        num_examples = _num_examples(metric_record, weighted_by_key)
        metrics = numeric_metrics(metric_record, exclude=weighted_by_key)
    except _Rejection as rejection:
        return RejectedReply(identity, node_id, str(rejection))
    except Exception as error:  # a reply must never abort the round
        reason = f"unreadable reply ({type(error).__name__}: {error})"
        return RejectedReply(identity, node_id, reason[:200])
    return ValidEvaluation(identity, node_id, num_examples, metrics)


def numeric_metrics(record: MetricRecord, exclude: str = "") -> dict[str, float]:
    """Finite scalar entries of a metric record as floats.

    List-valued and non-finite entries are dropped: a single NaN loss would
    otherwise poison the round's averaged metrics.

    Parameters
    ----------
    record : MetricRecord
        Metrics reported by a client.
    exclude : str
        Key left out (the example count, which is a weight rather than a metric).

    Returns
    -------
    dict[str, float]
        Metric name → value.
    """
    metrics: dict[str, float] = {}
    for key, value in record.items():
        if key == exclude or isinstance(value, (list, bool)):
            continue
        number = float(value)
        if math.isfinite(number):
            metrics[key] = number
    return metrics


def _reply_content(message: Message) -> RecordDict:
    """The reply's content; a reply that carries an error or nothing is rejected."""
    if message.has_error():
        raise _Rejection(f"error reply: {_error_reason(message)}")
    if not message.has_content():
        raise _Rejection("reply has no content")
    return message.content


def _node_id(message: Message) -> int:
    try:
        return int(message.metadata.src_node_id)
    except Exception:  # metadata itself may be broken
        return -1


def _error_reason(message: Message) -> str:
    try:
        return str(message.error.reason)[:120] or "no reason given"
    except Exception:
        return "unreadable error"


def _identity(record: ConfigRecord | None, node_id: int) -> str:
    """Identity named by the reply, or the node-id fallback when it names none."""
    if record is None or IDENTITY_ID not in record:
        return f"node-{node_id}"
    value = record[IDENTITY_ID]
    if not isinstance(value, str) or not value:
        raise _Rejection("identity record field 'id' is not a non-empty string")
    return value


def _single_record(records: Mapping[str, RecordT], kind: str) -> RecordT:
    """The only record of one kind; a reply with none or several is ambiguous."""
    if len(records) != 1:
        raise _Rejection(f"expected exactly one {kind}, found {len(records)}")
    return next(iter(records.values()))


def _num_examples(record: MetricRecord, key: str) -> int:
    if key not in record:
        raise _Rejection(f"missing metric '{key}'")
    value = record[key]
    if isinstance(value, list):
        raise _Rejection(f"metric '{key}' is a list, expected a number")
    number = float(value)
    if not math.isfinite(number):
        raise _Rejection(f"metric '{key}' is not finite ({value})")
    if number != math.floor(number):
        raise _Rejection(f"metric '{key}' is not an integer ({value})")
    if number <= 0:
        raise _Rejection(f"metric '{key}' must be positive, got {value}")
    return int(value)


def _read_update(
    record: ArrayRecord, reference: Mapping[str, np.ndarray] | None
) -> dict[str, np.ndarray]:
    """The model a reply carries: its arrays, or its compressed payload decoded."""
    names = list(record.keys())
    if not is_payload(names) or (reference is not None and names == list(reference)):
        return _read_arrays(record, reference)
    if reference is None:
        raise _Rejection("a compressed update needs the global model to decode")
    limit = max_payload_bytes(reference) + _NPY_HEADER_ALLOWANCE
    payload: dict[str, np.ndarray] = {}
    for name in names:
        array = record[name]
        if len(array.data) > limit:
            raise _Rejection(f"array '{name}' payload is larger than the model allows")
        payload[name] = _read_array(name, array, None)
        _reject_non_finite(name, payload[name])
    try:
        model = decoded_update(payload, reference)
    except ValueError as error:
        raise _Rejection(f"compressed update cannot be decoded: {error}") from None
    for name, values in model.items():
        expected = np.asarray(reference[name])
        _check_form(name, str(values.dtype), values.shape, expected)
        if values.dtype.kind == "f" and not all_finite(values):
            raise _Rejection(f"decoded array '{name}' contains NaN or Inf")
        values.setflags(write=False)
    return model


def _read_arrays(
    record: ArrayRecord, reference: Mapping[str, np.ndarray] | None
) -> dict[str, np.ndarray]:
    """Read the model as read-only views, checked against ``reference``."""
    if reference is not None:
        _check_names(list(record.keys()), list(reference.keys()))
        names = list(reference.keys())
    else:
        names = list(record.keys())
        if not names:
            raise _Rejection("ArrayRecord is empty")
    arrays: dict[str, np.ndarray] = {}
    for name in names:
        expected = None if reference is None else np.asarray(reference[name])
        arrays[name] = _read_array(name, record[name], expected)
    return arrays


def _check_names(received: list[str], expected: list[str]) -> None:
    missing = [name for name in expected if name not in received]
    extra = [name for name in received if name not in expected]
    if missing:
        raise _Rejection(f"missing arrays {_short(missing)}")
    if extra:
        raise _Rejection(f"unexpected arrays {_short(extra)}")


def _read_array(name: str, array: Array, expected: np.ndarray | None) -> np.ndarray:
    # The declared metadata is checked before deserialising, so an oversized
    # payload is refused without being decoded.
    if expected is not None:
        _check_form(name, str(array.dtype), tuple(array.shape), expected)
        if len(array.data) > expected.nbytes + _NPY_HEADER_ALLOWANCE:
            raise _Rejection(f"array '{name}' payload is larger than its shape allows")
    try:
        values = decode_array(array)
    except Exception as error:
        detail = f"{type(error).__name__}: {error}"[:120]
        raise _Rejection(f"array '{name}' cannot be decoded ({detail})") from error
    if expected is not None:
        _check_form(name, str(values.dtype), values.shape, expected)
    elif values.dtype.kind not in NUMERIC_DTYPE_KINDS:
        raise _Rejection(f"array '{name}' has non-numeric dtype {values.dtype}")
    # Finiteness is checked while the update is hashed (_reject_non_finite), chunk
    # by chunk, in the same pass over the reply's bytes.
    values.setflags(write=False)
    return values


def _reject_non_finite(name: str, chunk: np.ndarray) -> None:
    """``update_sha256``'s inspection in :func:`validate_reply`: NaN or infinity in
    a floating-point array rejects the reply."""
    if chunk.dtype.kind == "f" and not all_finite(chunk):
        raise _Rejection(f"array '{name}' contains NaN or Inf")


def decode_array(array: Array) -> np.ndarray:
    """The array ``array`` carries, as a read-only view on its own bytes.

    ``Array.numpy()`` (``np.load``) copies the payload; a round of 100 ResNet-50
    replies would then hold its 10 GB twice. A ``numpy.ndarray`` payload is a
    ``.npy`` file, so the values are the bytes after its header:
    :func:`numpy.frombuffer` reads them in place (``bytes`` are immutable, so the
    view cannot change under the strategy). Anything else (another serialisation,
    a buffer that is not ``bytes``) goes through ``Array.numpy()``. The values are
    those ``Array.numpy()`` returns, bit for bit, in the same memory order.
    """
    data = array.data
    if array.stype != SType.NUMPY or not isinstance(data, bytes):
        return _load_with_retries(array)
    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    width = _LENGTH_FIELD_BYTES.get(version)
    if width is None:
        raise ValueError(f"unsupported .npy format version {version}")
    start = stream.tell()
    offset = start + width + int.from_bytes(data[start : start + width], "little")
    # Every reply of a round carries the same few headers (one per layer): parsed
    # once, not once per reply (``ast.literal_eval`` cost ~0.6 ms per reply and
    # layer, a tenth of validation's time besides hashing at 50 × 1M).
    shape, fortran_order, dtype = _parsed_header(data[:offset], version)
    if dtype.hasobject:
        raise ValueError("object arrays are not accepted (they need pickle)")
    count = math.prod(shape)
    if len(data) - offset < count * dtype.itemsize:
        raise ValueError(
            f"payload holds {len(data) - offset} bytes after the header, the array "
            f"needs {count * dtype.itemsize}"
        )
    values = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return values.reshape(shape, order="F" if fortran_order else "C")


_LENGTH_FIELD_BYTES = {(1, 0): 2, (2, 0): 4, (3, 0): 4}
"""Width of the little-endian header length after a ``.npy`` file's magic, by
format version (``numpy.lib.format``)."""

_MAGIC_BYTES = 8
"""``\\x93NUMPY`` and the two version bytes, before the header length."""


@functools.lru_cache(maxsize=256)
def _parsed_header(
    header: bytes, version: tuple[int, int]
) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """:func:`_read_header` of a ``.npy`` header (magic, length and dictionary),
    remembered: the result depends on those bytes only. A header numpy refuses
    raises, and is not remembered; a valid one is at most numpy's
    ``max_header_size`` (10,000 bytes), so the cache stays small."""
    stream = io.BytesIO(header)
    stream.seek(_MAGIC_BYTES)
    return _read_header(stream, version)


def _read_header(
    stream: io.BytesIO, version: tuple[int, int]
) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """The ``.npy`` header, retried when CPython's AST recursion check misfires.

    ``numpy.lib.format`` parses the header with ``ast.literal_eval``. On CPython
    3.11 the AST constructor's recursion counter is shared by threads, so two replies
    decoded at once (:class:`~strategies.base.ScreenedFedAvg` validates on several
    threads) now and then fail with a spurious ``SystemError: AST constructor
    recursion depth mismatch`` (python/cpython#106905): a valid reply was rejected
    as undecodable, about once in ten thousand fuzzed rounds
    (``tests/test_fuzz_replies.py``). The error says nothing about the payload, so
    the parse is simply tried again; any other error is the reply's.
    """
    start = stream.tell()
    for _ in range(_DECODE_ATTEMPTS - 1):
        try:
            return _parse_header(stream, version)
        except SystemError:
            stream.seek(start)
    return _parse_header(stream, version)


def _parse_header(
    stream: io.BytesIO, version: tuple[int, int]
) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    if version in ((2, 0), (3, 0)):
        return np.lib.format.read_array_header_2_0(stream)
    raise ValueError(f"unsupported .npy format version {version}")


def _load_with_retries(array: Array) -> np.ndarray:
    """``array.numpy()``, retried on the spurious ``SystemError`` of
    :func:`_read_header`."""
    for _ in range(_DECODE_ATTEMPTS - 1):
        try:
            return array.numpy()
        except SystemError:
            continue
    return array.numpy()


def all_finite(values: np.ndarray) -> bool:
    """Whether a floating-point array holds no NaN or infinity, in one pass.

    A sum is NaN or infinite when some value is (NaN propagates, an infinity stays
    or meets the opposite one in a NaN), so a finite sum proves every value finite,
    without the ``d``-byte mask ``np.isfinite`` allocates. float32 arrays are summed
    in their own type (three times faster than a float64 sum, whose cast dominated
    validation): a sum that is not finite may then be an overflow of finite values,
    so as for float64 the values are checked one block at a time. float16 is summed
    in float64, where its values (at most ``6.5·10⁴``) cannot overflow.
    """
    kind = np.float64 if values.dtype.itemsize < 4 else values.dtype
    with np.errstate(over="ignore", invalid="ignore"):  # the answer, not an error
        total = float(np.add.reduce(values, axis=None, dtype=kind))
    if math.isfinite(total):
        return True
    if values.dtype.itemsize < 4:
        return False
    flat = values.ravel(order="K")
    step = 1 << 20
    return all(
        bool(np.isfinite(flat[start : start + step]).all())
        for start in range(0, flat.shape[0], step)
    )


def _check_form(
    name: str, dtype: str, shape: tuple[int, ...], expected: np.ndarray
) -> None:
    if tuple(shape) != expected.shape:
        raise _Rejection(
            f"array '{name}' has shape {tuple(shape)}, expected {expected.shape}"
        )
    if dtype != str(expected.dtype):
        raise _Rejection(f"array '{name}' has dtype {dtype}, expected {expected.dtype}")


def _authenticate(
    authenticator: ReplyAuthenticator,
    identity: str,
    record: ConfigRecord | None,
    server_round: int,
    digest: str,
) -> None:
    public_key = _bytes_field(record, IDENTITY_PUBLIC_KEY)
    signature = _bytes_field(record, IDENTITY_SIGNATURE)
    try:
        verdict = authenticator(identity, public_key, signature, server_round, digest)
    except Exception as error:  # a broken key must not abort the round
        raise _Rejection(f"authentication failed ({type(error).__name__})") from error
    if verdict is not None:
        raise _Rejection(f"authentication failed: {verdict}")


def _bytes_field(record: ConfigRecord | None, key: str) -> bytes | None:
    if record is None:
        return None
    value = record.get(key)
    return value if isinstance(value, bytes) else None


def _short(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(repr(name) for name in names[:limit])
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return f"[{shown}]{more}"
