"""Data sets and partitions for federated experiments.

Two data sets, both available without any download at run time:

* **Fashion-MNIST** (Xiao et al. 2017; 60,000 train / 10,000 test 28×28 images) from
  the IDX files of Debian's ``dataset-fashion-mnist`` package, or from a directory
  named by the caller or by ``$FLP2P_FMNIST_DIR``;
* scikit-learn's **digits** (1,797 8×8 images), a tiny set for fast tests.

Each is a typed spec (:class:`FashionMNIST`, :class:`Digits`, both
:class:`DatasetSpec`) that ``conf/dataset/<name>.yaml`` names with ``_target_`` —
Hydra's idiom, as strategies, rules, attacks and privacy mechanisms use it — and
:func:`build_dataset` builds, so ``dataset=digits`` picks a config file, never a name
looked up here. A new data set is a spec class (anywhere importable) plus its config
file.

Partitioning is delegated to flwr-datasets' partitioners (IID and Dirichlet over the
labels, Hsu et al. 2019), seeded so that every client of a run computes the same split.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

FMNIST_ENV_VAR = "FLP2P_FMNIST_DIR"
"""Environment variable naming a directory with the Fashion-MNIST IDX files."""
FMNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the IDX files."""
FMNIST_FILES = {
    "train-images": "train-images-idx3-ubyte",
    "train-labels": "train-labels-idx1-ubyte",
    "test-images": "t10k-images-idx3-ubyte",
    "test-labels": "t10k-labels-idx1-ubyte",
}
FMNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
PARTITION_SCHEMES = ("iid", "dirichlet")


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are missing; the message says how to get them."""


@dataclass(frozen=True)
class ArrayDataset:
    """Images as float32 ``(n, 1, h, w)`` scaled to [0, 1] and int64 labels."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        """The examples at ``indices``, in that order."""
        return ArrayDataset(self.images[indices], self.labels[indices])


@dataclass(frozen=True)
class TrainTest:
    """A data set's train and test splits."""

    name: str
    train: ArrayDataset
    test: ArrayDataset
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one image."""
        channels, height, width = self.train.images.shape[1:]
        return int(channels), int(height), int(width)


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) as a numpy array.

    The IDX format (LeCun et al., MNIST) is a big-endian header — two zero bytes, a
    type code, the number of dimensions, one uint32 per dimension — then raw data.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        raw = stream.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    type_code, ndim = raw[2], raw[3]
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4"}
    if type_code not in dtypes:
        raise ValueError(f"{path}: unsupported IDX type code {type_code:#x}")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=dtypes[type_code], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {np.prod(shape)} values, found {data.size}")
    return data.reshape(shape)


def find_fmnist_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Locate the Fashion-MNIST IDX files.

    Looks only in ``data_dir`` if given, else only in ``$FLP2P_FMNIST_DIR`` if set,
    else in the directory of Debian's ``dataset-fashion-mnist`` package.

    Raises
    ------
    DatasetNotFoundError
        With a message that names the fix when the directory lacks any of the four
        files.
    """
    # A directory the user names is the only place looked at: silently falling back
    # to another copy would hide a typo.
    named = data_dir or os.environ.get(FMNIST_ENV_VAR)
    directory = Path(named).expanduser() if named else FMNIST_DEBIAN_DIR
    if all(_idx_path(directory, stem) for stem in FMNIST_FILES.values()):
        return directory
    raise DatasetNotFoundError(
        f"Fashion-MNIST not found in {directory}. Install it with "
        "`sudo apt-get install dataset-fashion-mnist`, or point "
        f"dataset.data_dir= or ${FMNIST_ENV_VAR} at a directory with the four IDX "
        "files (train-images-idx3-ubyte[.gz] ...)."
    )


def _idx_path(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


@lru_cache(maxsize=4)
def load_fmnist(data_dir: str | None = None) -> TrainTest:
    """Fashion-MNIST, 60,000 train and 10,000 test images (cached per process)."""
    directory = find_fmnist_dir(data_dir)

    def read(key: str) -> np.ndarray:
        path = _idx_path(directory, FMNIST_FILES[key])
        assert path is not None  # find_fmnist_dir checked every file
        return read_idx(path)

    def images(key: str) -> np.ndarray:
        return (read(key).astype(np.float32) / 255.0)[:, None, :, :]

    train = ArrayDataset(images("train-images"), read("train-labels").astype(np.int64))
    test = ArrayDataset(images("test-images"), read("test-labels").astype(np.int64))
    return TrainTest("fmnist", train, test, num_classes=10)


@lru_cache(maxsize=1)
def load_digits(test_fraction: float = 0.2, seed: int = 0) -> TrainTest:
    """scikit-learn's 8×8 digits, split into train and test with a fixed seed."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    num_test = round(len(labels) * test_fraction)
    test_idx, train_idx = order[:num_test], order[num_test:]
    return TrainTest(
        "digits",
        ArrayDataset(images[train_idx], labels[train_idx]),
        ArrayDataset(images[test_idx], labels[test_idx]),
        num_classes=10,
    )


@dataclass(frozen=True)
class DatasetSpec:
    """Base of the typed data-set choices; ``name`` is the data set's short name
    (in run labels, summaries and the federation id of a simulation).

    Frozen, hence hashable: partitions are cached per spec.
    """

    name: ClassVar[str]
    model_shape: ClassVar[tuple[tuple[int, int, int], int]]
    """``(channels, height, width)`` of an image and the number of classes: what
    building the model needs, known without loading the data set."""
    data_dir: str | None = None
    """Where the data set's files are (``None``: its default place). A peer's own
    ``--data-dir`` replaces it (:meth:`with_data_dir`)."""

    def load(self) -> TrainTest:
        """Train and test splits (cached per process)."""
        raise NotImplementedError

    def with_data_dir(self, data_dir: str | None) -> DatasetSpec:
        """The same data set read from ``data_dir``."""
        return dataclasses.replace(self, data_dir=data_dir)


@dataclass(frozen=True)
class FashionMNIST(DatasetSpec):
    """Fashion-MNIST (``conf/dataset/fmnist.yaml``): :func:`load_fmnist`."""

    name: ClassVar[str] = "fmnist"
    model_shape: ClassVar[tuple[tuple[int, int, int], int]] = ((1, 28, 28), 10)

    def load(self) -> TrainTest:
        return load_fmnist(self.data_dir)


@dataclass(frozen=True)
class Digits(DatasetSpec):
    """scikit-learn's digits (``conf/dataset/digits.yaml``): :func:`load_digits`.

    The images ship inside scikit-learn, so ``data_dir`` is not read.
    """

    name: ClassVar[str] = "digits"
    model_shape: ClassVar[tuple[tuple[int, int, int], int]] = ((1, 8, 8), 10)
    test_fraction: float = 0.2
    split_seed: int = 0
    """Seed of the train/test split (fixed: every run and peer sees the same)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(
                f"test_fraction must lie in (0, 1), got {self.test_fraction}"
            )

    def load(self) -> TrainTest:
        return load_digits(self.test_fraction, self.split_seed)


def build_dataset(spec: Mapping[str, Any] | None) -> DatasetSpec:
    """The data set a ``dataset`` config names (``_target_``: its spec class, the
    other keys but ``name`` its fields); no config at all is the default,
    Fashion-MNIST.

    Raises
    ------
    ValueError, TypeError
        No ``_target_``, a class that cannot be imported or is no
        :class:`DatasetSpec`, or a bad field (the message names it).
    """
    from strategies.config_instantiation import instantiate_config

    if not spec:
        return FashionMNIST()
    return instantiate_config({"name": "?", **spec}, DatasetSpec, group="dataset")


def partition_indices(
    labels: np.ndarray,
    num_partitions: int,
    scheme: str = "dirichlet",
    alpha: float = 0.5,
    seed: int = 0,
    min_partition_size: int = 10,
) -> list[np.ndarray]:
    """Split example indices among clients with a flwr-datasets partitioner.

    Parameters
    ----------
    labels : np.ndarray
        Label of every training example.
    num_partitions : int
        Number of clients.
    scheme : {"iid", "dirichlet"}
        ``iid``: uniform random split. ``dirichlet``: per-class proportions drawn
        from Dir(α) (Hsu et al. 2019, "Measuring the effects of non-identical data
        distribution"); small α means strong label skew.
    alpha : float
        Concentration of the Dirichlet distribution (ignored for ``iid``).
    seed : int
        Seed: the same arguments give the same split in every process.
    min_partition_size : int
        Dirichlet only: resample until every client holds at least this many.

    Returns
    -------
    list[np.ndarray]
        One sorted int64 index array per client; together they cover every example
        exactly once.
    """
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    if num_partitions < 1:
        raise ValueError(f"num_partitions must be ≥ 1, got {num_partitions}")
    if num_partitions > len(labels):
        raise ValueError(
            f"cannot split {len(labels)} examples among {num_partitions} clients"
        )
    table = Dataset.from_dict(
        {"index": np.arange(len(labels), dtype=np.int64), "label": labels}
    )
    partitioner: IidPartitioner | DirichletPartitioner
    if scheme == "iid":
        partitioner = IidPartitioner(num_partitions=num_partitions)
        table = table.shuffle(seed=seed)
    elif scheme == "dirichlet":
        if alpha <= 0:
            raise ValueError(f"Dirichlet alpha must be > 0, got {alpha}")
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=alpha,
            min_partition_size=min(min_partition_size, len(labels) // num_partitions),
            self_balancing=True,
            shuffle=True,
            seed=seed,
        )
    else:
        raise ValueError(
            f"unknown partition scheme {scheme!r}; choose one of "
            f"{', '.join(PARTITION_SCHEMES)}"
        )
    partitioner.dataset = table
    return [
        np.sort(np.asarray(partitioner.load_partition(pid)["index"], dtype=np.int64))
        for pid in range(num_partitions)
    ]


@lru_cache(maxsize=8)
def client_partition(
    dataset: DatasetSpec,
    partition_id: int,
    num_partitions: int,
    scheme: str,
    alpha: float,
    seed: int,
) -> ArrayDataset:
    """The training examples of one client (cached per process)."""
    parts = _cached_partitions(dataset, num_partitions, scheme, alpha, seed)
    return dataset.load().train.subset(parts[partition_id])


@lru_cache(maxsize=4)
def _cached_partitions(
    dataset: DatasetSpec,
    num_partitions: int,
    scheme: str,
    alpha: float,
    seed: int,
) -> tuple[np.ndarray, ...]:
    labels = dataset.load().train.labels
    return tuple(partition_indices(labels, num_partitions, scheme, alpha, seed))


def label_skew(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> float:
    """Mean total-variation distance between each client's and the global label mix.

    0 means every client sees the global label distribution; 1 means disjoint
    supports. Used to check and report how non-IID a split is.
    """
    global_mix = np.bincount(labels, minlength=num_classes) / len(labels)
    distances = [
        0.5
        * np.abs(
            np.bincount(labels[p], minlength=num_classes) / max(len(p), 1) - global_mix
        ).sum()
        for p in parts
    ]
    return float(np.mean(distances))
