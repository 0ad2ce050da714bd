"""Build Flower reply messages without a network, for tests.

A reply's metadata (sender node id, round group) is derived from the instruction it
answers (``Message(content, reply_to=instruction)``), exactly as a ClientApp does;
the instruction itself is a plain ``Message(content, dst_node_id, message_type)``.
Needs the task identity that ``tests/conftest.py`` sets.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from flp2p.app import arrays_to_record
from strategies.records import (
    ARRAYS_KEY,
    IDENTITY_ID,
    IDENTITY_KEY,
    IDENTITY_PUBLIC_KEY,
    IDENTITY_SIGNATURE,
    METRICS_KEY,
    NUM_EXAMPLES_KEY,
)


def make_instruction(node_id: int, message_type: str = MessageType.TRAIN) -> Message:
    """An (empty) instruction addressed to ``node_id``."""
    return Message(RecordDict(), dst_node_id=node_id, message_type=message_type)


def make_reply(content: RecordDict, node_id: int) -> Message:
    """A reply carrying ``content`` that appears to come from ``node_id``."""
    return Message(content, reply_to=make_instruction(node_id))


array_record = arrays_to_record
"""An ArrayRecord holding copies of named arrays (order preserved): the library's
:func:`flp2p.app.arrays_to_record`, under the name these tests use."""


def make_train_reply(
    arrays: Mapping[str, np.ndarray],
    num_examples: int | float,
    node_id: int,
    identity: str | None = None,
    metrics: Mapping[str, int | float] | None = None,
    *,
    public_key: bytes | None = None,
    signature: bytes | None = None,
) -> Message:
    """A well-formed training reply (unless the arguments make it otherwise).

    Parameters
    ----------
    arrays : Mapping[str, np.ndarray]
        The model the client "trained".
    num_examples : int | float
        Value of the ``num-examples`` metric (pass 0, -1, 2.5 to make it bad).
    node_id : int
        Flower node id of the sender.
    identity : str | None
        Persistent identity; ``None`` sends no identity record.
    metrics : Mapping[str, int | float] | None
        Extra metrics (e.g. ``{"train_loss": 0.3}``).
    public_key, signature : bytes | None
        Identity-record fields for peer-mode authentication tests.
    """
    metric_values: dict[str, int | float] = {NUM_EXAMPLES_KEY: num_examples}
    metric_values.update(metrics or {})
    records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
        ARRAYS_KEY: arrays_to_record(arrays),
        METRICS_KEY: MetricRecord(metric_values),  # type: ignore[arg-type]
    }
    identity_fields: dict[str, str | bytes] = {}
    if identity is not None:
        identity_fields[IDENTITY_ID] = identity
    if public_key is not None:
        identity_fields[IDENTITY_PUBLIC_KEY] = public_key
    if signature is not None:
        identity_fields[IDENTITY_SIGNATURE] = signature
    if identity_fields:
        records[IDENTITY_KEY] = ConfigRecord(identity_fields)  # type: ignore[arg-type]
    return make_reply(RecordDict(records), node_id)


def make_evaluate_reply(
    num_examples: int | float, node_id: int, metrics: Mapping[str, float] | None = None
) -> Message:
    """An evaluation reply: a MetricRecord only."""
    values: dict[str, int | float] = {NUM_EXAMPLES_KEY: num_examples}
    values.update(metrics or {})
    content = RecordDict({METRICS_KEY: MetricRecord(values)})  # type: ignore[arg-type]
    return Message(content, reply_to=make_instruction(node_id, MessageType.EVALUATE))


def make_error_reply(
    node_id: int, reason: str = "client crashed", code: int = 0
) -> Message:
    """A reply carrying an :class:`flwr.app.Error` instead of content."""
    return Message(Error(code=code, reason=reason), reply_to=make_instruction(node_id))
