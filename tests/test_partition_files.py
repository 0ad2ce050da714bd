"""A participant's partition is written once, reused, and is what the ClientApp
trains on (issue 13, item 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, RecordDict

import flp2p.local_training as local_training
from flp2p.data import ArrayDataset, Digits, FashionMNIST, client_partition
from flp2p.local_training import PARTITION_DIR_NODE_KEY, node_data, partition_key
from flp2p.partition_files import (
    IMAGES_FILE,
    KEY_FILE,
    LABELS_FILE,
    PartitionKey,
    ensure_partition,
    open_partition,
)
from flp2p.peer.federation_app import (
    DATA_DIR_NODE_KEY,
    SETTINGS_KEY,
    experiment_settings,
    resolve_genesis,
    settings_json,
)
from flp2p.peer.prepared_data import PARTITION_DIR, prepare_partition

PARAMETERS: dict[str, Any] = {"rounds": 2, "clients": 4, "dataset": "digits"}


def _digits_key(partition_id: int = 1) -> PartitionKey:
    return PartitionKey("digits", partition_id, 4, "dirichlet", 0.5, 0)


def _digits_partition(partition_id: int = 1) -> ArrayDataset:
    return client_partition(Digits(), partition_id, 4, "dirichlet", 0.5, 0)


def _stamps(directory: Path) -> dict[str, tuple[int, int]]:
    return {
        name: ((directory / name).stat().st_ino, (directory / name).stat().st_mtime_ns)
        for name in (IMAGES_FILE, LABELS_FILE, KEY_FILE)
    }


def test_partition_is_written_once_then_reused(tmp_path: Path) -> None:
    expected = _digits_partition()
    builds: list[int] = []

    def build() -> ArrayDataset:
        builds.append(1)
        return expected

    first, wrote = ensure_partition(tmp_path, _digits_key(), build)
    assert wrote and builds == [1]
    stamps = _stamps(tmp_path)
    again, wrote_again = ensure_partition(tmp_path, _digits_key(), build)
    assert not wrote_again and builds == [1]  # not built a second time
    assert _stamps(tmp_path) == stamps  # nor written
    for stored in (first, again):
        # Memory-mapped, read-only, and the same arrays as the in-memory split.
        assert isinstance(stored.images, np.memmap)
        assert not stored.images.flags.writeable
        np.testing.assert_array_equal(stored.images, expected.images)
        np.testing.assert_array_equal(stored.labels, expected.labels)
        assert stored.images.dtype == expected.images.dtype


def test_another_key_or_an_unfinished_folder_is_not_read(tmp_path: Path) -> None:
    ensure_partition(tmp_path, _digits_key(1), lambda: _digits_partition(1))
    assert open_partition(tmp_path, _digits_key(2)) is None
    other, wrote = ensure_partition(
        tmp_path, _digits_key(2), lambda: _digits_partition(2)
    )
    assert wrote
    np.testing.assert_array_equal(other.labels, _digits_partition(2).labels)
    (tmp_path / KEY_FILE).unlink()  # as after a crash while writing
    assert open_partition(tmp_path, _digits_key(2)) is None


def _client_context(partition_dir: Path | None, data_dir: str | None) -> Context:
    node_config: dict[str, Any] = {"partition-id": 1, "num-partitions": 4}
    if partition_dir is not None:
        node_config[PARTITION_DIR_NODE_KEY] = str(partition_dir)
    if data_dir is not None:
        node_config[DATA_DIR_NODE_KEY] = data_dir
    return Context(
        run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={}
    )


def test_the_clientapp_trains_on_the_prepared_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The peer process prepares its partition from the genesis...
    folder = prepare_partition(PARAMETERS, tmp_path, 1, 4)
    assert folder == tmp_path / PARTITION_DIR
    # ...and the ClientApp, with the settings the aggregator hands every run, maps
    # those files instead of computing the split (which would fail here).
    settings = experiment_settings(
        {SETTINGS_KEY: settings_json(resolve_genesis(PARAMETERS))}
    )

    def no_split(*_args: object, **_kwargs: object) -> ArrayDataset:
        raise AssertionError("the ClientApp recomputed its partition")

    monkeypatch.setattr(local_training, "partition_data", no_split)
    local = node_data(settings, _client_context(folder, None))
    assert isinstance(local.images, np.memmap)
    assert Path(str(local.images.filename)) == folder / IMAGES_FILE
    np.testing.assert_array_equal(local.labels, _digits_partition().labels)
    # A second preparation (the peer restarted) keeps the files.
    stamps = _stamps(folder)
    prepare_partition(PARAMETERS, tmp_path, 1, 4)
    assert _stamps(folder) == stamps


def test_a_clientapp_whose_settings_differ_computes_its_own(tmp_path: Path) -> None:
    folder = prepare_partition(PARAMETERS, tmp_path, 1, 4)
    settings = experiment_settings(
        {SETTINGS_KEY: settings_json(resolve_genesis({**PARAMETERS, "seed": 7}))}
    )
    local = node_data(settings, _client_context(folder, None))
    assert not isinstance(local.images, np.memmap)
    key = partition_key(settings, 1, 4)
    expected = client_partition(Digits(), 1, 4, key.scheme, key.alpha, key.seed)
    np.testing.assert_array_equal(local.labels, expected.labels)


def test_model_shape_is_the_loaded_data_sets() -> None:
    digits = Digits().load()
    assert Digits.model_shape == (digits.image_shape, digits.num_classes)


def test_model_shape_of_fashion_mnist() -> None:
    try:
        fmnist = FashionMNIST().load()
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed")
    assert FashionMNIST.model_shape == (fmnist.image_shape, fmnist.num_classes)
