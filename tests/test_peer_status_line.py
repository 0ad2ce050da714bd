"""The participant's one status line: what it says, where its numbers come from."""

from __future__ import annotations

import io
from pathlib import Path

from helpers_ledger import FEDERATION, KeySigner, record_rounds

from flp2p.ledger import Ledger
from flp2p.peer.status_line import (
    PARTICIPANT,
    PeerStanding,
    PeerStatus,
    StatusLine,
    standing_in,
)


def test_line_names_federation_role_round_peers_reputation_and_tokens() -> None:
    status = PeerStatus("3fa2c1d09e7b" + "0" * 52, PARTICIPANT, 2, 3, 5,
                        PeerStanding(0.6, 12.5))  # fmt: skip
    assert status.line() == (
        "federation 3fa2c1d09e7b · participant · round 2/3 · 5 peers seen · "
        "reputation 0.600 · tokens 12.50"
    )
    before = PeerStatus("ab" * 32, "standby", None, 3, 1)
    assert (
        before.line() == "federation abababababab · standby · round -/3 · 1 peers seen"
    )


def test_off_a_terminal_each_change_is_one_printed_line() -> None:
    stream = io.StringIO()
    line = StatusLine(stream)
    first = PeerStatus("ab" * 32, PARTICIPANT, 0, 2, 3)
    line.show(first)
    line.show(first)  # unchanged: nothing more
    line.show(PeerStatus("ab" * 32, PARTICIPANT, 1, 2, 3))
    line.close()
    assert stream.getvalue().splitlines() == [
        first.line(),
        "federation abababababab · participant · round 1/2 · 3 peers seen",
    ]


def test_standing_comes_from_the_peers_ledger_copy(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    assert standing_in(path, "peer-001") is None  # no ledger yet
    with Ledger.open(
        path, federation=FEDERATION, signer=KeySigner(1), create=True
    ) as ledger:
        record_rounds(ledger, [1, 2])
    # helpers_ledger: peer-001 earns 12.5 tokens a round.
    standing = standing_in(path, "peer-001")
    assert standing is not None and standing.tokens == 25.0
    assert standing.reputation is not None and 0 < standing.reputation <= 1
    assert standing_in(path, "someone-else") is None
