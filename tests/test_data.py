"""Data loading and partitioning."""

from __future__ import annotations

import dataclasses
import gzip
import struct
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from flp2p.data import (
    FMNIST_DEBIAN_DIR,
    FMNIST_ENV_VAR,
    FMNIST_FILES,
    DatasetNotFoundError,
    Digits,
    FashionMNIST,
    TrainTest,
    build_dataset,
    client_partition,
    find_fmnist_dir,
    label_skew,
    load_digits,
    load_fmnist,
    partition_indices,
    read_idx,
)


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """Write ``array`` (uint8) in the IDX format, the way the MNIST files are made."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def make_fake_fmnist(directory: Path, n_train: int = 12, n_test: int = 5) -> None:
    rng = np.random.default_rng(0)
    write_idx(
        directory / FMNIST_FILES["train-images"],
        rng.integers(0, 256, (n_train, 28, 28)),
        compress=True,
    )
    write_idx(
        directory / FMNIST_FILES["train-labels"], np.arange(n_train) % 10, compress=True
    )
    write_idx(
        directory / FMNIST_FILES["test-images"],
        rng.integers(0, 256, (n_test, 28, 28)),
        compress=False,
    )
    write_idx(
        directory / FMNIST_FILES["test-labels"], np.arange(n_test) % 10, compress=False
    )


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trips_values_and_shape(tmp_path: Path, compress: bool) -> None:
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    write_idx(tmp_path / "x-idx3-ubyte", array, compress)
    name = "x-idx3-ubyte" + (".gz" if compress else "")
    np.testing.assert_array_equal(read_idx(tmp_path / name), array)


def test_read_idx_rejects_garbage(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\0" * 8)
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")


def test_loader_reads_a_named_directory(tmp_path: Path) -> None:
    make_fake_fmnist(tmp_path)
    load_fmnist.cache_clear()
    data = load_fmnist(str(tmp_path))
    assert data.train.images.shape == (12, 1, 28, 28)
    assert data.test.images.shape == (5, 1, 28, 28)
    assert data.train.images.dtype == np.float32
    assert data.train.images.min() >= 0.0
    assert data.train.images.max() <= 1.0
    np.testing.assert_array_equal(data.train.labels, np.arange(12) % 10)


def test_missing_dataset_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(FMNIST_ENV_VAR, raising=False)
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion"):
        find_fmnist_dir(tmp_path)
    monkeypatch.setenv(FMNIST_ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError, match="nowhere"):
        find_fmnist_dir()


@pytest.mark.skipif(
    not FMNIST_DEBIAN_DIR.is_dir(),
    reason="Debian's dataset-fashion-mnist not installed",
)
def test_real_fmnist_shapes_and_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FMNIST_ENV_VAR, raising=False)
    data = load_fmnist()
    assert data.train.images.shape == (60_000, 1, 28, 28)
    assert data.test.images.shape == (10_000, 1, 28, 28)
    # Fashion-MNIST is balanced: 6,000 train and 1,000 test images per class.
    assert np.bincount(data.train.labels).tolist() == [6000] * 10
    assert np.bincount(data.test.labels).tolist() == [1000] * 10


def test_digits_split_is_disjoint_and_complete() -> None:
    data = load_digits()
    assert data.image_shape == (1, 8, 8)
    assert len(data.train) + len(data.test) == 1797
    assert set(np.unique(data.train.labels)) == set(range(10))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partitions_cover_every_example_once(scheme: str) -> None:
    labels = load_digits().train.labels
    parts = partition_indices(labels, 8, scheme, alpha=0.5, seed=3)
    joined = np.concatenate(parts)
    assert len(parts) == 8
    assert sorted(joined.tolist()) == list(range(len(labels)))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partitions_are_reproducible_and_seeded(scheme: str) -> None:
    labels = load_digits().train.labels
    first = partition_indices(labels, 6, scheme, alpha=0.5, seed=1)
    again = partition_indices(labels, 6, scheme, alpha=0.5, seed=1)
    other = partition_indices(labels, 6, scheme, alpha=0.5, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_dirichlet_skews_labels_and_alpha_controls_it() -> None:
    labels = load_digits().train.labels
    skew = {
        name: label_skew(labels, partition_indices(labels, 10, scheme, alpha, 0), 10)
        for name, scheme, alpha in [
            ("iid", "iid", 1.0),
            ("mild", "dirichlet", 10.0),
            ("strong", "dirichlet", 0.1),
        ]
    }
    assert skew["iid"] < 0.15
    assert skew["strong"] > 0.5
    assert skew["iid"] < skew["mild"] < skew["strong"]


def test_bad_partition_arguments_are_refused() -> None:
    labels = np.zeros(20, dtype=np.int64)
    with pytest.raises(ValueError, match="alpha"):
        partition_indices(labels, 2, "dirichlet", alpha=0.0)
    with pytest.raises(ValueError, match="scheme"):
        partition_indices(labels, 2, "pathological")
    with pytest.raises(ValueError, match="cannot split"):
        partition_indices(labels, 21, "iid")


# ------------------------------------------------ data sets as typed configs


@dataclasses.dataclass(frozen=True)
class FirstHundredDigits(Digits):
    """A data set defined outside the library: a spec class and a ``_target_``."""

    name: ClassVar[str] = "digits100"

    def load(self) -> TrainTest:
        full = super().load()
        first = np.arange(100)
        return dataclasses.replace(full, name=self.name, train=full.train.subset(first))


def test_dataset_configs_name_typed_specs_through_target() -> None:
    from flp2p.config import RunSettings, compose

    digits = RunSettings.from_config(compose(["dataset=digits"]))
    assert digits.data == Digits() and digits.dataset == "digits"
    loaded = digits.data.load()
    assert loaded.name == "digits"
    assert Digits.model_shape == (loaded.image_shape, loaded.num_classes)
    fmnist = RunSettings.from_config(compose([]))
    assert fmnist.data == FashionMNIST() and fmnist.data_dir is None
    tuned = RunSettings.from_config(
        compose(["dataset=digits", "dataset.test_fraction=0.5"])
    )
    assert tuned.data == Digits(test_fraction=0.5)
    assert len(tuned.data.load().test) == round(0.5 * 1797)
    # A new data set is a class plus a config naming it; nothing to register.
    custom = RunSettings.from_config(
        compose(["dataset=digits", f"dataset._target_={__name__}.FirstHundredDigits"])
    )
    assert isinstance(custom.data, FirstHundredDigits)
    assert len(custom.data.load().train) == 100 and custom.dataset == "digits100"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "digits"}, "dataset 'digits' has no _target_: name its class"),
        (
            {"name": "x", "_target_": "flp2p.data.ArrayDataset"},
            "dataset 'x': 'flp2p.data.ArrayDataset' is not a "
            "flp2p.data.DatasetSpec class",
        ),
        ({"name": "x", "_target_": "flp2p.data.Nope"}, "cannot import"),
        (
            {"name": "digits", "_target_": "flp2p.data.Digits", "colour": "red"},
            "dataset 'digits': .*unexpected keyword argument 'colour'",
        ),
        (
            {"name": "digits", "_target_": "flp2p.data.Digits", "test_fraction": 1.5},
            r"dataset 'digits': test_fraction must lie in \(0, 1\), got 1.5",
        ),
    ],
)
def test_bad_dataset_configs_are_named(spec: dict[str, object], message: str) -> None:
    from flp2p.config import ConfigError, RunSettings, compose

    with pytest.raises((ValueError, TypeError), match=message):
        build_dataset(spec)
    plain = RunSettings.from_config(compose(["dataset=digits"]))
    assert plain.dataset == "digits"
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose(["dataset=digits"]), resolve=True)
    assert isinstance(cfg, dict)
    with pytest.raises(ConfigError, match=message):
        RunSettings.from_config(
            {**{str(k): v for k, v in cfg.items()}, "dataset": spec}
        )


def test_a_peers_data_dir_replaces_the_configs_and_partitions_follow_the_spec() -> None:
    spec = FashionMNIST()
    assert spec.with_data_dir("/data/mine") == FashionMNIST(data_dir="/data/mine")
    digits = Digits()
    first = client_partition(digits, 0, 4, "iid", 0.5, 0)
    again = client_partition(Digits(), 0, 4, "iid", 0.5, 0)
    assert first is again  # cached per spec: equal specs are one data set
    parts = partition_indices(digits.load().train.labels, 4, "iid", seed=0)
    np.testing.assert_array_equal(first.labels, digits.load().train.labels[parts[0]])
    other = client_partition(Digits(test_fraction=0.5), 0, 4, "iid", 0.5, 0)
    assert len(other) < len(first)
