"""Global models by round, on disk, each named by its hash.

The aggregator's ServerApp writes one checkpoint per finished round; standby
aggregators receive copies (:mod:`flp2p.peer.standby_sync`). A successor resumes from
the newest round whose model hash equals the hash a lease advertised for that round
(:func:`resume_round`), so a peer never continues from a model nobody vouched for.
A participant keeps the federation's final model the same way
(:func:`write_final_model`), checked against the last lease's hash.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from strategies.records import update_sha256

_FILE_PATTERN = re.compile(r"^round-(\d{6})\.npz$")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or does not match its hash."""


@dataclass(frozen=True)
class Checkpoint:
    """The global model after ``server_round`` (0: the initial model)."""

    server_round: int
    arrays: Mapping[str, np.ndarray]

    @property
    def sha256(self) -> str:
        """Transport-independent hash of the arrays (:func:`update_sha256`)."""
        return update_sha256(self.arrays)


def encode_arrays(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Named arrays as ``.npz`` bytes (no pickle, so safe to load from peers)."""
    buffer = io.BytesIO()
    named: dict[str, Any] = {name: np.asarray(a) for name, a in arrays.items()}
    np.savez(buffer, **named)
    return buffer.getvalue()


def decode_arrays(data: bytes) -> dict[str, np.ndarray]:
    """Inverse of :func:`encode_arrays`; refuses pickled objects.

    Raises
    ------
    CheckpointError
        If ``data`` is not an ``.npz`` archive of plain arrays.
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:
        raise CheckpointError(f"not an array archive: {error}") from None


def resume_round(held: Mapping[int, str], advertised: Mapping[int, str]) -> int | None:
    """The newest round whose held model hash equals the advertised one.

    Parameters
    ----------
    held
        Round → hash of the checkpoints this peer holds.
    advertised
        Round → model hash, from the signed leases this peer has seen.

    Returns
    -------
    int or None
        The round to resume from, or ``None`` if no held model was vouched for.
    """
    matching = [r for r, digest in held.items() if advertised.get(r) == digest]
    return max(matching, default=None)


class CheckpointStore:
    """A folder of ``round-NNNNNN.npz`` files, written atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, server_round: int) -> Path:
        """Where the checkpoint of ``server_round`` lives."""
        if server_round < 0:
            raise CheckpointError(f"round must be non-negative, got {server_round}")
        return self.directory / f"round-{server_round:06d}.npz"

    def save(self, checkpoint: Checkpoint) -> Path:
        """Write ``checkpoint``; a reader never sees a half-written file."""
        target = self.path(checkpoint.server_round)
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.partial")
        partial.write_bytes(encode_arrays(checkpoint.arrays))
        os.replace(partial, target)  # atomic on POSIX: readers poll this folder
        return target

    def rounds(self) -> list[int]:
        """Rounds held, ascending."""
        if not self.directory.is_dir():
            return []
        found = (_FILE_PATTERN.match(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def load(self, server_round: int) -> Checkpoint:
        """Read the checkpoint of ``server_round``.

        Raises
        ------
        CheckpointError
            If it is not held or unreadable.
        """
        path = self.path(server_round)
        if not path.exists():
            raise CheckpointError(
                f"no checkpoint of round {server_round} in {path.parent}"
            )
        return Checkpoint(server_round, decode_arrays(path.read_bytes()))

    def hashes(self) -> dict[int, str]:
        """Round → model hash of every checkpoint held."""
        return {r: self.load(r).sha256 for r in self.rounds()}


FINAL_MODEL_FILE = "final_model.npz"
"""A participant's copy of the federation's final model, in its work folder."""


def write_final_model(work_dir: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write the final model to ``work_dir`` (atomically: the peer runtime polls it)."""
    target = Path(work_dir) / FINAL_MODEL_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.partial")
    partial.write_bytes(encode_arrays(arrays))
    os.replace(partial, target)
    return target


def final_model_sha256(work_dir: Path) -> str | None:
    """Hash of the final model in ``work_dir`` (:func:`update_sha256`, as the lease
    names it), ``None`` while there is none or it does not read."""
    path = Path(work_dir) / FINAL_MODEL_FILE
    try:
        return update_sha256(decode_arrays(path.read_bytes()))
    except (OSError, CheckpointError):
        return None
