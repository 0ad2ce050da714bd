"""Checkpoint pushes to standby aggregators: authentic ones kept, others refused."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import numpy as np
import pytest

from flp2p.identity import Identity
from flp2p.peer.checkpoints import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    encode_arrays,
)
from flp2p.peer.standby_sync import (
    CheckpointReceiver,
    check_pushed,
    check_results,
    checkpoint_header,
    push_checkpoint,
    push_results,
    results_body,
    run_files,
)
from flp2p.signatures import run_results_message

FEDERATION = "fe" * 32
HOLDER = Identity.generate()
OUTSIDER = Identity.generate()


def _checkpoint(server_round: int = 1, value: float = 1.0) -> Checkpoint:
    return Checkpoint(server_round, {"w": np.full((3,), value, dtype=np.float32)})


def _eligible(node_id: str) -> bool:
    return node_id == HOLDER.node_id


def _push(
    checkpoint: Checkpoint,
    pusher: Identity,
    directory: Path,
    federation: str = FEDERATION,
) -> tuple[str | None, CheckpointStore]:
    store = CheckpointStore(directory)

    async def main() -> str | None:
        receiver = CheckpointReceiver(store, FEDERATION, _eligible)
        address = await receiver.start()
        try:
            return await push_checkpoint(address, pusher, federation, checkpoint)
        finally:
            await receiver.stop()

    return asyncio.run(main()), store


def test_eligible_holder_push_is_stored(tmp_path: Path) -> None:
    checkpoint = _checkpoint(2, 0.5)
    error, store = _push(checkpoint, HOLDER, tmp_path)
    assert error is None
    assert store.rounds() == [2]
    assert store.load(2).sha256 == checkpoint.sha256


def test_push_by_non_eligible_peer_is_refused(tmp_path: Path) -> None:
    error, store = _push(_checkpoint(), OUTSIDER, tmp_path)
    assert error is not None and "may not push" in error
    assert store.rounds() == []


def test_push_for_another_federation_is_refused(tmp_path: Path) -> None:
    error, store = _push(_checkpoint(), HOLDER, tmp_path, federation="ab" * 32)
    assert error is not None and "another federation" in error
    assert store.rounds() == []


def test_unreachable_receiver_is_reported() -> None:
    error = asyncio.run(
        push_checkpoint("127.0.0.1:1", HOLDER, FEDERATION, _checkpoint(), timeout=2)
    )
    assert error is not None and error.startswith("127.0.0.1:1")


def test_swapped_arrays_do_not_match_the_signed_hash() -> None:
    signed = _checkpoint(1, 1.0)
    body = encode_arrays(_checkpoint(1, 2.0).arrays)
    header = checkpoint_header(HOLDER, FEDERATION, signed, len(body))
    with pytest.raises(CheckpointError, match="signed hash"):
        check_pushed(header, body, FEDERATION, _eligible)


def test_changed_round_breaks_the_signature() -> None:
    checkpoint = _checkpoint(1)
    body = encode_arrays(checkpoint.arrays)
    header = checkpoint_header(HOLDER, FEDERATION, checkpoint, len(body))
    assert check_pushed(header, body, FEDERATION, _eligible).server_round == 1
    header["round"] = 5  # replaying round 1's model as round 5
    with pytest.raises(CheckpointError, match="bad signature"):
        check_pushed(header, body, FEDERATION, _eligible)


def test_malformed_headers_are_refused() -> None:
    body = encode_arrays(_checkpoint().arrays)
    with pytest.raises(CheckpointError, match="malformed header"):
        check_pushed({"round": 1}, body, FEDERATION, _eligible)
    header = checkpoint_header(HOLDER, FEDERATION, _checkpoint(), len(body))
    header["public_key"] = "00" * 5
    with pytest.raises(CheckpointError, match="malformed signer key"):
        check_pushed(header, body, FEDERATION, _eligible)


@pytest.mark.parametrize(
    ("raw", "answer"),
    [
        (b"not json\n", "refused: malformed header"),
        (b'{"size": 1099511627776}\n', "refused: size 1099511627776 out of range"),
        (b'{"size": 0}\n', "refused: size 0 out of range"),
    ],
)
def test_receiver_answers_garbage_without_storing(
    tmp_path: Path, raw: bytes, answer: str
) -> None:
    store = CheckpointStore(tmp_path)

    async def main() -> str:
        receiver = CheckpointReceiver(store, FEDERATION, _eligible)
        host, _, port = (await receiver.start()).rpartition(":")
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(raw)
            await writer.drain()
            reply = (await reader.readline()).decode().strip()
            writer.close()
            return reply
        finally:
            await receiver.stop()

    assert asyncio.run(main()) == answer
    assert store.rounds() == []


# -- run files (metrics.csv …) ------------------------------------------------------

RUN_FILES = {"metrics.csv": b"round,accuracy\n0,0.1\n", "accuracy.png": b"\x89PNG"}


def _push_results(
    pusher: Identity,
    results_dir: Path | None,
    pushes: list[tuple[int, dict[str, bytes]]],
    federation: str = FEDERATION,
) -> list[str | None]:
    async def main() -> list[str | None]:
        receiver = CheckpointReceiver(
            CheckpointStore(Path("unused")),
            FEDERATION,
            _eligible,
            results_dir=results_dir,
        )
        address = await receiver.start()
        try:
            return [
                await push_results(address, pusher, federation, r, files)
                for r, files in pushes
            ]
        finally:
            await receiver.stop()

    return asyncio.run(main())


def test_the_holders_run_files_are_stored_byte_for_byte(tmp_path: Path) -> None:
    assert _push_results(HOLDER, tmp_path, [(1, RUN_FILES)]) == [None]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == RUN_FILES
    assert run_files(tmp_path) == RUN_FILES


def test_run_files_of_an_older_round_do_not_overwrite_newer_ones(
    tmp_path: Path,
) -> None:
    newer = {"metrics.csv": b"round\n0\n1\n2\n"}
    answers = _push_results(HOLDER, tmp_path, [(2, newer), (1, RUN_FILES)])
    assert answers[0] is None and answers[1] is not None and "round 2" in answers[1]
    assert (tmp_path / "metrics.csv").read_bytes() == newer["metrics.csv"]


@pytest.mark.parametrize(
    ("pusher", "results_dir", "files", "federation", "reason"),
    [
        (OUTSIDER, True, RUN_FILES, FEDERATION, "may not push"),
        (HOLDER, True, RUN_FILES, "ab" * 32, "another federation"),
        (HOLDER, True, {"../identity.key": b"x"}, FEDERATION, "not a run file"),
        (HOLDER, False, RUN_FILES, FEDERATION, "keeps no run folder"),
    ],
)
def test_run_files_are_refused_unless_authentic_and_named(
    tmp_path: Path,
    pusher: Identity,
    results_dir: bool,
    files: dict[str, bytes],
    federation: str,
    reason: str,
) -> None:
    folder = tmp_path / "run"
    (answer,) = _push_results(
        pusher, folder if results_dir else None, [(1, files)], federation
    )
    assert answer is not None and reason in answer
    assert not folder.exists()


def test_run_files_that_differ_from_the_signed_hash_are_refused() -> None:
    body = results_body(RUN_FILES)
    header = {
        "federation": FEDERATION,
        "round": 1,
        "sha256": hashlib.sha256(body).hexdigest(),
        "public_key": HOLDER.public_key.hex(),
        "signature": HOLDER.sign(
            run_results_message(FEDERATION, 1, hashlib.sha256(body).hexdigest())
        ).hex(),
    }
    assert check_results(header, body, FEDERATION, _eligible)[1] == RUN_FILES
    with pytest.raises(ValueError, match="signed hash"):
        swapped = results_body({**RUN_FILES, "metrics.csv": b"round\n"})
        check_results(header, swapped, FEDERATION, _eligible)
    with pytest.raises(ValueError, match="bad signature"):
        check_results({**header, "round": 2}, body, FEDERATION, _eligible)
