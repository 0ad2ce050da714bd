"""Checkpoints: round trip, hash, no pickles, and the resume point."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from flp2p.peer.checkpoints import (
    FINAL_MODEL_FILE,
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    decode_arrays,
    encode_arrays,
    final_model_sha256,
    resume_round,
    write_final_model,
)
from strategies.records import update_sha256


def _arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.normal(size=(2, 3)).astype(np.float32),
        "fc.bias": rng.normal(size=4),
    }


def test_round_trip_keeps_names_dtypes_values_and_hash(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    arrays = _arrays(0)
    store.save(Checkpoint(3, arrays))
    loaded = store.load(3)
    assert loaded.server_round == 3
    assert set(loaded.arrays) == set(arrays)
    for name, array in arrays.items():
        assert loaded.arrays[name].dtype == array.dtype
        np.testing.assert_array_equal(loaded.arrays[name], array)
    assert loaded.sha256 == update_sha256(arrays)


def test_hash_is_the_shared_update_hash_computed_by_hand() -> None:
    arrays = {"w": np.array([1.0, 2.0], dtype=np.float32)}
    digest = hashlib.sha256()
    digest.update(b"w" + b"\0<f4\0" + b"(2,)\0" + arrays["w"].tobytes())
    assert Checkpoint(0, arrays).sha256 == digest.hexdigest()


def test_rounds_lists_only_checkpoints_in_order(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    for r in (2, 0, 10):
        store.save(Checkpoint(r, _arrays(r)))
    (tmp_path / "round-000004.npz.123.partial").write_bytes(b"half")
    (tmp_path / "notes.txt").write_text("x")
    assert store.rounds() == [0, 2, 10]
    assert store.hashes() == {r: update_sha256(_arrays(r)) for r in (0, 2, 10)}


def test_missing_round_and_negative_round_are_refused(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint of round 5"):
        store.load(5)
    with pytest.raises(CheckpointError, match="non-negative"):
        store.path(-1)


def test_decode_refuses_pickled_objects_and_garbage() -> None:
    with pytest.raises(CheckpointError):
        decode_arrays(encode_arrays({"o": np.array([{"evil": 1}], dtype=object)}))
    with pytest.raises(CheckpointError, match="not an array archive"):
        decode_arrays(b"not a zip")


@pytest.mark.parametrize(
    ("held", "advertised", "expected"),
    [
        ({0: "h0", 1: "h1", 2: "h2"}, {0: "h0", 1: "h1", 2: "h2"}, 2),
        # the newest lease names a model we lack: fall back to the newest we hold
        ({0: "h0", 1: "h1"}, {0: "h0", 1: "h1", 2: "h2"}, 1),
        # a held model that no lease vouched for (tampered) is skipped
        ({0: "h0", 1: "h1", 2: "evil"}, {0: "h0", 1: "h1", 2: "h2"}, 1),
        ({1: "x"}, {0: "h0"}, None),
        ({}, {}, None),
    ],
)
def test_resume_round(
    held: dict[int, str], advertised: dict[int, str], expected: int | None
) -> None:
    assert resume_round(held, advertised) == expected


def test_the_final_model_is_kept_under_the_hash_the_lease_names(
    tmp_path: Path,
) -> None:
    assert final_model_sha256(tmp_path) is None  # not yet received
    arrays = {"w": np.arange(4, dtype=np.float32)}
    path = write_final_model(tmp_path, arrays)
    assert path == tmp_path / FINAL_MODEL_FILE
    assert final_model_sha256(tmp_path) == Checkpoint(3, arrays).sha256
    path.write_bytes(b"not an archive")
    assert final_model_sha256(tmp_path) is None
