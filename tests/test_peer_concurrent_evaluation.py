"""The peer aggregator's central evaluation runs while the next round trains, its rows
still land complete and in round order, a successor continues the run's clock, and a
successor elected after the last round delivers the final model again."""

from __future__ import annotations

import csv
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg
from rich.console import Console

from flp2p import reporting
from flp2p.app import arrays_to_record, record_to_arrays
from flp2p.config import RunSettings
from flp2p.peer.aggregator import peer_run_config
from flp2p.peer.checkpoints import Checkpoint, CheckpointStore
from flp2p.peer.federation_app import (
    ConcurrentEvaluation,
    resolve_genesis,
    run_peer_server,
    write_start,
)
from flp2p.peer.runtime import initial_checkpoint
from flp2p.peer.standby_sync import RESULT_FILES
from flp2p.reporting import CLOCK_FILE, RunReporter
from strategies.records import ARRAYS_KEY, METRICS_KEY

ROUNDS = 3
OFFSET = 2
"""Federation rounds finished before the run (a successor's): rows and checkpoints
are numbered from there."""
WAIT = 10.0
"""Seconds an evaluation waits for the next round's instructions before it gives
up (only ever reached when evaluation blocks the round, which the test refuses)."""


def metrics_rounds(run: Path) -> list[int]:
    with (run / reporting.METRICS_FILE).open(newline="") as stream:
        return [int(row["round"]) for row in csv.DictReader(stream)]


class TrainingGrid:
    """Flower's grid for two nodes that echo the model back, noting when each
    round's training instructions go out and what the aggregator's folder holds
    at that moment."""

    def __init__(self, events: list[str], store: CheckpointStore, run: Path) -> None:
        self.events = events
        self.store, self.run = store, run
        self.sent = {r: threading.Event() for r in range(1, ROUNDS + 1)}
        self.held_at_send: dict[int, tuple[list[int], list[int]]] = {}

    def get_node_ids(self) -> list[int]:
        return [1, 2]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        batch = list(messages)
        if not batch:  # no client-side evaluation round
            return []
        server_round = int(batch[0].content["config"]["server-round"])  # type: ignore[arg-type]
        self.held_at_send[server_round] = (
            self.store.rounds(),
            metrics_rounds(self.run),
        )
        self.events.append(f"round {server_round} sent")
        self.sent[server_round].set()
        return [
            Message(
                RecordDict(
                    {
                        ARRAYS_KEY: m.content[ARRAYS_KEY],
                        METRICS_KEY: MetricRecord({"num-examples": 10}),
                    }
                ),
                reply_to=m,
            )
            for m in batch
        ]


def test_evaluation_runs_while_the_next_round_trains(tmp_path: Path) -> None:
    events: list[str] = []
    run = tmp_path / "run"
    store = CheckpointStore(tmp_path / "checkpoints")
    reporter = RunReporter(
        run, OFFSET + ROUNDS, show_progress=False, plot=False, resume_round=OFFSET
    )
    grid = TrainingGrid(events, store, run)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        # Round r's evaluation ends only once round r + 1's instructions are out:
        # an evaluation on the round's path would wait here in vain.
        if server_round < ROUNDS:
            grid.sent[server_round + 1].wait(WAIT)
        events.append(f"evaluated {server_round}")
        return MetricRecord({"accuracy": server_round / 10, "loss": 1.0})

    model = {"w": np.arange(4, dtype=np.float32)}
    with reporter, ConcurrentEvaluation(evaluate, store, OFFSET, reporter) as ev:
        FedAvg(fraction_evaluate=0.0).start(
            grid=grid,  # type: ignore[arg-type]
            initial_arrays=arrays_to_record(model),
            num_rounds=ROUNDS,
            evaluate_fn=ev,
        )
    assert events == [
        "round 1 sent",
        "evaluated 0",
        "round 2 sent",
        "evaluated 1",
        "round 3 sent",
        "evaluated 2",
        "evaluated 3",  # awaited before the run ends
    ]
    # When round r + 1 goes out, checkpoint r is on disk (a successor resumes from
    # it) and so is every row before r (pushed to the standbys with it).
    for r in range(1, ROUNDS):
        checkpoints, rows = grid.held_at_send[r + 1]
        assert checkpoints[-1] == OFFSET + r
        assert rows == list(range(OFFSET, OFFSET + r))
    assert metrics_rounds(run) == list(range(OFFSET, OFFSET + ROUNDS + 1))
    with (run / reporting.METRICS_FILE).open(newline="") as stream:
        accuracies = [float(row["accuracy"]) for row in csv.DictReader(stream)]
    assert accuracies == [r / 10 for r in range(ROUNDS + 1)]
    summary = reporting.json.loads((run / reporting.SUMMARY_FILE).read_text())
    assert summary["rounds_completed"] == OFFSET + ROUNDS


def test_a_failed_evaluation_fails_the_run(tmp_path: Path) -> None:
    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        raise ValueError(f"cannot score round {server_round}")

    store = CheckpointStore(tmp_path)
    evaluation = ConcurrentEvaluation(evaluate, store, 0)
    with pytest.raises(ValueError, match="round 1"), evaluation as ev:
        ev(1, arrays_to_record({"w": np.zeros(2, dtype=np.float32)}))
    assert store.rounds() == [1]  # the checkpoint was written all the same


class Clock:
    """``time.perf_counter`` and ``time.time`` that move only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_successor_continues_the_run_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(reporting.time, "perf_counter", clock)
    monkeypatch.setattr(reporting.time, "time", clock)
    run = tmp_path / "run"
    quiet = Console(file=open(tmp_path / "console.txt", "w"))  # noqa: SIM115
    first = RunReporter(run, 3, plot=False, console=quiet, clock=True)
    with first:
        first.round_done(0, 0.1, 2.0)
        clock.now += 40.0  # round 1 trains
        facts = first.close_round(1)  # its model exists; then the holder dies
    assert facts.seconds == 40.0
    assert CLOCK_FILE in RESULT_FILES  # the clock travels with the rows
    clock.now += 15.0  # the failover
    successor = RunReporter(run, 3, plot=False, console=quiet, resume_round=1)
    with successor:
        successor.round_done(1, 0.2, 1.5)
    quiet.file.close()
    with (run / reporting.METRICS_FILE).open(newline="") as stream:
        seconds = [float(row["seconds"]) for row in csv.DictReader(stream)]
    assert seconds == [0.0, 55.0]  # not 0.0 again: the victim's 40 s + the gap


def test_a_successor_after_the_last_round_delivers_the_final_model(
    tmp_path: Path,
) -> None:
    resolved = resolve_genesis(
        {
            "rounds": 2,
            "clients": 2,
            "dataset": "digits",
            "output": {"progress": False, "plot": False},
        }
    )
    store = CheckpointStore(tmp_path / "checkpoints")
    final = Checkpoint(2, initial_checkpoint(RunSettings.from_config(resolved)).arrays)
    store.save(final)
    start_file = tmp_path / "start.json"
    write_start(start_file, 2)  # released at the last round
    run_config = peer_run_config(
        resolved,
        "fe" * 32,
        None,
        store.directory,
        tmp_path / "run",
        start_file=start_file,
    )
    sent: list[Message] = []

    class Grid:
        def get_node_ids(self) -> list[int]:
            return [11, 12]

        def push_messages(self, messages: Iterable[Message]) -> list[str]:
            sent.extend(messages)
            return [f"m{i}" for i in range(len(sent))]

        def pull_messages(self, ids: Iterable[str]) -> list[Any]:
            return [Reply(i) for i in ids]

    class Reply:
        def __init__(self, message_id: str) -> None:
            self.metadata = type("Metadata", (), {"reply_to_message_id": message_id})

        def has_error(self) -> bool:
            return False

    scalars = {
        k: v for k, v in run_config.items() if isinstance(v, bool | float | int | str)
    }
    assert scalars == run_config  # what Flower's run config holds
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=scalars
    )
    run_peer_server(Grid(), context)  # type: ignore[arg-type]
    assert sorted(m.metadata.dst_node_id for m in sent) == [11, 12]
    for message in sent:
        assert message.metadata.message_type == MessageType.QUERY
        config = message.content["config"]  # its round, and the model itself
        assert isinstance(config, ConfigRecord) and config["server-round"] == 2
        arrays = record_to_arrays(message.content[ARRAYS_KEY])  # type: ignore[arg-type]
        assert Checkpoint(2, arrays).sha256 == final.sha256
    summary = reporting.json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert metrics_rounds(tmp_path / "run") == [2]
