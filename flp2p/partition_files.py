"""One client's partition on disk, written once and memory-mapped by every round.

Flower starts a new ClientApp process for every message, so a partition computed in
the ClientApp is computed again each round (loading the data set and splitting it
took seconds, more than the local training itself). The long-lived participant
process writes its partition here once, as two ``.npy`` files; each ClientApp maps
them read-only (:func:`numpy.load` with ``mmap_mode="r"``), which takes
milliseconds, and the pages are shared with the page cache rather than copied.

A ``partition.json`` beside the arrays names what they hold (:class:`PartitionKey`).
It is written last, by rename, so a folder without it — or with another key — is
never read: a crash while writing, or a genesis with another seed or split, makes
the next :func:`ensure_partition` write the arrays again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from flp2p.data import ArrayDataset

IMAGES_FILE = "images.npy"
LABELS_FILE = "labels.npy"
KEY_FILE = "partition.json"


@dataclass(frozen=True)
class PartitionKey:
    """Everything that determines one client's training examples."""

    dataset: str
    partition_id: int
    num_partitions: int
    scheme: str
    alpha: float
    seed: int
    data_dir: str | None = None

    def to_json(self) -> str:
        """Canonical JSON (sorted keys), as stored in :data:`KEY_FILE`."""
        return json.dumps(asdict(self), sort_keys=True)


def open_partition(directory: Path, key: PartitionKey) -> ArrayDataset | None:
    """The partition stored in ``directory`` if it is ``key``'s, memory-mapped
    read-only; ``None`` when the folder holds nothing complete or another key."""
    try:
        stored = (directory / KEY_FILE).read_text()
    except OSError:
        return None
    if stored != key.to_json():
        return None
    try:
        images = np.load(directory / IMAGES_FILE, mmap_mode="r")
        labels = np.load(directory / LABELS_FILE, mmap_mode="r")
        return ArrayDataset(images, labels)
    except (OSError, ValueError):  # truncated or replaced behind our back
        return None


def write_partition(directory: Path, key: PartitionKey, data: ArrayDataset) -> None:
    """Store ``data`` as ``key``'s partition in ``directory`` (replacing any other)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / KEY_FILE).unlink(missing_ok=True)  # incomplete until renamed back
    for name, array in ((IMAGES_FILE, data.images), (LABELS_FILE, data.labels)):
        partial = directory / f".{name}.partial"
        with partial.open("wb") as stream:
            np.save(stream, np.ascontiguousarray(array))
        os.replace(partial, directory / name)
    partial_key = directory / f".{KEY_FILE}.partial"
    partial_key.write_text(key.to_json())
    os.replace(partial_key, directory / KEY_FILE)


def ensure_partition(
    directory: Path, key: PartitionKey, build: Callable[[], ArrayDataset]
) -> tuple[ArrayDataset, bool]:
    """``key``'s partition from ``directory``, written there by ``build()`` first if
    it is not stored yet.

    Returns
    -------
    tuple[ArrayDataset, bool]
        The memory-mapped partition and whether this call wrote it.
    """
    stored = open_partition(directory, key)
    if stored is not None:
        return stored, False
    write_partition(directory, key, build())
    written = open_partition(directory, key)
    assert written is not None  # just written
    return written, True
