"""Copies of the global model for standby aggregators, pushed by the lease holder.

A round counts as finished for the federation only once the holder has advertised it
in its lease, and it advertises a round only after pushing that round's model to the
other eligible peers. So whoever succeeds it already holds the model the last lease
names, and checks it against the lease's hash before resuming from it
(:func:`flp2p.peer.checkpoints.resume_round`).

Wire format, one checkpoint per TCP connection: a JSON header line (federation, round,
hash, size, signer public key, Ed25519 signature over
``b"flp2p/checkpoint/v1\\n" + federation + "\\n" + round + "\\n" + hash``), then
``size`` bytes of ``.npz``; the receiver answers one line, ``ok`` or ``refused: …``.

The holder's ledger blocks travel the same way (header ``{"kind": "ledger",
"federation", "size"}``, then a JSON list of blocks in wire form): every block is
signed by the aggregator that wrote it, so the receiver checks the blocks
themselves — chain rules, and a signer the genesis names — rather than the sender.
A standby that takes over then continues the chain it holds.

The run folder's files (``metrics.csv``, ``summary.json``, ``accuracy.png`` and
``clock.json``, the run's seconds at the round) follow each round's model (header
``{"kind": "results", "federation", "round", "size", "sha256", "public_key",
"signature"}``, the signature over
``b"flp2p/run-results/v1\n" + federation + "\n" + round + "\n" + sha256`` of the
body, a JSON object of file name → base64 content), so a successor continues the
same files (:func:`push_results`).

An audit request (header ``{"kind": "audit", "federation", "size", "claim"}``, then
the round's signed replies, :func:`flp2p.audit.recompute.encode_replies`) asks a
committee member to re-run a round; it answers one line, the signed statement as
JSON or ``refused: …`` with what differed (:func:`request_audit`). The header needs
no signature: an auditor signs only what it computed itself.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from flp2p.audit.recompute import MAX_AUDIT_BYTES
from flp2p.audit.statements import AuditStatement, StatementError, verify_statement
from flp2p.identity import Identity, node_id_of
from flp2p.ledger import LedgerError
from flp2p.ledger_broadcast import decode_cosignatures, sync_replica
from flp2p.peer.addresses import split_host_port
from flp2p.peer.checkpoints import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    decode_arrays,
    encode_arrays,
)
from flp2p.reporting import CLOCK_FILE, METRICS_FILE, PLOT_FILE, SUMMARY_FILE
from flp2p.signatures import checkpoint_message, run_results_message, verify_ed25519

log = logging.getLogger(__name__)

MAX_CHECKPOINT_BYTES = 256 * 1024 * 1024
"""Largest model a receiver accepts (bounds memory an unknown sender can claim)."""
MAX_HEADER_BYTES = 4096
RECEIVE_TIMEOUT = 30.0
"""Seconds a sender may take to deliver one checkpoint (bounds a stalled peer)."""


def checkpoint_header(
    identity: Identity, federation: str, checkpoint: Checkpoint, size: int
) -> dict[str, Any]:
    """Signed header announcing ``checkpoint`` (``size`` bytes follow it)."""
    digest = checkpoint.sha256
    signature = identity.sign(
        checkpoint_message(federation, checkpoint.server_round, digest)
    )
    return {
        "federation": federation,
        "round": checkpoint.server_round,
        "sha256": digest,
        "size": size,
        "public_key": identity.public_key.hex(),
        "signature": signature.hex(),
    }


def check_pushed(
    header: dict[str, Any],
    body: bytes,
    federation: str,
    may_sign: Callable[[str], bool],
) -> Checkpoint:
    """The checkpoint in a push, if authentic; else :class:`CheckpointError` (why).

    Checks, in order: the federation, the signer's entitlement (``may_sign`` of its
    node id), the signature, and that the arrays hash to the signed hash.
    """
    try:
        public_key = bytes.fromhex(str(header["public_key"]))
        signature = bytes.fromhex(str(header["signature"]))
        server_round, digest = int(header["round"]), str(header["sha256"])
    except (KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"malformed header: {error}") from None
    if header.get("federation") != federation:
        raise CheckpointError("checkpoint for another federation")
    try:
        signer = node_id_of(public_key)
    except ValueError:
        raise CheckpointError("malformed signer key") from None
    if not may_sign(signer):
        raise CheckpointError(f"signer {signer[:12]}… may not push checkpoints")
    if not verify_ed25519(
        public_key, signature, checkpoint_message(federation, server_round, digest)
    ):
        raise CheckpointError("bad signature")
    checkpoint = Checkpoint(server_round, decode_arrays(body))
    if checkpoint.sha256 != digest:
        raise CheckpointError("arrays do not match the signed hash")
    return checkpoint


async def push_checkpoint(
    address: str,
    identity: Identity,
    federation: str,
    checkpoint: Checkpoint,
    timeout: float = 10.0,
) -> str | None:
    """Send ``checkpoint`` to the receiver at ``address``.

    Returns
    -------
    str or None
        ``None`` if the receiver stored it, else why not (refusal or network error).
    """
    body = encode_arrays(checkpoint.arrays)
    header = checkpoint_header(identity, federation, checkpoint, len(body))
    return await _push(address, header, body, timeout)


LEDGER_KIND = "ledger"
"""``kind`` of a push that carries ledger blocks (a checkpoint push has none)."""


def encode_blocks(blocks: Sequence[bytes]) -> bytes:
    """Blocks in wire form (canonical JSON each) as one JSON list."""
    return json.dumps([bytes(b).decode("utf-8") for b in blocks]).encode()


def encode_chain(blocks: Sequence[bytes], cosignatures: Sequence[str]) -> bytes:
    """Blocks and their co-signatures (statements as JSON strings) as one JSON
    object; without co-signatures, :func:`encode_blocks`."""
    if not cosignatures:
        return encode_blocks(blocks)
    return json.dumps(
        {
            "blocks": [bytes(b).decode("utf-8") for b in blocks],
            "cosignatures": list(cosignatures),
        }
    ).encode()


def decode_chain(body: bytes) -> tuple[list[bytes], list[AuditStatement]]:
    """Inverse of :func:`encode_chain` (raises :class:`LedgerError`)."""
    try:
        decoded = json.loads(body)
    except ValueError as error:
        raise LedgerError(f"blocks are not JSON: {error}") from None
    if not isinstance(decoded, dict):
        return decode_blocks(body), []
    statements = decoded.get("cosignatures")
    if not isinstance(statements, list):
        raise LedgerError("co-signatures must be a JSON list")
    blocks = json.dumps(decoded.get("blocks")).encode()
    return decode_blocks(blocks), decode_cosignatures(statements)


def decode_blocks(body: bytes) -> list[bytes]:
    """Inverse of :func:`encode_blocks` (raises :class:`LedgerError`)."""
    try:
        decoded = json.loads(body)
    except ValueError as error:
        raise LedgerError(f"blocks are not JSON: {error}") from None
    if not isinstance(decoded, list) or not all(isinstance(b, str) for b in decoded):
        raise LedgerError("blocks must be a JSON list of strings")
    return [b.encode("utf-8") for b in decoded]


async def push_blocks(
    address: str,
    federation: str,
    blocks: Sequence[bytes],
    timeout: float = 10.0,
    cosignatures: Sequence[str] = (),
) -> str | None:
    """Send ledger ``blocks`` (and their ``cosignatures``, statements as JSON
    strings) to the receiver at ``address``.

    Returns
    -------
    str or None
        ``None`` if the receiver holds them now, else why not.
    """
    body = encode_chain(blocks, cosignatures)
    header = {"kind": LEDGER_KIND, "federation": federation, "size": len(body)}
    return await _push(address, header, body, timeout)


RESULTS_KIND = "results"
"""``kind`` of a push that carries the run folder's files."""
RESULT_FILES = (METRICS_FILE, SUMMARY_FILE, PLOT_FILE, CLOCK_FILE)
"""The only files a results push may carry (written into the receiver's run folder)."""
MAX_RESULTS_BYTES = 16 * 1024 * 1024


def run_files(run_dir: Path) -> dict[str, bytes]:
    """The :data:`RESULT_FILES` present in ``run_dir``."""
    found = {}
    for name in RESULT_FILES:
        with contextlib.suppress(OSError):
            found[name] = (run_dir / name).read_bytes()
    return found


def results_body(files: Mapping[str, bytes]) -> bytes:
    """File name → content as one JSON object (contents in base64)."""
    encoded = {n: base64.b64encode(data).decode() for n, data in sorted(files.items())}
    return json.dumps(encoded, sort_keys=True).encode()


def check_results(
    header: Mapping[str, Any],
    body: bytes,
    federation: str,
    may_sign: Callable[[str], bool],
) -> tuple[int, dict[str, bytes]]:
    """Round and files of a results push, if authentic; else :class:`ValueError`.

    As :func:`check_pushed`: the federation, the signer's entitlement, the
    signature over the body's hash; then only :data:`RESULT_FILES` by name.
    """
    try:
        public_key = bytes.fromhex(str(header["public_key"]))
        signature = bytes.fromhex(str(header["signature"]))
        server_round, digest = int(header["round"]), str(header["sha256"])
    except (KeyError, ValueError, TypeError) as error:
        raise ValueError(f"malformed header: {error}") from None
    if header.get("federation") != federation:
        raise ValueError("results for another federation")
    try:
        signer = node_id_of(public_key)
    except ValueError:
        raise ValueError("malformed signer key") from None
    if not may_sign(signer):
        raise ValueError(f"signer {signer[:12]}… may not push results")
    message = run_results_message(federation, server_round, digest)
    if not verify_ed25519(public_key, signature, message):
        raise ValueError("bad signature")
    if hashlib.sha256(body).hexdigest() != digest:
        raise ValueError("files do not match the signed hash")
    try:
        decoded = json.loads(body)
        files = {
            str(n): base64.b64decode(str(d), validate=True) for n, d in decoded.items()
        }
    except (ValueError, AttributeError) as error:
        raise ValueError(f"malformed files: {error}") from None
    unknown = sorted(set(files) - set(RESULT_FILES))
    if unknown:
        raise ValueError(f"not a run file: {unknown[0]!r}")
    return server_round, files


async def push_results(
    address: str,
    identity: Identity,
    federation: str,
    server_round: int,
    files: Mapping[str, bytes],
    timeout: float = 10.0,
) -> str | None:
    """Send the run folder's ``files`` (as of ``server_round``) to ``address``.

    Returns
    -------
    str or None
        ``None`` if the receiver stored them, else why not.
    """
    body = results_body(files)
    digest = hashlib.sha256(body).hexdigest()
    signature = identity.sign(run_results_message(federation, server_round, digest))
    header = {
        "kind": RESULTS_KIND,
        "federation": federation,
        "round": server_round,
        "size": len(body),
        "sha256": digest,
        "public_key": identity.public_key.hex(),
        "signature": signature.hex(),
    }
    return await _push(address, header, body, timeout)


AUDIT_KIND = "audit"
"""``kind`` of a push asking a committee member to re-run a round."""
AUDIT_TIMEOUT = 120.0
"""Seconds an aggregator waits for one auditor's statement (it re-runs the round)."""
AuditHandler = Callable[[Mapping[str, Any], bytes], Awaitable[str]]
"""A receiver's auditor: claim and replies in, one answer line out (a statement's
JSON, or ``refused: …``)."""


async def request_audit(
    address: str,
    federation: str,
    claim: Mapping[str, Any],
    replies: bytes,
    timeout: float = AUDIT_TIMEOUT,
) -> AuditStatement | str:
    """Ask the auditor at ``address`` to re-run a round and co-sign ``claim``.

    ``claim`` names the round and the hashes it must reproduce (``round``,
    ``previous_model_sha256``, ``model_sha256``, ``inputs_sha256``,
    ``body_sha256``); ``replies`` are the round's signed replies.

    Returns
    -------
    AuditStatement or str
        The auditor's validly signed statement of exactly the claim, or why there
        is none (its refusal, which an accusation quotes, or a network error).
    """
    header = {
        "kind": AUDIT_KIND,
        "federation": federation,
        "size": len(replies),
        "claim": dict(claim),
    }
    answer = await _exchange(address, header, replies, timeout)
    if not answer.startswith("{"):
        return f"{address}: {answer or 'no answer'}"
    try:
        statement = AuditStatement.from_json(json.loads(answer))
    except (ValueError, StatementError) as error:
        return f"{address}: malformed statement ({error})"
    expected = (
        federation,
        claim.get("round"),
        claim.get("inputs_sha256"),
        claim.get("model_sha256"),
        claim.get("body_sha256"),
    )
    signed = (
        statement.federation,
        statement.server_round,
        statement.inputs_sha256,
        statement.model_sha256,
        statement.body_sha256,
    )
    if signed != expected or not verify_statement(statement):
        return f"{address}: the statement does not sign the claim"
    return statement


COMPLAINT_KIND = "complaint"
"""``kind`` of a push carrying a participant's signed complaint record (issue 15)."""
MAX_COMPLAINT_BYTES = 8192
ComplaintHandler = Callable[[bytes], Awaitable[str]]
"""A receiver's handler of complaint records (one answer line)."""


async def push_complaint(
    address: str, federation: str, record: bytes, timeout: float = 10.0
) -> str | None:
    """Hand a signed complaint record to the eligible peer at ``address``.

    Returns
    -------
    str or None
        ``None`` if it took it, else why not.
    """
    header = {"kind": COMPLAINT_KIND, "federation": federation, "size": len(record)}
    return await _push(address, header, record, timeout)


async def _push(
    address: str, header: dict[str, object], body: bytes, timeout: float
) -> str | None:
    """Send one header line and ``body``; ``None`` if the receiver answered ok."""
    answer = await _exchange(address, header, body, timeout)
    return None if answer == "ok" else f"{address}: {answer or 'no answer'}"


async def _exchange(
    address: str, header: Mapping[str, object], body: bytes, timeout: float
) -> str:
    """Send one header line and ``body``; the answer line (or the network error)."""
    host, port = split_host_port(address)
    try:
        return await asyncio.wait_for(
            _send(host, port, json.dumps(header).encode() + b"\n" + body),
            timeout,
        )
    except (OSError, asyncio.TimeoutError) as error:
        return f"{error or type(error).__name__}"


async def _send(host: str, port: int, data: bytes) -> str:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        return (await reader.readline()).decode().strip()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class CheckpointReceiver:
    """TCP endpoint storing checkpoints pushed by entitled signers.

    Parameters
    ----------
    store
        Where accepted checkpoints go.
    federation
        The only federation accepted.
    may_sign
        Whether a node id may push (e.g. it is eligible in the genesis).
    ledger
        This peer's copy of the ledger, extended by pushed blocks; ``None`` refuses
        block pushes.
    block_signers
        Node ids whose blocks are accepted (the genesis' aggregators).
    auditor
        Answers audit requests (:data:`AuditHandler`); ``None`` refuses them.
    complaints
        Judges pushed complaint records; ``None`` refuses them.
    committee_size
        k: pushed round blocks that have a committee are appended only if final
        (0: on the aggregator's signature alone).
    results_dir
        The run folder pushed run files are written to (the one this peer's own
        ServerApp continues if it takes over); ``None`` refuses them.
    """

    def __init__(
        self,
        store: CheckpointStore,
        federation: str,
        may_sign: Callable[[str], bool],
        ledger: Path | None = None,
        block_signers: Collection[str] = (),
        auditor: AuditHandler | None = None,
        committee_size: int = 0,
        complaints: ComplaintHandler | None = None,
        results_dir: Path | None = None,
    ) -> None:
        self.committee_size = committee_size
        self.complaints = complaints
        self.store = store
        self.federation = federation
        self.may_sign = may_sign
        self.ledger = ledger
        self.block_signers = frozenset(block_signers)
        self.auditor = auditor
        self.results_dir = results_dir
        self.results_round = -1
        """Round of the newest results stored (an older push never overwrites)."""
        self._server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen; return the ``host:port`` to advertise in the node record."""
        self._server = await asyncio.start_server(self._handle, host, port)
        bound = self._server.sockets[0].getsockname()
        return f"{bound[0]}:{bound[1]}"

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            # Header and body each get RECEIVE_TIMEOUT; an audit then re-runs the
            # round, within AUDIT_TIMEOUT.
            answer = await asyncio.wait_for(
                self._receive(reader), 2 * RECEIVE_TIMEOUT + AUDIT_TIMEOUT
            )
        except (
            OSError,
            asyncio.TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ) as error:
            answer = f"refused: {error or type(error).__name__}"
        with contextlib.suppress(OSError):
            writer.write(answer.encode() + b"\n")
            await writer.drain()
            writer.close()

    async def _receive(self, reader: asyncio.StreamReader) -> str:
        line = await asyncio.wait_for(reader.readuntil(b"\n"), RECEIVE_TIMEOUT)
        if len(line) > MAX_HEADER_BYTES:
            return "refused: header too long"
        try:
            header = json.loads(line)
            size = int(header["size"])
        except (ValueError, KeyError, TypeError):
            return "refused: malformed header"
        audit = header.get("kind") == AUDIT_KIND
        if audit and self.auditor is None:
            return "refused: this peer audits no rounds"
        if header.get("kind") == COMPLAINT_KIND:
            return await self._receive_complaint(reader, header, size)
        if not 0 < size <= (MAX_AUDIT_BYTES if audit else MAX_CHECKPOINT_BYTES):
            return f"refused: size {size} out of range"
        body = await asyncio.wait_for(reader.readexactly(size), RECEIVE_TIMEOUT)
        if audit and self.auditor is not None:
            if header.get("federation") != self.federation:
                return "refused: an audit for another federation"
            claim = header.get("claim")
            if not isinstance(claim, dict):
                return "refused: an audit request names no claim"
            return await self.auditor(claim, body)
        if header.get("kind") == LEDGER_KIND:
            return await self._receive_blocks(header, body)
        if header.get("kind") == RESULTS_KIND:
            return self._receive_results(header, body)
        try:
            checkpoint = check_pushed(header, body, self.federation, self.may_sign)
        except CheckpointError as refused:
            log.warning("refused a pushed checkpoint: %s", refused)
            return f"refused: {refused}"
        self.store.save(checkpoint)
        return "ok"

    async def _receive_complaint(
        self, reader: asyncio.StreamReader, header: Mapping[str, Any], size: int
    ) -> str:
        if self.complaints is None:
            return "refused: this peer judges no complaints"
        if header.get("federation") != self.federation:
            return "refused: a complaint for another federation"
        if not 0 < size <= MAX_COMPLAINT_BYTES:
            return f"refused: size {size} out of range"
        body = await asyncio.wait_for(reader.readexactly(size), RECEIVE_TIMEOUT)
        return await self.complaints(body)

    def _receive_results(self, header: dict[str, Any], body: bytes) -> str:
        if self.results_dir is None:
            return "refused: this peer keeps no run folder"
        if len(body) > MAX_RESULTS_BYTES:
            return f"refused: size {len(body)} out of range"
        try:
            server_round, files = check_results(
                header, body, self.federation, self.may_sign
            )
        except ValueError as refused:
            log.warning("refused pushed run files: %s", refused)
            return f"refused: {refused}"
        if server_round < self.results_round:
            return f"refused: holds the run files of round {self.results_round}"
        self.results_dir.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            partial = self.results_dir / f"{name}.{os.getpid()}.partial"
            partial.write_bytes(data)
            os.replace(partial, self.results_dir / name)
        self.results_round = server_round
        return "ok"

    async def _receive_blocks(self, header: dict[str, Any], body: bytes) -> str:
        if self.ledger is None:
            return "refused: this peer keeps no ledger"
        if header.get("federation") != self.federation:
            return "refused: blocks for another federation"
        try:
            blocks, statements = decode_chain(body)
            # SQLite waits for the lock if the ServerApp writes: keep the loop free.
            await asyncio.to_thread(
                sync_replica,
                self.ledger,
                self.federation,
                blocks,
                self.block_signers,
                statements,
                self.committee_size,
            )
        except LedgerError as refused:
            log.warning("refused pushed ledger blocks: %s", refused)
            return f"refused: {refused}"
        return "ok"
