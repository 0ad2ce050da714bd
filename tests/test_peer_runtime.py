"""The peer's decisions, with the network and Flower replaced by recorders:
who takes over, from which round, as which epoch, and when a holder steps down."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from flp2p.dht import AddressBook, Genesis, Lease, NodeRecord
from flp2p.identity import Identity
from flp2p.peer.aggregator import Holding, peer_run_config
from flp2p.peer.checkpoints import Checkpoint
from flp2p.peer.federation_app import PeerRun, wait_for_start, write_start
from flp2p.peer.peer_options import PeerError, PeerOptions
from flp2p.peer.processes import free_port
from flp2p.peer.runtime import Peer

ME = Identity.generate()
OTHER = Identity.generate()
FOUNDER = Identity.generate()


@dataclass
class RecordingAggregator:
    """Stands in for :class:`flp2p.peer.aggregator.AggregatorRole`."""

    holding: Holding | None = None
    warm: object | None = None
    prepared: int = 0
    took_over: list[tuple[int, str, int]] = field(default_factory=list)
    stopped: int = 0
    progress_calls: int = 0

    async def take_over(self, resume: Checkpoint, epoch: int) -> None:
        self.took_over.append((resume.server_round, resume.sha256, epoch))

    async def prepare(self) -> None:
        self.prepared += 1
        self.warm = object()

    async def advertise_progress(self, standbys: list[str]) -> None:
        self.progress_calls += 1

    def update_auditors(
        self, addresses: Mapping[str, str], revoked: Iterable[str] = ()
    ) -> None:
        self.auditors = dict(addresses)

    async def start_chain(self, standbys: list[str], last_round: int) -> None:
        self.chain_started = last_round

    async def push_chain(self, standbys: list[str]) -> None:
        pass

    auditors: dict[str, str] = field(default_factory=dict)
    chain_started: int | None = None

    finished = False

    def superlink_alive(self) -> bool:
        return True

    def stop(self) -> None:
        self.stopped += 1
        self.holding = None


def _model(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full(3, value, dtype=np.float32)}


def _lease(genesis: Genesis, holder: Identity, epoch: int, last_round: int) -> Lease:
    return Lease(
        federation_id=genesis.federation_id,
        holder=holder.node_id,
        superlink_address="127.0.0.1:9",
        tls_fingerprint="ab" * 32,
        epoch=epoch,
        last_round=last_round,
        model_sha256=Checkpoint(last_round, _model(last_round)).sha256,
    )


@pytest.fixture
def peer(tmp_path: Path) -> Peer:
    genesis = Genesis(
        founder=FOUNDER.node_id,
        parameters={"rounds": 3},
        eligible=(ME.node_id, OTHER.node_id),
    )
    options = PeerOptions(
        bootstrap=(("127.0.0.1", 1),),
        federation=genesis.federation_id,
        identity=tmp_path / "id.key",
        work_dir=tmp_path,
        aggregator_eligible=True,
    )
    running = Peer(options, AddressBook(ME), genesis)
    running.aggregator = RecordingAggregator()  # type: ignore[assignment]
    return running


def _live(peer: Peer, *alive: Identity) -> None:
    live = {i.node_id for i in alive}

    async def get_node(node_id: str) -> NodeRecord | None:
        return NodeRecord(node_id, "127.0.0.1:1") if node_id in live else None

    peer.book.get_node = get_node  # type: ignore[method-assign]


def _hold_models(peer: Peer, *rounds: int) -> None:
    for r in rounds:
        checkpoint = Checkpoint(r, _model(r))
        peer.store.save(checkpoint)


def test_successor_resumes_from_the_last_advertised_round_as_next_epoch(
    peer: Peer,
) -> None:
    # OTHER (the holder) died after advertising round 2; its record still looks live.
    _live(peer, ME, OTHER)
    _hold_models(peer, 0, 1, 2)
    for r in (0, 1, 2):
        peer.advertised[r] = Checkpoint(r, _model(r)).sha256
    peer.last_lease = _lease(peer.genesis, OTHER, epoch=4, last_round=2)
    asyncio.run(peer._maybe_take_over())
    aggregator = peer.aggregator
    assert isinstance(aggregator, RecordingAggregator)
    assert aggregator.took_over == [(2, Checkpoint(2, _model(2)).sha256, 5)]
    assert OTHER.node_id in peer.failed


def test_a_tampered_newest_model_is_not_resumed_from(peer: Peer) -> None:
    _live(peer, ME)
    _hold_models(peer, 0, 1)
    peer.store.save(Checkpoint(2, _model(99.0)))  # not what the lease vouched for
    for r in (0, 1, 2):
        peer.advertised[r] = Checkpoint(r, _model(r)).sha256
    peer.last_lease = _lease(peer.genesis, OTHER, epoch=1, last_round=2)
    asyncio.run(peer._maybe_take_over())
    aggregator = peer.aggregator
    assert isinstance(aggregator, RecordingAggregator)
    assert [(r, e) for r, _, e in aggregator.took_over] == [(1, 2)]


def test_only_the_elected_peer_takes_over(peer: Peer) -> None:
    _live(peer, ME, OTHER)
    _hold_models(peer, 0)
    peer.advertised[0] = Checkpoint(0, _model(0)).sha256
    asyncio.run(peer._maybe_take_over())  # no lease yet: nobody failed
    aggregator = peer.aggregator
    assert isinstance(aggregator, RecordingAggregator)
    expected = min(ME.node_id, OTHER.node_id) == ME.node_id
    assert bool(aggregator.took_over) == expected
    if expected:
        assert aggregator.took_over[0][2] == 1  # the first lease is epoch 1


def test_elected_without_any_vouched_model_is_an_error(peer: Peer) -> None:
    _live(peer, ME)
    peer.last_lease = _lease(peer.genesis, OTHER, epoch=1, last_round=1)
    with pytest.raises(PeerError, match="no held model matches"):
        asyncio.run(peer._maybe_take_over())


def _holding(peer: Peer, epoch: int) -> RecordingAggregator:
    aggregator = peer.aggregator
    assert isinstance(aggregator, RecordingAggregator)
    aggregator.holding = Holding(
        superlink=None,
        lease=_lease(peer.genesis, ME, epoch=epoch, last_round=1),
    )
    _live(peer)
    return aggregator


def test_holder_steps_down_for_a_newer_epoch(peer: Peer) -> None:
    aggregator = _holding(peer, epoch=2)
    newer = _lease(peer.genesis, OTHER, epoch=3, last_round=1)
    assert asyncio.run(peer._hold(newer)) is None
    assert aggregator.stopped == 1 and aggregator.progress_calls == 0


def test_holder_keeps_going_against_an_older_epoch(peer: Peer) -> None:
    aggregator = _holding(peer, epoch=2)
    older = _lease(peer.genesis, OTHER, epoch=1, last_round=1)
    assert asyncio.run(peer._hold(older)) is None
    assert aggregator.stopped == 0 and aggregator.progress_calls == 1


def test_two_holders_of_one_epoch_agree_who_keeps_it(peer: Peer) -> None:
    # Both elected before either lease was visible: the election order decides,
    # the same way on both sides.
    first = min(ME.node_id, OTHER.node_id)
    aggregator = _holding(peer, epoch=1)
    rival = _lease(peer.genesis, OTHER, epoch=1, last_round=0)
    assert asyncio.run(peer._hold(rival)) is None
    assert aggregator.stopped == (0 if first == ME.node_id else 1)
    assert aggregator.progress_calls == (1 if first == ME.node_id else 0)


def test_only_the_next_in_line_keeps_a_superlink_warm(peer: Peer) -> None:
    aggregator = peer.aggregator
    assert isinstance(aggregator, RecordingAggregator)
    _live(peer, ME, OTHER)
    # The holder is OTHER: whoever is left after excluding it is next in line (ME).
    asyncio.run(peer._keep_warm_if_next(_lease(peer.genesis, OTHER, 1, 0)))
    asyncio.run(peer._keep_warm_if_next(_lease(peer.genesis, OTHER, 1, 0)))
    assert aggregator.prepared == 1  # once: the warm SuperLink is kept


def test_a_dead_standby_is_not_next_in_line(peer: Peer) -> None:
    aggregator = peer.aggregator
    assert isinstance(aggregator, RecordingAggregator)
    third = Identity.generate()
    peer.genesis = Genesis(
        founder=FOUNDER.node_id,
        parameters={"rounds": 3},
        eligible=(ME.node_id, OTHER.node_id, third.node_id),
    )
    _live(peer, OTHER, third)  # this peer's own record has not propagated: not live
    asyncio.run(peer._keep_warm_if_next(_lease(peer.genesis, OTHER, 1, 0)))
    assert aggregator.prepared == 0


def _lease_at(peer: Peer, address: str) -> Lease:
    return dataclasses.replace(
        _lease(peer.genesis, OTHER, epoch=1, last_round=0), superlink_address=address
    )


async def _with_listener(check: Callable[[str], Awaitable[bool]]) -> bool:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    try:
        return await check(f"{host}:{port}")
    finally:
        server.close()
        await server.wait_closed()


def test_a_superlink_refusing_connections_marks_its_holder_dead(peer: Peer) -> None:
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens there
    assert asyncio.run(peer._superlink_refuses(_lease_at(peer, nobody)))
    listening = asyncio.run(
        _with_listener(lambda a: peer._superlink_refuses(_lease_at(peer, a)))
    )
    assert not listening
    # Only eligible peers probe (they are the ones who would take over).
    peer.aggregator = None
    assert not asyncio.run(peer._superlink_refuses(_lease_at(peer, nobody)))


def test_liveness_is_probed_at_the_advertised_address_not_on_loopback(
    peer: Peer,
) -> None:
    async def probe_both() -> tuple[bool, bool]:
        # The holder's SuperLink listens on its advertised address only; the same
        # port on this peer's 127.0.0.1 refuses (as any other host's loopback would).
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.2", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            peer.last_lease = _lease_at(peer, f"127.0.0.2:{port}")
            refuses = await peer._superlink_refuses(peer.last_lease)
            gone = await peer._holder_gone(0.5)
            return refuses, gone
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(probe_both()) == (False, False)


def test_a_missed_lease_waits_a_ttl_while_the_holder_answers(peer: Peer) -> None:
    ttl = peer.options.record_ttl

    async def gone_after(address: str, lapsed: float) -> bool:
        peer.last_lease = _lease_at(peer, address)
        return await peer._holder_gone(lapsed)

    assert not asyncio.run(_with_listener(lambda a: gone_after(a, 0.5)))
    assert asyncio.run(_with_listener(lambda a: gone_after(a, ttl)))
    assert asyncio.run(gone_after(f"127.0.0.1:{free_port()}", 0.5))


def test_a_parked_run_waits_for_its_release(tmp_path: Path) -> None:
    start = tmp_path / "start.json"
    with pytest.raises(TimeoutError, match="nobody released"):
        wait_for_start(start, timeout=0.2, poll=0.05)
    write_start(start, 3)
    assert wait_for_start(start, timeout=0.2) == 3
    config = peer_run_config(
        {"rounds": 4}, "fe" * 32, None, tmp_path, tmp_path, start_file=start
    )
    parked = PeerRun.from_run_config(config)
    assert parked.start_file == start.resolve() and parked.start_round == -1
    with pytest.raises(ValueError, match="exactly one"):
        peer_run_config(
            {"rounds": 4}, "fe" * 32, 1, tmp_path, tmp_path, start_file=start
        )


class UnreachableFollower:
    """A SuperNode follower whose SuperLink never answers."""

    async def follow(self, lease: Lease) -> bool:
        raise ConnectionRefusedError(111, "Connection refused")


def test_a_superlink_out_of_reach_is_reported_once_within_seconds(
    peer: Peer, caplog: pytest.LogCaptureFixture
) -> None:
    peer.follower = UnreachableFollower()  # type: ignore[assignment]
    lease = _lease_at(peer, "10.77.0.9:9402")
    asyncio.run(peer._follow(lease))  # just started: no report yet
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    peer.unreachable_since[lease.superlink_address] -= 9.0  # 9 s later
    for _ in range(3):
        asyncio.run(peer._follow(lease))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "SuperLink at 10.77.0.9:9402 (lease epoch 1)" in warnings[0]
    assert "must accept TCP on that port" in warnings[0]


class Clock:
    """Monotonic seconds that only move when told (``time`` for the runtime)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class SwallowingFollower:
    """A SuperNode follower whose SuperLink's host drops packets: each attempt
    gives up only after the TLS dial's 5 s timeout."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    async def follow(self, lease: Lease) -> bool:
        self.clock.now += 5.0
        raise TimeoutError("timed out")


def test_a_superlink_that_swallows_packets_is_reported_within_ten_seconds(
    peer: Peer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr("flp2p.peer.runtime.time", clock)
    peer.follower = SwallowingFollower(clock)  # type: ignore[assignment]
    lease = _lease_at(peer, "10.77.0.9:9402")
    started = clock.now
    asyncio.run(peer._follow(lease))  # the first attempt: 5 s, then given up
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and clock.now - started <= 10.0
    assert "not been reachable from here for 5 s: timed out" in warnings[0]
