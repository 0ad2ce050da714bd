"""The peer runtime behind ``python -m flp2p.client``: join, follow, stand by, hold.

:mod:`flp2p.peer.participant` checks the command line with the standard library
only; this module does the work and brings in Flower and PyTorch.

A participant's SuperNode follows the aggregator lease. An aggregator-eligible peer
also receives model copies, keeps a SuperLink warm when it is next in line, and
takes the lease when the deterministic election names it. It judges the holder gone
only from what the network shows: the lease lapsing, or the SuperLink address the
lease *advertises* refusing connections — never a service on its own loopback.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sys
import time

from flp2p.config import ConfigError, RunSettings
from flp2p.dht import AddressBook, Genesis, Lease, NodeRecord, SignedRecord
from flp2p.identity import Identity
from flp2p.peer.addresses import join_host_port
from flp2p.peer.aggregator import AGGREGATOR_ROLE, AggregatorError, AggregatorRole
from flp2p.peer.aggregator import total_rounds as genesis_rounds
from flp2p.peer.auditor import (
    BYZANTINE_AUDITOR_ENV,
    auditor_strategy_factory,
    committee_auditor,
)
from flp2p.peer.checkpoints import (
    FINAL_MODEL_FILE,
    Checkpoint,
    CheckpointStore,
    final_model_sha256,
    resume_round,
)
from flp2p.peer.complaints import omission_auditor, pending_complaints, send_complaints
from flp2p.peer.election import elect_successor
from flp2p.peer.federation_app import (
    AGGREGATORS_NODE_KEY,
    FEDERATION_NODE_KEY,
    IDENTITY_NODE_KEY,
    LEDGER_NODE_KEY,
    RESIDUAL_NODE_KEY,
    WORK_DIR_NODE_KEY,
    join_ids,
    resolve_genesis,
)
from flp2p.peer.leases import LeaseWatch, probe_superlink
from flp2p.peer.peer_options import PeerError, PeerOptions
from flp2p.peer.prepared_data import prepare_partition
from flp2p.peer.revocation_watch import lease_revocation
from flp2p.peer.round_audit import committee_size
from flp2p.peer.standby_sync import CheckpointReceiver
from flp2p.peer.status_line import (
    AGGREGATOR,
    PARTICIPANT,
    STANDBY,
    PeerStanding,
    PeerStatus,
    StatusLine,
    standing_in,
)
from flp2p.peer.supernode import InsecureLeaseRefused, SuperNodeFollower
from flp2p.peer.tls import FingerprintMismatch

log = logging.getLogger("flp2p.client")

LEDGER_FILE = "ledger.db"
"""This peer's copy of the federation's ledger, in ``--work-dir``: blocks it received
as a participant or standby, and those it signs while it aggregates."""
RESIDUAL_FILE = "compression-residual.npy"
"""This participant's error-feedback residual, in ``--work-dir`` (``compression``
codecs with error feedback; see :func:`flp2p.client_mods.compression_mod`)."""

FINISH_GRACE_SECONDS = 5.0
"""How long a finished aggregator keeps its lease so every client sees the end."""
UNREACHABLE_REPORT_SECONDS = 5.0
"""How long a lease's SuperLink may stay out of reach before the participant says so,
counted from the first attempt (the holder publishes its lease once the SuperLink
listens; a TLS dial gives up after 5 s, so even an address that swallows packets is
reported within about 10 s)."""
REPROBE_SECONDS = 0.3
"""Pause between two probes of a SuperLink that refused a connection."""
RENEWAL_POLL_SECONDS = 1.0
"""Pause between two lookups of an earlier node record of this identity."""
RENEWAL_WAIT_CAP_SECONDS = 30.0
"""Longest wait for such a record's renewal (its lifetime is ``--record-ttl``, 9 s
unless changed; a live process renews it every third of that)."""
FINAL_MODEL_WAIT_SECONDS = 300.0
"""How long a participant keeps its SuperNode, once the lease names the last round,
for the final model and block (the ServerApp sends them after the last round), and
a standby its receiver for the finished run folder."""


def dht_address(book: AddressBook, options: PeerOptions) -> str:
    """``HOST:PORT`` other peers may ``--bootstrap`` from: this peer's DHT node."""
    return join_host_port(options.advertise, options.advertise_port or book.address[1])


async def join(book: AddressBook, options: PeerOptions) -> Genesis:
    """Start the DHT node, bootstrap, fetch the federation's genesis and make sure
    no other live process already takes part under this identity.

    Raises
    ------
    PeerError
        If the DHT port cannot be bound, no bootstrap peer answers, no genesis has
        the federation id, or this identity is live at another address.
    """
    try:
        await book.start(*options.listen)
    except OSError as error:  # taken since the command line checked it
        listen = join_host_port(*options.listen)
        raise PeerError(
            f"cannot bind the DHT port {listen} (UDP): {error.strerror or error}; "
            "give another --listen port (0: any free one)"
        ) from None
    try:
        await book.bootstrap(options.bootstrap)
    except ConnectionError:
        peers = ", ".join(join_host_port(h, p) for h, p in options.bootstrap)
        raise PeerError(f"no bootstrap peer reachable at {peers}") from None
    for _ in range(3):  # a fresh DHT may need a moment to route to the genesis
        genesis = await book.get_genesis(options.federation)
        if genesis is not None:
            await refuse_duplicate(book, options)
            print(joined_line(book, options), file=sys.stderr, flush=True)
            return genesis
        await asyncio.sleep(options.poll_interval)
    raise PeerError(
        f"unknown federation {options.federation[:16]}…: "
        "no genesis with that id in the DHT"
    )


def joined_line(book: AddressBook, options: PeerOptions) -> str:
    """What a peer prints once it joined: where others may ``--bootstrap`` from
    (after the founder stops, this is how they get in) — or, for a client-only
    participant, that nobody can (it answers no requests)."""
    if book.client_only:
        return (
            "DHT client-only node (outbound UDP only, in nobody's routing table): "
            "others join through the founder or an aggregator-eligible peer"
        )
    address = dht_address(book, options)
    return f"DHT node at {address} (UDP): others may join with --bootstrap {address}"


async def refuse_duplicate(book: AddressBook, options: PeerOptions) -> None:
    """Refuse to take part if another live process publishes this identity.

    Two processes with one key sign replies the strategy cannot tell apart; it
    rejects the second as a duplicate identity, and which one comes second is
    chance, so the honest process may get no weight at all. A node record of this
    identity is only in the way while its process lives — an eligible peer's
    checkpoint port answers, a participant keeps renewing the record: a crashed
    earlier run leaves one behind for up to a record TTL, and that one must not
    block a restart.

    Raises
    ------
    PeerError
        If a record of this identity names another address and its process lives.
    """
    me = book.identity.node_id
    signed = await book.server.get_record(NodeRecord.KIND, me)
    if signed is None:
        return
    record = NodeRecord.from_payload(signed.payload)
    if record.address == dht_address(book, options):
        return
    if AGGREGATOR_ROLE in record.roles:  # the checkpoint receiver's TCP port
        live = await probe_superlink(record.address, timeout=2.0) is True
    else:  # a client-only participant answers nothing: is it still renewing?
        live = await _renewed_before_expiry(book, signed)
    if live:
        raise PeerError(
            f"identity {me[:16]}… already takes part in this federation from "
            f"{record.address}: stop that process, or give this one its own "
            "--identity (a new key file path creates a new identity)"
        )


async def _renewed_before_expiry(book: AddressBook, signed: SignedRecord) -> bool:
    """Whether a newer version of ``signed`` appears before it expires.

    A client-only participant cannot be asked whether it runs (it is out of reach
    by design), but a live one republishes its node record every third of its
    lifetime at most, and a dead one never does; so a restart right after a crash
    waits out what is left of the old record's lifetime (at most
    :data:`RENEWAL_WAIT_CAP_SECONDS`), one lookup per second.
    """
    deadline = min(signed.expires_at, book.clock() + RENEWAL_WAIT_CAP_SECONDS)
    wait = deadline - book.clock()
    log.info("an earlier record of this identity: up to %.0f s for a renewal", wait)
    while book.clock() < deadline:
        await asyncio.sleep(min(RENEWAL_POLL_SECONDS, deadline - book.clock()))
        newest = await book.server.get_record(signed.kind, signed.subject)
        if newest is not None and newest.seq > signed.seq:
            return True
    return False


def peers_seen(book: AddressBook) -> int:
    """DHT contacts in this peer's routing table (as :meth:`AddressBook.bootstrap`
    counts them)."""
    return sum(len(bucket) for bucket in book.server.protocol.router.buckets)


def initial_checkpoint(settings: RunSettings) -> Checkpoint:
    """Round 0: the seed's initial model, which every peer can compute itself."""
    from flp2p.app import initial_model
    from flp2p.models import get_weights

    return Checkpoint(0, get_weights(initial_model(settings)))


class Peer:
    """One participant: SuperNode follower and/or standby and holder of the lease."""

    def __init__(
        self, options: PeerOptions, book: AddressBook, genesis: Genesis
    ) -> None:
        self.options = options
        self.book = book
        self.genesis = genesis
        self.me = book.identity.node_id
        self.rounds = genesis_rounds(genesis)
        self.watch = LeaseWatch(book, genesis.federation_id)
        self.store = CheckpointStore(options.work_dir / "checkpoints")
        self.advertised: dict[int, str] = {}
        self.last_lease: Lease | None = None
        self.failed: set[str] = set()
        self.unreachable_since: dict[str, float] = {}
        """SuperLink address → when it first failed to answer (cleared on success)."""
        self.reported: set[str] = set()
        self.revoked: set[str] = set()
        """Holders whose lease their round's committee revoked (never elected
        again; issue 15)."""
        self.committee_size = 0
        self.receiver: CheckpointReceiver | None = None
        self.aggregator: AggregatorRole | None = None
        self.follower: SuperNodeFollower | None = None
        self.ledger = (options.work_dir / LEDGER_FILE).resolve()
        self.final_model = (options.work_dir / FINAL_MODEL_FILE).resolve()
        self.last_round_seen: float | None = None
        """When the lease first named the last round (the final model's wait)."""
        self.status_line = StatusLine() if options.status_line else None
        self._standing: tuple[int | None, PeerStanding | None] = (None, None)
        if options.partition_id is not None:
            node_config: dict[str, int | str] = {
                "partition-id": options.partition_id,
                "num-partitions": int(options.num_partitions or 0),
                # The ClientApp signs with this peer's key, read from the file: the
                # key itself never passes through Flower.
                IDENTITY_NODE_KEY: str(options.identity.resolve()),
                FEDERATION_NODE_KEY: genesis.federation_id,
                AGGREGATORS_NODE_KEY: join_ids(genesis.eligible),
                LEDGER_NODE_KEY: str(self.ledger),
                WORK_DIR_NODE_KEY: str(options.work_dir.resolve()),
                RESIDUAL_NODE_KEY: str((options.work_dir / RESIDUAL_FILE).resolve()),
            }
            if options.data_dir:
                node_config["data-dir"] = options.data_dir
            self.follower = SuperNodeFollower(
                options.work_dir,
                node_config,
                allow_insecure=options.insecure,
                prepare=functools.partial(
                    prepare_partition,
                    genesis.parameters,
                    options.work_dir,
                    options.partition_id,
                    int(options.num_partitions or 0),
                    options.data_dir,
                ),
            )

    async def announce(self) -> None:
        """Publish this peer's node record (and open the checkpoint receiver)."""
        if self.options.aggregator_eligible:
            if self.me not in self.genesis.eligible:
                raise PeerError(
                    f"this peer ({self.me[:16]}…) is not aggregator-eligible in the "
                    "federation's genesis"
                )
            try:
                resolved = resolve_genesis(self.genesis.parameters)
            except ConfigError as error:
                raise PeerError(f"the federation's genesis: {error}") from None
            self.aggregator = AggregatorRole(
                self.book,
                self.genesis,
                resolved,
                self.store,
                self.options.work_dir / "aggregator",
                use_tls=not self.options.insecure,
                identity_key=self.options.identity,
                ledger=self.ledger,
                bind_host=self.options.listen[0],
                advertise_host=self.options.advertise,
                superlink_port=self.options.superlink_port,
            )
            start = initial_checkpoint(RunSettings.from_config(resolved))
            self.store.save(start)
            self.advertised[0] = start.sha256
            eligible = frozenset(self.genesis.eligible)
            federation = self.genesis.federation_id
            try:
                self.committee_size = committee_size(resolved)
            except ValueError as error:
                raise PeerError(f"the federation's genesis: {error}") from None
            self.receiver = CheckpointReceiver(
                self.store,
                federation,
                eligible.__contains__,
                ledger=self.ledger,
                block_signers=eligible,
                auditor=committee_auditor(
                    self.book.identity,
                    federation,
                    self.store,
                    self.ledger,
                    auditor_strategy_factory(
                        RunSettings.from_config(resolved), federation
                    ),
                    accuse=self.book.publish,
                    lie=os.environ.get(BYZANTINE_AUDITOR_ENV) or None,
                ),
                committee_size=self.committee_size,
                complaints=omission_auditor(
                    self.book.identity,
                    federation,
                    self.ledger,
                    self.book.validator,
                    self.committee_size,
                    self.book.publish,
                ),
                results_dir=self.aggregator.run_dir,
            )
            bound = await self.receiver.start(
                self.options.listen[0], self.options.sync_port
            )
            port = int(bound.rpartition(":")[2])
            address = join_host_port(self.options.advertise, port)
            roles: tuple[str, ...] = (AGGREGATOR_ROLE,)
        else:
            port = self.options.advertise_port or self.book.address[1]
            address, roles = join_host_port(self.options.advertise, port), ()
        if self.follower is not None:
            roles = (*roles, "client")
        await self.book.publish(NodeRecord(self.me, address, roles))

    async def run(self) -> str:
        """Take part until the federation's last round; return a summary line."""
        await self.announce()
        started = time.monotonic()
        lapsed_since: float | None = None
        while True:
            lease = await self.watch.current()
            now = time.monotonic()
            if (
                lease is not None
                and self.last_lease is not None
                and lease.epoch < self.last_lease.epoch
            ):
                # A peer that missed the successor's lease can still serve the dead
                # holder's for the rest of its TTL: never step back an epoch.
                await asyncio.sleep(self.options.poll_interval)
                continue
            if lease is not None:
                self.last_lease, lapsed_since = lease, None
                self.advertised[lease.last_round] = lease.model_sha256
                if (
                    lease.last_round >= self.rounds
                    and not self._holding()
                    and not self._awaiting_the_end(lease)
                ):
                    return self._finished(lease)
            elif self.last_lease is not None and lapsed_since is None:
                lapsed_since = now
                log.info("lease epoch %d lapsed", self.last_lease.epoch)
            if self._holding():
                done = await self._hold(lease)
                if done is not None:
                    return done
            elif lease is None and now - started >= self.options.settle_seconds:
                lapsed = now - (now if lapsed_since is None else lapsed_since)
                if await self._holder_gone(lapsed):
                    await self._maybe_take_over()
            elif lease is not None and lease.holder != self.me:
                if await self._lease_revoked(lease):
                    await self._maybe_take_over()
                elif await self._superlink_refuses(lease):
                    log.info(
                        "lease epoch %d: its SuperLink refuses connections",
                        lease.epoch,
                    )
                    await self._maybe_take_over()
                else:
                    await self._keep_warm_if_next(lease)
            if (
                lease is not None
                and self.follower
                and lease.holder != self.me
                and not self._holding()
            ):
                await self._follow(lease)
            if self.follower is not None and pending_complaints(self.options.work_dir):
                await send_complaints(
                    self.book,
                    self.options.work_dir,
                    self.genesis.federation_id,
                    list((await self._eligible_addresses()).values()),
                )
            self._show_status()
            if lease is None and not self._holding():
                started_waiting = started if lapsed_since is None else lapsed_since
                if now - started_waiting > self.options.lease_timeout:
                    raise PeerError(self._no_lease_reason())
            await asyncio.sleep(self.options.poll_interval)

    def status(self) -> PeerStatus:
        """Where this peer and its federation stand (the status line's content)."""
        if self._holding():
            role = AGGREGATOR
        elif self.aggregator is not None:
            role = STANDBY if self.follower is None else f"{PARTICIPANT}, {STANDBY}"
        else:
            role = PARTICIPANT
        last_round = None if self.last_lease is None else self.last_lease.last_round
        if self._standing[0] != last_round:  # the ledger changes once a round
            self._standing = (last_round, standing_in(self.ledger, self.me))
        return PeerStatus(
            federation=self.genesis.federation_id,
            role=role,
            last_round=last_round,
            rounds=self.rounds,
            peers_seen=peers_seen(self.book),
            standing=self._standing[1],
        )

    def _show_status(self) -> None:
        if self.status_line is not None:
            self.status_line.show(self.status())

    async def _superlink_refuses(self, lease: Lease) -> bool:
        """Whether ``lease``'s SuperLink refuses connections, so its holder is dead
        (asked by eligible peers only: they take over).

        A lease stays valid for up to its TTL after its holder died; a refused
        connection to the SuperLink it names says so at once. The holder starts its
        SuperLink before it publishes the lease and exits when the SuperLink does,
        so nothing listening there means no holder.
        """
        if self.aggregator is None:
            return False
        for attempt in range(self.options.refusals_to_fail):
            if attempt:
                await asyncio.sleep(REPROBE_SECONDS)
            if await probe_superlink(lease.superlink_address) is not False:
                return False
        return True

    async def _lease_revoked(self, lease: Lease) -> bool:
        """Whether ``lease``'s holder lost it to its committee's accusations in the
        round it is running (asked by eligible peers; issue 15)."""
        if self.aggregator is None or self.committee_size == 0:
            return False
        if lease.holder in self.revoked:
            return True
        verdict = await lease_revocation(
            self.book, self.ledger, lease, self.committee_size
        )
        if verdict is None or not verdict.revoked:
            return False
        log.warning(
            "lease epoch %d of %s…: %s", lease.epoch, lease.holder[:12], verdict.reason
        )
        self.revoked.add(lease.holder)
        self.failed.add(lease.holder)
        return True

    async def _holder_gone(self, lapsed: float) -> bool:
        """Whether to elect now that no lease is found.

        A lookup can miss a live lease (a slow peer, a lost datagram); while the
        last holder's SuperLink still accepts connections, wait for the lapse to
        last a whole record TTL before electing a successor.
        """
        if self.last_lease is None or lapsed >= self.options.record_ttl:
            return True
        return await probe_superlink(self.last_lease.superlink_address) is not True

    def _holding(self) -> bool:
        return self.aggregator is not None and self.aggregator.holding is not None

    def _awaiting_the_end(self, lease: Lease) -> bool:
        """Whether this peer still waits, once ``lease`` names the last round, for
        what the holder sends after it (at most :data:`FINAL_MODEL_WAIT_SECONDS`):
        a participant for the final model and block, a standby for the finished
        run folder."""
        model_pending = self.follower is not None and not self._final_model_received(
            lease
        )
        folder_pending = self.aggregator is not None and not self.aggregator.run_ended()
        if not (model_pending or folder_pending):
            return False
        now = time.monotonic()
        if self.last_round_seen is None:
            self.last_round_seen = now
        if now - self.last_round_seen < FINAL_MODEL_WAIT_SECONDS:
            return True
        log.warning(
            "the %s did not arrive within %.0f s",
            "final model" if model_pending else "finished run folder",
            FINAL_MODEL_WAIT_SECONDS,
        )
        return False

    def _final_model_received(self, lease: Lease) -> bool:
        return final_model_sha256(self.final_model.parent) == lease.model_sha256

    def _finished(self, lease: Lease) -> str:
        line = (
            f"federation {self.genesis.federation_id[:12]} finished: round "
            f"{lease.last_round}, model {lease.model_sha256[:12]}, lease epoch "
            f"{lease.epoch}"
        )
        if self.follower is None:
            return line
        if self._final_model_received(lease):
            return f"{line}; final model in {self.final_model} (hash matches)"
        return f"{line}; the final model did not arrive"

    def _no_lease_reason(self) -> str:
        timeout = self.options.lease_timeout
        if self.watch.rejections:
            return f"refused the aggregator lease: {self.watch.rejections[-1]}"
        if self.last_lease is not None:
            return (
                f"the aggregator lease lapsed and nobody took over within {timeout:g} s"
            )
        return f"no valid aggregator lease within {timeout:g} s"

    async def _standby_addresses(self) -> list[str]:
        return list((await self._eligible_addresses()).values())

    async def _eligible_addresses(self) -> dict[str, str]:
        """Node id → checkpoint/audit address of the other live eligible peers."""
        others = [n for n in self.genesis.eligible if n != self.me]
        # Concurrent lookups: one that asks a dead contact waits an RPC timeout,
        # and sequential ones would add those waits up.
        records = await asyncio.gather(*(self.book.get_node(n) for n in others))
        return {
            node_id: record.address
            for node_id, record in zip(others, records, strict=True)
            if record is not None and AGGREGATOR_ROLE in record.roles
        }

    def _yields_to(self, rival: Lease) -> bool:
        """Whether this holder gives way to ``rival``, another holder's lease.

        Two standbys that elect at the same time (one whose lease is not visible
        yet when the other looks) both publish the same epoch; both must agree
        which one keeps it, or clients alternate between their SuperLinks.
        """
        assert self.aggregator is not None and self.aggregator.holding is not None
        held = self.aggregator.holding.lease
        if rival.epoch != held.epoch:
            return rival.epoch > held.epoch
        both = (rival.holder, self.me)
        return elect_successor(self.genesis.eligible, both) == rival.holder

    async def _hold(self, lease: Lease | None) -> str | None:
        assert self.aggregator is not None and self.aggregator.holding is not None
        if lease is not None and lease.holder != self.me and self._yields_to(lease):
            # Someone elected while our lease looked lapsed to it, or while ours
            # was not yet visible: the newer epoch wins — for the same epoch, the
            # election's order — and this peer goes back to standing by.
            log.warning(
                "stepping down: %s… holds epoch %d", lease.holder[:12], lease.epoch
            )
            self.aggregator.stop()
            return None
        held = self.aggregator.holding.lease
        if self.committee_size and await self._lease_revoked(held):
            # The round's committee revoked this peer's lease: stand down, and
            # never elect itself again (its peers will not either).
            log.warning("stepping down: lease epoch %d revoked", held.epoch)
            self.aggregator.stop()
            return None
        addresses = await self._eligible_addresses()
        self.aggregator.update_auditors(addresses, self.revoked)
        await self.aggregator.push_chain(list(addresses.values()))
        await self.aggregator.advertise_progress(list(addresses.values()))
        if self.aggregator.finished:
            await self.aggregator.wait_for_run_end(await self._standby_addresses())
            await asyncio.sleep(FINISH_GRACE_SECONDS)
            finished = self.aggregator.holding.lease
            self.aggregator.stop()
            return self._finished(finished)
        if not self.aggregator.superlink_alive():
            raise PeerError("this peer's SuperLink exited; see its log in --work-dir")
        return None

    async def _live_eligible(self) -> list[str]:
        eligible = list(self.genesis.eligible)
        records = await asyncio.gather(*(self.book.get_node(n) for n in eligible))
        return [n for n, r in zip(eligible, records, strict=True) if r is not None]

    async def _keep_warm_if_next(self, lease: Lease) -> None:
        """Start a SuperLink now if this peer would succeed ``lease``'s holder."""
        if self.aggregator is None or self.aggregator.warm is not None:
            return
        live = await self._live_eligible()
        failed = self.failed | {lease.holder}
        if elect_successor(self.genesis.eligible, live, failed) == self.me:
            try:
                await self.aggregator.prepare()
            except AggregatorError as error:  # taking over will try again
                log.warning("could not keep a SuperLink warm: %s", error)

    async def _maybe_take_over(self) -> None:
        if self.aggregator is None:
            return
        if self.last_lease is not None:
            self.failed.add(self.last_lease.holder)
        live = await self._live_eligible()
        winner = elect_successor(self.genesis.eligible, live, self.failed)
        if winner != self.me:
            return
        start = resume_round(self.store.hashes(), self.advertised)
        if start is None:
            raise PeerError("elected aggregator, but no held model matches any lease")
        epoch = 1 if self.last_lease is None else self.last_lease.epoch + 1
        if self.follower is not None:
            self.follower.stop()  # the holder aggregates; it does not also train
        log.info("elected: resuming from round %d as lease epoch %d", start, epoch)
        try:
            addresses = await self._eligible_addresses()
            self.aggregator.update_auditors(addresses, self.revoked)
            await self.aggregator.start_chain(list(addresses.values()), start)
            await self.aggregator.take_over(self.store.load(start), epoch)
        except AggregatorError as error:
            raise PeerError(str(error)) from None

    async def _follow(self, lease: Lease) -> None:
        assert self.follower is not None
        tried_at = time.monotonic()
        try:
            await self.follower.follow(lease)
        except (FingerprintMismatch, InsecureLeaseRefused) as refused:
            raise PeerError(str(refused)) from None
        except OSError as error:  # the SuperLink is not up yet: next poll
            log.info(
                "SuperLink at %s not reachable yet: %s", lease.superlink_address, error
            )
            self._report_unreachable(lease, str(error), tried_at)
        else:
            self.unreachable_since.pop(lease.superlink_address, None)

    def _report_unreachable(self, lease: Lease, error: str, tried_at: float) -> None:
        """Say once, without ``--verbose``, that the lease's SuperLink stays out of
        reach: a holder that advertises an address or port others cannot reach
        (a firewall, a wrong ``--advertise``) shows up here within seconds."""
        address, now = lease.superlink_address, time.monotonic()
        since = self.unreachable_since.setdefault(address, tried_at)
        if now - since >= UNREACHABLE_REPORT_SECONDS and address not in self.reported:
            self.reported.add(address)
            log.warning(
                "the aggregator's SuperLink at %s (lease epoch %d) has not been "
                "reachable from here for %.0f s: %s; its host must accept TCP on "
                "that port",
                address,
                lease.epoch,
                now - since,
                error,
            )

    async def close(self) -> None:
        """Stop every child process and server this peer started."""
        if self.status_line is not None:
            self.status_line.close()
        if self.follower is not None:
            self.follower.close()
        if self.aggregator is not None:
            self.aggregator.stop()
        if self.receiver is not None:
            await self.receiver.stop()


async def run_peer(options: PeerOptions) -> str:
    """Join, take part until the end, clean up; return the summary line."""
    identity = Identity.load_or_create(options.identity)
    # A plain participant joins as a DHT client: it needs outbound traffic only
    # (behind NAT, no open port) and never sits in a routing table where lookups
    # would wait for it. Eligible peers must be reachable anyway: full nodes.
    book = AddressBook(
        identity,
        record_ttl=options.record_ttl,
        rpc_timeout=2.0,
        client_only=not options.aggregator_eligible,
    )
    peer: Peer | None = None
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        genesis = await join(book, options)
        peer = Peer(options, book, genesis)
        return await peer.run()
    finally:
        if peer is not None:
            await peer.close()
        await book.stop()
