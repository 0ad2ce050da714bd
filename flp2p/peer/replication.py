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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from flp2p.identity import Identity, node_id_of, verify
from flp2p.peer.checkpoints import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    decode_arrays,
    encode_arrays,
)

log = logging.getLogger(__name__)

MAX_CHECKPOINT_BYTES = 256 * 1024 * 1024
"""Largest model a receiver accepts (bounds memory an unknown sender can claim)."""
MAX_HEADER_BYTES = 4096
RECEIVE_TIMEOUT = 30.0
"""Seconds a sender may take to deliver one checkpoint (bounds a stalled peer)."""


def checkpoint_message(federation: str, server_round: int, digest: str) -> bytes:
    """The exact bytes the lease holder signs for one pushed checkpoint."""
    return f"flp2p/checkpoint/v1\n{federation}\n{server_round}\n{digest}".encode()


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
    if not verify(
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
    host, _, port = address.rpartition(":")
    try:
        answer = await asyncio.wait_for(
            _send(host, int(port), json.dumps(header).encode() + b"\n" + body),
            timeout,
        )
    except (OSError, asyncio.TimeoutError) as error:
        return f"{address}: {error or type(error).__name__}"
    return None if answer == "ok" else f"{address}: {answer or 'no answer'}"


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
    """

    def __init__(
        self,
        store: CheckpointStore,
        federation: str,
        may_sign: Callable[[str], bool],
    ) -> None:
        self.store = store
        self.federation = federation
        self.may_sign = may_sign
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
            answer = await asyncio.wait_for(self._receive(reader), RECEIVE_TIMEOUT)
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
        line = await reader.readuntil(b"\n")
        if len(line) > MAX_HEADER_BYTES:
            return "refused: header too long"
        try:
            header = json.loads(line)
            size = int(header["size"])
        except (ValueError, KeyError, TypeError):
            return "refused: malformed header"
        if not 0 < size <= MAX_CHECKPOINT_BYTES:
            return f"refused: size {size} out of range"
        body = await reader.readexactly(size)
        try:
            checkpoint = check_pushed(header, body, self.federation, self.may_sign)
        except CheckpointError as refused:
            log.warning("refused a pushed checkpoint: %s", refused)
            return f"refused: {refused}"
        self.store.save(checkpoint)
        return "ok"
