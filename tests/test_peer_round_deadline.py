"""Rounds end at their deadline and sampling follows who is connected, with Flower's
grid replaced by a recorder on a fake clock."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from flp2p.peer.round_deadline import (
    DEADLINE_FLOOR_SECONDS,
    FIRST_ROUND_SECONDS,
    DeadlineGrid,
    RoundDeadline,
    deadline_run_config,
    peer_sampling,
)


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeGrid:
    """Answers ``answering`` of the messages after ``took`` seconds; nodes connect
    as ``connected`` says at each call."""

    clock: Clock
    connected: list[list[int]]
    took: float = 10.0
    answering: int | None = None
    timeouts: list[float | None] = field(default_factory=list)
    run: str = "passed through"

    def get_node_ids(self) -> list[int]:
        return self.connected.pop(0) if len(self.connected) > 1 else self.connected[0]

    def send_and_receive(
        self, messages: Iterable[Any], *, timeout: float | None = None
    ) -> list[Any]:
        batch = list(messages)
        self.timeouts.append(timeout)
        if self.answering is None:
            self.clock.now += self.took
            return batch
        assert timeout is not None
        self.clock.now += timeout  # the missing replies never come: wait it out
        return batch[: self.answering]


def messages(count: int, kind: str = "train") -> list[Any]:
    return [SimpleNamespace(metadata=SimpleNamespace(message_type=kind))] * count


def grid_on(fake: FakeGrid, deadline: RoundDeadline | None = None) -> DeadlineGrid:
    return DeadlineGrid(
        fake, deadline or RoundDeadline(), expected_nodes=4, join_grace=60.0,
        clock=fake.clock, sleep=fake.clock.sleep, poll=1.0,
    )  # fmt: skip


def test_deadline_is_three_medians_of_complete_rounds_at_least_the_floor() -> None:
    deadline = RoundDeadline()
    assert deadline.seconds("train") == FIRST_ROUND_SECONDS
    for seconds in (20.0, 26.0, 90.0):
        deadline.record("train", seconds)
    assert deadline.seconds("train") == 3 * 26.0
    assert deadline.seconds("evaluate") == FIRST_ROUND_SECONDS  # per message type
    deadline.record("evaluate", 1.0)
    assert deadline.seconds("evaluate") == DEADLINE_FLOOR_SECONDS
    assert (
        RoundDeadline.from_run_config({"peer.round-deadline": 45}).seconds("train")
        == 45.0
    )
    with pytest.raises(ValueError, match="must be positive"):
        RoundDeadline.from_run_config({"peer.round-deadline": 0})


def test_a_round_missing_a_reply_ends_at_its_deadline_and_is_not_learned() -> None:
    clock = Clock()
    fake = FakeGrid(clock, [[1, 2, 3, 4]], took=20.0)
    grid = grid_on(fake)
    assert len(list(grid.send_and_receive(messages(4)))) == 4  # round 1: 20 s
    assert len(list(grid.send_and_receive(messages(4)))) == 4  # round 2: 20 s
    fake.answering = 3  # a participant was killed mid-round
    started = clock.now
    replies = list(grid.send_and_receive(messages(4), timeout=3600))
    assert len(replies) == 3
    # Flower's 3600 s became the deadline: 3 × the median of 20 s.
    assert fake.timeouts[-1] == 60.0 and clock.now - started == 60.0
    assert grid.deadline.durations["train"] == [20.0, 20.0]
    assert grid.run == "passed through"  # everything else is Flower's grid


def test_first_sampling_waits_for_everyone_up_to_the_grace_later_ones_never() -> None:
    clock = Clock()
    fake = FakeGrid(clock, [[1], [1, 2], [1, 2, 3], [1, 2, 3, 4]])
    grid = grid_on(fake)
    assert list(grid.get_node_ids()) == [1, 2, 3, 4] and clock.now == 3.0
    grid.send_and_receive(messages(4))
    fake.connected = [[1, 2, 4]]  # node 3 died
    before = clock.now
    assert list(grid.get_node_ids()) == [1, 2, 4] and clock.now == before


def test_first_sampling_starts_without_a_participant_that_never_comes() -> None:
    clock = Clock()
    # Node 3 comes at 2 s, then nobody: 10 s of settling after it.
    grid = grid_on(FakeGrid(clock, [[1, 2], [1, 2], [1, 2, 3]]))
    assert list(grid.get_node_ids()) == [1, 2, 3]
    assert clock.now == 12.0
    clock = Clock()
    grid = grid_on(FakeGrid(clock, [[]]))  # nobody at all: the whole grace
    assert list(grid.get_node_ids()) == []
    assert clock.now == 60.0


def test_sampling_minimum_follows_the_run_config() -> None:
    assert peer_sampling({}) == {"min_available_nodes": 1, "min_train_nodes": 1}
    assert peer_sampling({"peer.round-min-nodes": 2})["min_train_nodes"] == 2
    with pytest.raises(ValueError, match="1 or more"):
        peer_sampling({"peer.round-min-nodes": 0})


def test_strategy_samples_only_connected_nodes_without_waiting() -> None:
    """Flower's own sampler, with the peer minimum: 3 of 4 connected is enough."""
    from flwr.serverapp.strategy.strategy_utils import sample_nodes

    clock = Clock()
    grid = grid_on(FakeGrid(clock, [[1, 2, 3, 4]]))
    grid.send_and_receive(messages(4))
    grid._grid.connected = [[1, 2, 4]]
    floor = peer_sampling({})["min_available_nodes"]
    sampled, connected = sample_nodes(grid, floor, 3)  # type: ignore[arg-type]
    assert sorted(sampled) == [1, 2, 4] and sorted(connected) == [1, 2, 4]


def test_the_founders_genesis_sets_the_deadline_and_minimum_of_every_run(
    tmp_path: Path,
) -> None:
    """``--param peer.round-deadline=45`` in the genesis reaches each submitted
    run's config, so every aggregator (a successor too) applies it."""
    from flp2p.peer.aggregator import peer_run_config
    from flp2p.peer.federation_app import resolve_genesis

    resolved = resolve_genesis(
        {"rounds": 2, "dataset": "digits", "peer.round-deadline": 45}
    )
    config = peer_run_config(resolved, "fe" * 32, 0, tmp_path, tmp_path)
    assert RoundDeadline.from_run_config(config).seconds("train") == 45.0
    assert peer_sampling(config)["min_train_nodes"] == 1  # not set: the default
    nested = resolve_genesis({"rounds": 2, "peer": {"round-min-nodes": 2}})
    assert deadline_run_config(nested) == {"peer.round-min-nodes": 2}
    assert (
        peer_sampling(peer_run_config(nested, "fe" * 32, 0, tmp_path, tmp_path))[
            "min_train_nodes"
        ]
        == 2
    )


def test_a_genesis_with_a_bad_deadline_is_refused_by_name() -> None:
    from flp2p.config import ConfigError
    from flp2p.peer.federation_app import resolve_genesis

    with pytest.raises(ConfigError, match=r"peer\.round-deadline must be positive"):
        resolve_genesis({"rounds": 2, "peer.round-deadline": 0})
