"""This participant's partition, prepared once by the long-lived peer process.

Every round Flower starts a new ClientApp process; loading the data set and
splitting it there cost more than the local training. ``python -m flp2p.client``
instead composes the federation's settings from its genesis — the same
:func:`~flp2p.peer.federation_app.resolve_genesis` the aggregator hands every run —
computes its partition once and writes it to ``<work dir>/partition``
(:mod:`flp2p.partition_files`); the SuperNode's node config names that folder
(:data:`~flp2p.local_training.PARTITION_DIR_NODE_KEY`) and each ClientApp maps it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flp2p.config import ConfigError, RunSettings
from flp2p.local_training import partition_data, partition_key
from flp2p.partition_files import ensure_partition
from flp2p.peer.federation_app import resolve_genesis
from flp2p.peer.peer_options import PeerError

PARTITION_DIR = "partition"
"""Folder of the prepared partition inside ``--work-dir``."""


def prepare_partition(
    parameters: Mapping[str, Any],
    work_dir: Path,
    partition_id: int,
    num_partitions: int,
    data_dir: str | None = None,
) -> Path:
    """Write (or keep) this peer's partition under ``work_dir``; return its folder.

    ``data_dir`` replaces the genesis's data folder, as the SuperNode's ``data-dir``
    does for the ClientApp, so both name the same partition.

    Raises
    ------
    PeerError
        If the genesis does not compose or the data set cannot be read.
    """
    try:
        settings = RunSettings.from_config(resolve_genesis(parameters))
    except ConfigError as error:
        raise PeerError(f"the federation's genesis: {error}") from None
    if data_dir:
        settings = dataclasses.replace(
            settings, data=settings.data.with_data_dir(data_dir)
        )
    directory = work_dir / PARTITION_DIR
    key = partition_key(settings, partition_id, num_partitions)
    try:
        ensure_partition(
            directory,
            key,
            lambda: partition_data(settings, partition_id, num_partitions),
        )
    except (OSError, ValueError) as error:
        raise PeerError(f"cannot prepare this peer's partition: {error}") from None
    return directory
