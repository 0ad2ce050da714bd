"""Data sets and partitions for federated experiments.

Two data sets, both available without any download at run time:

* **Fashion-MNIST** (Xiao et al. 2017; 60,000 train / 10,000 test 28×28 images) from
  the IDX files of Debian's ``dataset-fashion-mnist`` package, or from a directory
  named by the caller or by ``$FLP2P_FMNIST_DIR``;
* scikit-learn's **digits** (1,797 8×8 images), a tiny set for fast tests.

Partitioning is delegated to flwr-datasets' partitioners (IID and Dirichlet over the
labels, Hsu et al. 2019), seeded so that every client of a run computes the same split.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

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
DATASETS = ("fmnist", "digits")
DATASET_SHAPES: dict[str, tuple[tuple[int, int, int], int]] = {
    "fmnist": ((1, 28, 28), 10),
    "digits": ((1, 8, 8), 10),
}
"""``(channels, height, width)`` of an image and the number of classes, per data
set: what building the model needs, known without loading the data set (a
ClientApp that trains on a prepared partition never loads it)."""
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


def load_dataset(name: str, data_dir: str | None = None) -> TrainTest:
    """Load a data set by name: ``"fmnist"`` or ``"digits"``."""
    if name == "fmnist":
        return load_fmnist(data_dir)
    if name == "digits":
        return load_digits()
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def dataset_shape(name: str) -> tuple[tuple[int, int, int], int]:
    """Image shape and class count of data set ``name`` (:data:`DATASET_SHAPES`)."""
    if name not in DATASET_SHAPES:
        raise ValueError(
            f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}"
        )
    return DATASET_SHAPES[name]


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
    dataset: str,
    partition_id: int,
    num_partitions: int,
    scheme: str,
    alpha: float,
    seed: int,
    data_dir: str | None = None,
) -> ArrayDataset:
    """The training examples of one client (cached per process)."""
    data = load_dataset(dataset, data_dir)
    parts = _cached_partitions(dataset, num_partitions, scheme, alpha, seed, data_dir)
    return data.train.subset(parts[partition_id])


@lru_cache(maxsize=4)
def _cached_partitions(
    dataset: str,
    num_partitions: int,
    scheme: str,
    alpha: float,
    seed: int,
    data_dir: str | None,
) -> tuple[np.ndarray, ...]:
    labels = load_dataset(dataset, data_dir).train.labels
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
