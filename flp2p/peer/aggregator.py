"""The aggregator role: a SuperLink, the flp2p ServerApp on it, and the lease.

An aggregator-eligible peer takes this role when the deterministic election
(:mod:`flp2p.peer.election`) names it — at the start, when nobody holds the lease, or
after the holder's lease lapsed. It then

1. starts a Flower SuperLink bound to the peer's listen host, with a fresh
   self-signed certificate naming the advertised host (:mod:`flp2p.peer.tls`),
   unless told to run without TLS — or uses the one it kept warm while it was next
   in line (:meth:`AggregatorRole.prepare`);
2. publishes the lease — advertised SuperLink address, certificate fingerprint,
   epoch (one more than the lapsed lease's), last finished round and the hash of
   the model it resumes from — which the address book renews every third of its
   lifetime;
3. runs the peer Flower App (:mod:`flp2p.peer.federation_app`) resuming from that
   round's checkpoint: the run was submitted with ``flwr run`` ahead of need and waits,
   its ServerApp started, until released with the round to resume from;
4. as each round finishes (a new checkpoint appears), pushes the model, the
   ledger blocks up to that round and the run folder's files (``metrics.csv`` …)
   to the other eligible peers (:mod:`flp2p.peer.standby_sync`) and only then
   advertises the round in the lease — so a successor always holds the model the
   last lease names, and the chain up to it, which its own ServerApp extends under
   its own signature, and continues the same ``metrics.csv``;
5. after the last round, keeps its SuperLink until the ServerApp has handed every
   participant the final model and block and written ``summary.json``
   (:meth:`AggregatorRole.wait_for_run_end`); a successor elected after the last
   round (its holder died before that) releases its run at the last round, which
   trains nothing and delivers them again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flp2p.dht import AddressBook, Genesis, Lease
from flp2p.dht.codec import JSONValue
from flp2p.identity import Identity
from flp2p.ledger import Ledger, LedgerError
from flp2p.peer.addresses import LOOPBACK_HOST, join_host_port, local_host
from flp2p.peer.app_folder import write_app
from flp2p.peer.checkpoints import Checkpoint, CheckpointStore
from flp2p.peer.federation_app import (
    AGGREGATORS_KEY,
    CHECKPOINT_DIR_KEY,
    FEDERATION_KEY,
    IDENTITY_KEY_KEY,
    LEDGER_KEY,
    SETTINGS_KEY,
    START_FILE_KEY,
    START_ROUND_KEY,
    join_ids,
    settings_json,
    write_start,
)
from flp2p.peer.processes import (
    ManagedProcess,
    flower_environment,
    flower_executable,
    free_port,
    superlink_command,
    wait_for_port,
)
from flp2p.peer.round_audit import (
    AUDITORS_FILE_KEY,
    BYZANTINE_KEY,
    committee_size,
    lie_from_environment,
    write_auditors,
)
from flp2p.peer.round_deadline import deadline_run_config
from flp2p.peer.standby_sync import (
    push_blocks,
    push_checkpoint,
    push_results,
    run_files,
)
from flp2p.peer.tls import (
    INSECURE_FINGERPRINT,
    TlsFiles,
    make_self_signed_certificate,
)
from flp2p.reporting import SUMMARY_FILE

log = logging.getLogger(__name__)

AGGREGATOR_ROLE = "aggregator-eligible"
"""Role in the node record of a peer that may hold the lease; its address receives
checkpoint pushes."""
SUPERLINK_START_TIMEOUT = 60.0
SUBMIT_TIMEOUT = 180.0
RUN_END_TIMEOUT = 600.0
"""Seconds a holder waits at most, after the last round, for its ServerApp to finish
(the final model's delivery, as long as a round's deadline, then
``summary.json``)."""
RUN_FOLDER = "run"
"""The aggregator's run folder, in its work folder: ``metrics.csv``,
``summary.json``, ``accuracy.png`` (:mod:`flp2p.reporting`)."""


class AggregatorError(RuntimeError):
    """The aggregator could not start its SuperLink or submit the run."""


def total_rounds(genesis: Genesis) -> int:
    """Rounds the federation trains, from the genesis parameters.

    Raises
    ------
    AggregatorError
        If the genesis does not say (a positive integer ``rounds``).
    """
    rounds = genesis.parameters.get("rounds")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise AggregatorError(
            f"the genesis must set a positive 'rounds', got {rounds!r}"
        )
    return rounds


def peer_run_config(
    settings: Mapping[str, Any],
    federation_id: str,
    start_round: int | None,
    checkpoint_dir: Path,
    output_dir: Path,
    identity_key: Path | None = None,
    ledger: Path | None = None,
    aggregators: tuple[str, ...] = (),
    start_file: Path | None = None,
) -> dict[str, JSONValue]:
    """Run config of one submission: the resolved ``settings``
    (:func:`flp2p.peer.federation_app.resolve_genesis`) as one value, plus the
    ``peer.`` keys.

    ``identity_key`` and ``ledger`` are paths on the aggregator's machine (where its
    ServerApp runs); the key itself never enters the run config. A parked run names
    its ``start_file`` instead of a ``start_round``.
    """
    if (start_round is None) == (start_file is None):
        raise ValueError("give exactly one of start_round and start_file")
    config: dict[str, JSONValue] = {
        SETTINGS_KEY: settings_json(settings),
        CHECKPOINT_DIR_KEY: str(checkpoint_dir),
        FEDERATION_KEY: federation_id,
        "output-dir": str(output_dir),
        **deadline_run_config(settings),
    }
    if start_file is None:
        config[START_ROUND_KEY] = start_round
    else:
        config[START_FILE_KEY] = str(start_file.resolve())
    if identity_key is not None and ledger is not None:
        config.update(
            {
                IDENTITY_KEY_KEY: str(identity_key.resolve()),
                LEDGER_KEY: str(ledger.resolve()),
                AGGREGATORS_KEY: join_ids(aggregators),
            }
        )
    return config


def certificate_hosts(advertise_host: str, local: str) -> tuple[str, ...]:
    """Names the SuperLink certificate must carry: the advertised host (clients
    on other hosts) and the local ones (this peer's ``flwr run`` and the
    SuperLink's own SuperExec, which dials loopback when it binds a wildcard)."""
    hosts = (advertise_host, local, LOOPBACK_HOST, "localhost")
    return tuple(dict.fromkeys(hosts))


def cosignatures_up_to(
    ledger_path: Path, federation: str, last_round: int
) -> list[str]:
    """The co-signatures (statements as JSON strings) of the blocks of
    ``ledger_path`` up to federation round ``last_round``."""
    if not ledger_path.exists():
        return []
    try:
        with Ledger.open(ledger_path, federation=federation) as ledger:
            return [
                json.dumps(statement.to_json())
                for block in ledger.blocks()
                if 0 < block.server_round <= last_round
                for statement in ledger.cosignatures(block.height)
            ]
    except LedgerError as error:
        log.warning("cannot read the co-signatures to replicate them: %s", error)
        return []


def blocks_up_to(ledger_path: Path, federation: str, last_round: int) -> list[bytes]:
    """Wire bytes of the blocks of ``ledger_path`` up to federation round
    ``last_round`` (none while the file does not exist yet).

    Blocks of later rounds stay back: a successor resumes from ``last_round`` and
    writes the next round's block itself.
    """
    if not ledger_path.exists():
        return []
    try:
        with Ledger.open(ledger_path, federation=federation) as ledger:
            return [
                block.to_bytes()
                for block in ledger.blocks()
                if block.server_round <= last_round
            ]
    except LedgerError as error:
        log.warning("cannot read the ledger to replicate it: %s", error)
        return []


@dataclass(frozen=True)
class RunningSuperLink:
    """A SuperLink this peer started, where it listens and what it trusts."""

    process: ManagedProcess
    address: str
    """Advertised ``host:port``: what the lease names and other hosts dial."""
    tls: TlsFiles | None
    directory: Path
    local_address: str = ""
    """Where this peer itself reaches it (``flwr run``)."""
    start_file: Path | None = None
    """Release file of the run parked on it, once one was submitted
    (:data:`flp2p.peer.federation_app.START_FILE_KEY`)."""


@dataclass
class Holding:
    """What the current holder runs and last advertised."""

    superlink: RunningSuperLink
    lease: Lease


class AggregatorRole:
    """Holds the lease and runs the federation from this peer.

    Parameters
    ----------
    book
        The peer's address book (publishes and renews the lease).
    genesis
        The federation's genesis (parameters, eligible peers).
    settings
        Its parameters resolved once into the experiment config
        (:func:`flp2p.peer.federation_app.resolve_genesis`), handed to every run.
    store
        This peer's checkpoints; the ServerApp writes new rounds here.
    work_dir
        Folder for certificates, the app, logs and the run folder
        (:attr:`run_dir`, which standbys receive pushes into as well).
    use_tls
        Serve the SuperLink over TLS with a pinned self-signed certificate.
    identity_key, ledger
        The peer's key file and its copy of the ledger; with both, the ServerApp
        signs and extends that chain, and its blocks are pushed to the standbys.
    bind_host, advertise_host
        Where the SuperLink binds (a wildcard is fine) and the host the lease names
        (others dial it; the certificate carries it as a subject-alternative name).
    superlink_port
        TCP port of the SuperLink (0: any free one), for hosts behind a firewall.
    """

    def __init__(
        self,
        book: AddressBook,
        genesis: Genesis,
        settings: Mapping[str, Any],
        store: CheckpointStore,
        work_dir: Path,
        use_tls: bool = True,
        identity_key: Path | None = None,
        ledger: Path | None = None,
        bind_host: str = LOOPBACK_HOST,
        advertise_host: str = LOOPBACK_HOST,
        superlink_port: int = 0,
    ) -> None:
        self.book = book
        self.settings = settings
        self.bind_host = bind_host
        self.advertise_host = advertise_host
        self.superlink_port = superlink_port
        self.genesis = genesis
        self.store = store
        # Absolute: the SuperLink runs in a folder below it and reads its
        # certificate by path.
        self.work_dir = work_dir.resolve()
        self.run_dir = self.work_dir / RUN_FOLDER
        self.use_tls = use_tls
        self.identity_key = identity_key
        self.ledger = ledger
        self.holding: Holding | None = None
        self.warm: RunningSuperLink | None = None
        self.blocks_sent: dict[str, int] = {}
        """Standby address → number of blocks it acknowledged (a prefix of the
        chain: pushes resume after it)."""
        self.auditors_file = self.work_dir / "auditors.json"
        """Where the ServerApp finds its committee's addresses (issue 15)."""
        self.auditor_addresses: dict[str, str] = {}
        self.revoked: tuple[str, ...] = ()
        self.candidates: tuple[int, tuple[str, ...]] | None = None
        """(federation round, node ids): the live eligible peers the committee of
        that round is drawn from, fixed when the round before it is advertised (the
        lease carries them, the block records them)."""
        try:
            self.audited = committee_size(settings) > 0
        except ValueError:  # the runtime refuses such a genesis with its reason
            self.audited = False

    def update_auditors(
        self, addresses: Mapping[str, str], revoked: Iterable[str] = ()
    ) -> None:
        """Tell the ServerApp where the other eligible peers take audit requests
        and which aggregators were revoked (it records their bans)."""
        self.auditor_addresses = dict(addresses)
        self.revoked = tuple(revoked)
        self._write_auditors()

    def _write_auditors(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        write_auditors(
            self.auditors_file, self.auditor_addresses, self.revoked, self.candidates
        )

    async def _fix_candidates(
        self, server_round: int, live: Iterable[str]
    ) -> tuple[str, ...] | None:
        """Fix the committee candidates of ``server_round`` (audited federations):
        the ``live`` eligible peers plus every eligible co-signer of the chain's
        tip, which the block must list (:meth:`Ledger.required_candidates`)."""
        if not self.audited:
            return None
        me = self.book.identity.node_id
        required: tuple[str, ...] = ()
        if self.ledger is not None and self.ledger.exists():
            ledger = self.ledger

            def read() -> tuple[str, ...]:
                with Ledger.open(ledger, federation=self.federation_id) as chain:
                    return chain.required_candidates(me)

            try:
                required = await asyncio.to_thread(read)
            except LedgerError as error:
                log.warning("cannot read the previous block's co-signers: %s", error)
        eligible = set(self.genesis.eligible)
        pool = tuple(sorted((set(live) & eligible | set(required)) - {me}))
        self.candidates = (server_round, pool)
        self._write_auditors()
        return pool

    async def start_chain(self, standbys: list[str], last_round: int) -> None:
        """Make sure the ledger has a genesis and that ``standbys`` hold the chain
        up to ``last_round`` before the first audited round: its committee is drawn
        from the chain's tip, by every peer alike."""
        if self.identity_key is None or self.ledger is None:
            return
        key, ledger = self.identity_key, self.ledger

        def start() -> None:
            ledger.parent.mkdir(parents=True, exist_ok=True)
            with Ledger.open(
                ledger,
                federation=self.federation_id,
                signer=Identity.load(key),
                allowed_signers=self.genesis.eligible,
                create=True,
            ) as chain:
                chain.start_chain()

        await asyncio.to_thread(start)
        await self._push_blocks(standbys, last_round)

    @property
    def federation_id(self) -> str:
        """Id of the federation (hash of the genesis)."""
        return self.genesis.federation_id

    @property
    def finished(self) -> bool:
        """Whether the lease advertises the federation's last round."""
        return (
            self.holding is not None
            and self.holding.lease.last_round >= total_rounds(self.genesis)
        )

    async def prepare(self) -> None:
        """Start a SuperLink and park a run on it ahead of need (the next in line
        keeps one warm).

        Starting a SuperLink, ``flwr run`` and the ServerApp's start-up take many
        seconds on a loaded machine; a standby that would win the next election pays
        them before the holder fails, not after.

        Raises
        ------
        AggregatorError
            If the SuperLink does not come up or ``flwr run`` fails.
        """
        if self.warm is None:
            self.warm = await self._parked_superlink()

    async def _parked_superlink(self) -> RunningSuperLink:
        superlink = await self._start_superlink()
        try:
            return await self._park(superlink)
        except AggregatorError:
            superlink.process.stop()
            raise

    async def _start_superlink(self) -> RunningSuperLink:
        port = self.superlink_port or free_port(self.bind_host)
        directory = self.work_dir / f"superlink-{port}"
        # The SuperLink's own SuperExec and this peer's `flwr run` dial it locally.
        local = local_host(self.bind_host)
        tls = (
            make_self_signed_certificate(
                directory / "tls", certificate_hosts(self.advertise_host, local)
            )
            if self.use_tls
            else None
        )
        process = ManagedProcess(
            superlink_command(
                self.bind_host,
                port,
                None if tls is None else (tls.certificate, tls.private_key),
            ),
            directory / "superlink.log",
            cwd=directory,
        )
        local_address = join_host_port(local, port)
        up = await asyncio.to_thread(
            wait_for_port, local_address, SUPERLINK_START_TIMEOUT
        )
        if not up:
            process.stop()
            raise AggregatorError(f"the SuperLink did not listen on {local_address}")
        return RunningSuperLink(
            process,
            join_host_port(self.advertise_host, port),
            tls,
            directory,
            local_address=local_address,
        )

    async def take_over(self, resume: Checkpoint, epoch: int) -> Lease:
        """Publish lease ``epoch`` for a (warm or new) SuperLink and submit the run.

        Raises
        ------
        AggregatorError
            If the SuperLink does not come up or ``flwr run`` fails.
        """
        warm, self.warm = self.warm, None
        if warm is None or warm.start_file is None or not warm.process.running():
            if warm is not None:
                warm.process.stop()
            warm = await self._parked_superlink()
        superlink = warm
        assert superlink.start_file is not None
        # Released at the last round too: its ServerApp trains nothing then, but
        # delivers the final model and block, which a holder that died right after
        # the last round may not have handed every participant.
        write_start(superlink.start_file, resume.server_round)
        log.info("run released from round %d", resume.server_round)
        lease = Lease(
            federation_id=self.federation_id,
            holder=self.book.identity.node_id,
            superlink_address=superlink.address,
            tls_fingerprint=(
                INSECURE_FINGERPRINT
                if superlink.tls is None
                else superlink.tls.fingerprint
            ),
            epoch=epoch,
            last_round=resume.server_round,
            model_sha256=resume.sha256,
            candidates=await self._fix_candidates(
                resume.server_round + 1, self.auditor_addresses
            ),
        )
        self.holding = Holding(superlink, lease)
        await self.book.publish(lease)
        log.info("holding lease epoch %d at %s", epoch, superlink.address)
        return lease

    async def _park(self, superlink: RunningSuperLink) -> RunningSuperLink:
        """Submit a parked run to ``superlink`` (released by :meth:`take_over`)."""
        start_file = superlink.directory / "start.json"
        config = peer_run_config(
            self.settings,
            self.federation_id,
            None,
            self.store.directory,
            self.run_dir,
            self.identity_key,
            self.ledger,
            self.genesis.eligible,
            start_file=start_file,
        )
        config[AUDITORS_FILE_KEY] = str(self.auditors_file)
        lie = lie_from_environment()
        if lie is not None:
            config[BYZANTINE_KEY] = lie
        tls = superlink.tls
        certificate = None if tls is None else tls.certificate
        app_dir, flwr_home = write_app(
            superlink.directory,
            config,
            superlink.local_address or superlink.address,
            certificate,
        )
        done = await asyncio.to_thread(
            subprocess.run,
            [flower_executable("flwr"), "run", str(app_dir)],
            env=flower_environment({"FLWR_HOME": str(flwr_home)}),
            capture_output=True,
            text=True,
            timeout=SUBMIT_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
            raise AggregatorError(f"flwr run failed: {' / '.join(tail)}")
        log.info("run parked on %s", superlink.address)
        return dataclasses.replace(superlink, start_file=start_file)

    async def advertise_progress(self, standbys: list[str]) -> int | None:
        """Push the newest finished round to ``standbys``, then advertise it.

        Returns
        -------
        int or None
            The round newly advertised, or ``None`` if nothing new finished.
        """
        if self.holding is None:
            return None
        rounds = self.store.rounds()
        newest = rounds[-1] if rounds else -1
        if newest <= self.holding.lease.last_round:
            return None
        checkpoint = self.store.load(newest)
        failures = await asyncio.gather(
            *(
                push_checkpoint(a, self.book.identity, self.federation_id, checkpoint)
                for a in standbys
            )
        )
        for failure in filter(None, failures):
            log.warning("standby did not take round %d: %s", newest, failure)
        took = [a for a, failure in zip(standbys, failures, strict=True) if not failure]
        await self._push_blocks(took, newest)
        await self.push_run_files(took, newest)
        # Live, for the next committee: the eligible peers that just took this
        # round's model and chain, which is what auditing the next round needs.
        by_address = {a: n for n, a in self.auditor_addresses.items()}
        live = [by_address[a] for a in took if a in by_address]
        lease = dataclasses.replace(
            self.holding.lease,
            last_round=newest,
            model_sha256=checkpoint.sha256,
            candidates=await self._fix_candidates(newest + 1, live),
        )
        self.holding.lease = lease
        await self.book.publish(lease)
        return newest

    async def push_chain(self, standbys: list[str]) -> None:
        """Hand standbys that joined since the last round the chain up to it
        (they audit the next round, which continues that chain)."""
        if self.holding is None or all(a in self.blocks_sent for a in standbys):
            return
        await self._push_blocks(standbys, self.holding.lease.last_round)

    async def _push_blocks(self, standbys: list[str], last_round: int) -> None:
        """Hand ``standbys`` the ledger blocks up to ``last_round`` they lack.

        Only standbys that took the round's model get its blocks: a peer never holds
        the block of a round whose model it could not resume from.
        """
        if self.ledger is None or not standbys:
            return
        blocks = await asyncio.to_thread(
            blocks_up_to, self.ledger, self.federation_id, last_round
        )
        if not blocks:
            return
        statements = await asyncio.to_thread(
            cosignatures_up_to, self.ledger, self.federation_id, last_round
        )
        sent = [self.blocks_sent.get(a, 0) for a in standbys]
        failures = await asyncio.gather(
            *(
                push_blocks(
                    a, self.federation_id, blocks[start:], cosignatures=statements
                )
                for a, start in zip(standbys, sent, strict=True)
                if start < len(blocks)
            )
        )
        pending = [a for a, s in zip(standbys, sent, strict=True) if s < len(blocks)]
        for address, failure in zip(pending, failures, strict=True):
            if failure:
                log.warning("standby did not take the ledger: %s", failure)
            else:
                self.blocks_sent[address] = len(blocks)

    async def push_run_files(self, standbys: list[str], server_round: int) -> None:
        """Hand ``standbys`` the run folder's files as of ``server_round``.

        The row of the round just advertised may not be written yet (the ServerApp
        evaluates it while the next round trains), but every row before it is (it
        saves a round's model only once the previous row is written), and so is
        the run's clock at that round (``clock.json``); a successor evaluates the
        model it resumes from itself, so it needs only the rows before it.
        """
        files = run_files(self.run_dir)
        if not files or not standbys:
            return
        failures = await asyncio.gather(
            *(
                push_results(
                    a, self.book.identity, self.federation_id, server_round, files
                )
                for a in standbys
            )
        )
        for failure in filter(None, failures):
            log.warning("standby did not take the run files: %s", failure)

    def run_ended(self) -> bool:
        """Whether this holder's ServerApp finished the federation: its
        ``summary.json``, written last, reports every round completed."""
        try:
            summary = json.loads((self.run_dir / SUMMARY_FILE).read_text())
        except (OSError, ValueError):
            return False
        return (
            isinstance(summary, dict)
            and summary.get("status") == "completed"
            and summary.get("rounds_completed") == total_rounds(self.genesis)
        )

    async def wait_for_run_end(
        self, standbys: list[str], timeout: float = RUN_END_TIMEOUT
    ) -> bool:
        """After the last round: wait until the ServerApp delivered the final model
        and wrote ``summary.json`` (or ``timeout``, or the SuperLink exits), then
        push the finished run folder to ``standbys``; whether it ended in time."""
        deadline = time.monotonic() + timeout
        while not self.run_ended():
            if time.monotonic() > deadline or not self.superlink_alive():
                log.warning("the ServerApp did not finish within %.0f s", timeout)
                return False
            await asyncio.sleep(0.5)
        await self.push_run_files(standbys, total_rounds(self.genesis))
        return True

    def superlink_alive(self) -> bool:
        """Whether the SuperLink this peer started still runs."""
        return self.holding is not None and self.holding.superlink.process.running()

    def stop(self) -> None:
        """Stop the SuperLinks and stop renewing the lease (it lapses on its own)."""
        if self.holding is not None:
            self.book.withdraw(self.holding.lease)
            self.holding.superlink.process.stop()
            self.holding = None
        if self.warm is not None:
            self.warm.process.stop()
            self.warm = None
