"""Compressed updates: what a participant sends instead of its whole model.

A participant's update is the delta ``δ = x − o`` (trained model − the global model
``o`` it received), flattened in the model's key order (:func:`strategies.base.
flatten_arrays`). A codec turns ``δ`` into a small *payload* of named arrays and
back; what both sides then work on is the **decoded update**

    x̂ = cast(o + decode(encode(δ)))        (per tensor, in the model's dtype)

a model exactly like one sent whole. The participant signs ``update_sha256(x̂)``,
the aggregator decodes the payload to the same ``x̂`` (:func:`decoded_update`, the
one definition both call) before any validation, so shape and finiteness checks,
the signature, the ledger's digest, detectors and rules all see the decoded update
and a digest means the same thing whatever the transport.

Codecs (``conf/compression/<name>.yaml`` names one with ``_target_``):

* :class:`NoCompression` – the model is sent whole (Flower's own format).
* :class:`Int8Quantization` – per tensor ``t`` a scale ``s_t = max|δ_t| / 127``
  (float32, rounded up) and ``q = rint(δ_t / s_t) ∈ [−127, 127]`` as int8:
  ``|δ − q s_t| ≤ s_t / 2`` per entry; 1 byte per parameter plus 4 per tensor.
* :class:`TopKSparsification` – the ``k = ⌈fraction · d⌉`` entries of largest
  magnitude (Aji & Heafield 2017) as ascending int32 indices and float32 values:
  8 bytes per kept entry. With error feedback (Stich et al. 2018; Karimireddy et
  al. 2019) the participant adds what it did not send last time:

      u_t = δ_t + e_{t−1},   sent_t = x̂_t − o_t,   e_t = u_t − sent_t

  so ``Σ_{t≤T} sent_t + e_T = Σ_{t≤T} δ_t``: nothing is lost, only delayed.

A payload's arrays carry codec-specific names (``flp2p-int8/values`` …), so a reply
says by itself how it is encoded and survives any transport that keeps its arrays
(the audit batches of :mod:`flp2p.audit.recompute` included).

References
----------
Aji, A. F., & Heafield, K. (2017). Sparse Communication for Distributed Gradient
Descent. EMNLP. https://arxiv.org/abs/1704.05021
Stich, S. U., Cordonnier, J.-B., & Jaggi, M. (2018). Sparsified SGD with Memory.
NeurIPS. https://arxiv.org/abs/1809.07599
Karimireddy, S. P., Rebjock, Q., Stich, S., & Jaggi, M. (2019). Error Feedback Fixes
SignSGD and other Gradient Compression Schemes. ICML.
https://arxiv.org/abs/1901.09847
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, ClassVar

import numpy as np

from strategies.config_instantiation import instantiate_config

INT8_VALUES = "flp2p-int8/values"
"""Payload array of :class:`Int8Quantization`: ``(d,)`` int8."""
INT8_SCALES = "flp2p-int8/scales"
"""Payload array of :class:`Int8Quantization`: one float32 scale per tensor."""
TOPK_INDICES = "flp2p-topk/indices"
"""Payload array of :class:`TopKSparsification`: ``(k,)`` ascending int32 indices."""
TOPK_VALUES = "flp2p-topk/values"
"""Payload array of :class:`TopKSparsification`: ``(k,)`` float32 values."""

_INT8_LEVELS = 127


class UpdateCodec:
    """Base of the ``compression`` choices; ``name`` is the config's name."""

    name: ClassVar[str]
    payload_names: ClassVar[frozenset[str]] = frozenset()
    """Names of the payload's arrays (empty: the model is sent whole)."""
    error_feedback: bool = False
    """Whether the participant carries what it did not send into the next round."""

    @property
    def compresses(self) -> bool:
        """Whether replies carry a payload instead of the model."""
        return bool(self.payload_names)

    def encode(self, delta: np.ndarray, sizes: Sequence[int]) -> dict[str, np.ndarray]:
        """The payload of a flat float64 ``delta`` whose tensors have ``sizes``."""
        raise NotImplementedError

    def decode(
        self, payload: Mapping[str, np.ndarray], sizes: Sequence[int]
    ) -> np.ndarray:
        """The flat float64 delta a payload stands for (``ValueError`` if malformed:
        the payload may come from anybody)."""
        raise NotImplementedError


@dataclass(frozen=True)
class NoCompression(UpdateCodec):
    """The model is sent whole (``compression=none``)."""

    name: ClassVar[str] = "none"


@dataclass(frozen=True)
class Int8Quantization(UpdateCodec):
    """8-bit deltas with one float32 scale per tensor (``compression=int8``).

    Scale ``s_t = max_j |δ_tj| / 127`` rounded up to a float32 (so every ``|δ / s|``
    is at most 127), values ``q = rint(δ / s)``: the decoded ``q s`` is within
    ``s / 2`` of ``δ`` in every entry, a tensor of zeros stays exactly zero.
    """

    name: ClassVar[str] = "int8"
    payload_names: ClassVar[frozenset[str]] = frozenset({INT8_VALUES, INT8_SCALES})
    error_feedback: bool = False

    def encode(self, delta: np.ndarray, sizes: Sequence[int]) -> dict[str, np.ndarray]:
        values = np.empty(delta.shape[0], dtype=np.int8)
        scales = np.zeros(len(sizes), dtype=np.float32)
        for tensor, (start, stop) in enumerate(_spans(sizes)):
            piece = delta[start:stop]
            peak = float(np.abs(piece).max(initial=0.0))
            scale = np.float32(peak / _INT8_LEVELS)
            if float(scale) * _INT8_LEVELS < peak:  # rounded down: one ulp up
                scale = np.nextafter(scale, np.float32(np.inf))
            scales[tensor] = scale
            if scale == 0.0:
                values[start:stop] = 0
                continue
            quantised = np.rint(piece / float(scale))
            np.clip(quantised, -_INT8_LEVELS, _INT8_LEVELS, out=quantised)
            values[start:stop] = quantised
        return {INT8_VALUES: values, INT8_SCALES: scales}

    def decode(
        self, payload: Mapping[str, np.ndarray], sizes: Sequence[int]
    ) -> np.ndarray:
        values = _payload_array(payload, INT8_VALUES, ("int8",), (sum(sizes),))
        scales = _payload_array(payload, INT8_SCALES, ("float32",), (len(sizes),))
        if not np.all(np.isfinite(scales)) or np.any(scales < 0):
            raise ValueError("int8 scales must be finite and non-negative")
        if np.any(values == -128):
            raise ValueError("int8 values must lie in [-127, 127]")
        delta = values.astype(np.float64)
        for tensor, (start, stop) in enumerate(_spans(sizes)):
            delta[start:stop] *= float(scales[tensor])
        return delta


@dataclass(frozen=True)
class TopKSparsification(UpdateCodec):
    """The largest-magnitude ``fraction`` of the delta's entries
    (``compression=topk``), with error feedback by default.

    ``k = ⌈fraction · d⌉`` (at least 1) over the whole flattened delta, indices
    ascending (one canonical payload per delta), values float32: kept entries are
    exact up to float32 rounding, which error feedback carries forward like the
    entries left out.
    """

    name: ClassVar[str] = "topk"
    payload_names: ClassVar[frozenset[str]] = frozenset({TOPK_INDICES, TOPK_VALUES})
    fraction: float = 0.01
    error_feedback: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must lie in (0, 1], got {self.fraction}")

    def kept(self, d: int) -> int:
        """``k`` for a delta of ``d`` entries."""
        return min(d, max(1, math.ceil(self.fraction * d)))

    def encode(self, delta: np.ndarray, sizes: Sequence[int]) -> dict[str, np.ndarray]:
        d = delta.shape[0]
        if d >= 2**31:
            raise ValueError("top-k indices are int32: at most 2**31 - 1 parameters")
        k = self.kept(d)
        magnitude = np.abs(delta)
        chosen = np.arange(d) if k == d else np.argpartition(magnitude, d - k)[d - k :]
        chosen.sort()
        return {
            TOPK_INDICES: chosen.astype(np.int32),
            TOPK_VALUES: delta[chosen].astype(np.float32),
        }

    def decode(
        self, payload: Mapping[str, np.ndarray], sizes: Sequence[int]
    ) -> np.ndarray:
        d = sum(sizes)
        indices = _payload_array(payload, TOPK_INDICES, ("int32",), None)
        values = _payload_array(payload, TOPK_VALUES, ("float32",), None)
        if indices.ndim != 1 or values.shape != indices.shape:
            raise ValueError("top-k indices and values must be 1-D of one length")
        if indices.shape[0] > self.kept(d):
            raise ValueError(
                f"top-k payload holds {indices.shape[0]} entries, at most "
                f"{self.kept(d)} allowed"
            )
        if indices.size and (indices[0] < 0 or indices[-1] >= d):
            raise ValueError(f"top-k index out of range [0, {d})")
        if np.any(indices[1:] <= indices[:-1]):
            raise ValueError("top-k indices must be strictly ascending")
        if not np.all(np.isfinite(values)):
            raise ValueError("top-k values contain NaN or Inf")
        delta = np.zeros(d)
        delta[indices] = values
        return delta


CODECS: tuple[type[UpdateCodec], ...] = (
    NoCompression,
    Int8Quantization,
    TopKSparsification,
)
"""Every codec, by which a reply's payload names are recognised."""


def codec_of_payload(names: Sequence[str] | frozenset[str]) -> type[UpdateCodec]:
    """The codec whose payload has exactly these array names (``ValueError``
    naming them when none has)."""
    wanted = frozenset(names)
    for codec in CODECS:
        if codec.payload_names and codec.payload_names == wanted:
            return codec
    raise ValueError(f"no codec sends arrays {sorted(wanted)}")


def is_payload(names: Sequence[str] | frozenset[str]) -> bool:
    """Whether arrays with these names are a compressed payload (not a model)."""
    wanted = frozenset(names)
    return any(c.payload_names == wanted for c in CODECS if c.payload_names)


def decoder_for(codec: type[UpdateCodec]) -> UpdateCodec:
    """The codec instance the aggregator decodes a payload with.

    Decoding needs no setting but the top-k bound: the aggregator accepts any
    ``k ≤ d`` (a participant may keep more than the federation's default).
    """
    if codec is TopKSparsification:
        return TopKSparsification(fraction=1.0)
    return codec()


def model_from_delta(
    reference: Mapping[str, np.ndarray], delta: np.ndarray
) -> dict[str, np.ndarray]:
    """``cast(o + δ)`` per tensor in ``reference``'s order, dtypes and shapes.

    Per tensor rather than over one flat float64 copy of the model (same values:
    each entry is one float64 addition and one cast), so decoding a reply needs
    one tensor of scratch. Integer tensors are rounded, as
    :func:`strategies.base.unflatten_vector` does.
    """
    result: dict[str, np.ndarray] = {}
    for name, (start, stop) in zip(
        reference, _spans(tensor_sizes(reference)), strict=True
    ):
        like = np.asarray(reference[name])
        piece = like.astype(np.float64).ravel() + delta[start:stop]
        if like.dtype.kind in "biu":
            piece = np.rint(piece)
        with np.errstate(over="ignore", invalid="ignore"):  # validation judges it
            result[name] = np.asarray(piece.reshape(like.shape), dtype=like.dtype)
    return result


def decoded_update(
    arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The model a reply's arrays stand for: themselves, or a payload decoded.

    The participant's signing mod and the aggregator's validation both call this,
    so the signature covers exactly the update the aggregator checks.

    Raises
    ------
    ValueError
        If the arrays are a malformed payload (the message says why).
    """
    if not is_payload(list(arrays)):
        return dict(arrays)
    codec = decoder_for(codec_of_payload(list(arrays)))
    return model_from_delta(reference, codec.decode(arrays, tensor_sizes(reference)))


def tensor_sizes(reference: Mapping[str, np.ndarray]) -> list[int]:
    """Entries of each tensor, in the model's order."""
    return [int(np.asarray(array).size) for array in reference.values()]


def max_payload_bytes(reference: Mapping[str, np.ndarray]) -> int:
    """The most bytes any payload array may hold for this model (before decoding):
    a top-k payload that keeps every entry, 4 bytes each."""
    return 4 * sum(tensor_sizes(reference)) + 4 * len(reference)


def build_codec(spec: Mapping[str, Any]) -> UpdateCodec:
    """The codec a ``compression`` config names (``_target_``; no config: none).

    Raises
    ------
    ValueError, TypeError
        An unknown class or a bad value (the message names it).
    """
    return instantiate_config(
        spec, UpdateCodec, group="compression", default=NoCompression
    )


def _spans(sizes: Sequence[int]) -> list[tuple[int, int]]:
    bounds = np.cumsum([0, *sizes])
    return [(int(a), int(b)) for a, b in pairwise(bounds)]


def _payload_array(
    payload: Mapping[str, np.ndarray],
    name: str,
    dtypes: tuple[str, ...],
    shape: tuple[int, ...] | None,
) -> np.ndarray:
    if name not in payload:
        raise ValueError(f"payload lacks array '{name}'")
    array = np.asarray(payload[name])
    if str(array.dtype) not in dtypes:
        raise ValueError(f"payload array '{name}' has dtype {array.dtype}")
    if shape is not None and array.shape != shape:
        raise ValueError(
            f"payload array '{name}' has shape {array.shape}, expected {shape}"
        )
    return array
