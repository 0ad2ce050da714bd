"""The one line a participant sees without ``--verbose``: where its federation is.

``federation 3fa2c1d09e7b · participant · round 2/3 · 5 peers seen · reputation
0.600 · tokens 12.50`` — redrawn in place on a terminal (rich), printed once per
change otherwise (a log file gets one line per round, not one per poll).

Reputation and tokens come from this peer's copy of the ledger, which the
aggregator pushes with each round; before the first block there are none.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

PARTICIPANT = "participant"
STANDBY = "standby"
AGGREGATOR = "aggregator"


@dataclass(frozen=True)
class PeerStanding:
    """This peer's reputation and tokens as its ledger copy records them."""

    reputation: float | None
    tokens: float


@dataclass(frozen=True)
class PeerStatus:
    """What the line shows."""

    federation: str
    role: str
    last_round: int | None
    rounds: int
    peers_seen: int
    standing: PeerStanding | None = None

    def line(self) -> str:
        """The status as one line."""
        done = "-" if self.last_round is None else str(self.last_round)
        parts = [
            f"federation {self.federation[:12]}",
            self.role,
            f"round {done}/{self.rounds}",
            f"{self.peers_seen} peers seen",
        ]
        if self.standing is not None:
            reputation = self.standing.reputation
            parts.append(
                "reputation -" if reputation is None else f"reputation {reputation:.3f}"
            )
            parts.append(f"tokens {self.standing.tokens:.2f}")
        return " · ".join(parts)


def standing_in(ledger_path: Path, node_id: str) -> PeerStanding | None:
    """``node_id``'s reputation and tokens in the ledger at ``ledger_path``, or
    ``None`` when there is no ledger (yet) or it does not name the peer."""
    if not ledger_path.exists():
        return None
    from flp2p.ledger import Ledger, LedgerError
    from flp2p.ledger.reports import leaderboard

    try:
        with Ledger.open(ledger_path) as ledger:
            entries = leaderboard(ledger)
    except (LedgerError, OSError, ValueError):
        return None  # being written, or not yet a ledger: next time
    for entry in entries:
        if entry.identity == node_id:
            return PeerStanding(entry.reputation, entry.tokens)
    return None


class StatusLine:
    """Shows :class:`PeerStatus` on ``stream``: in place on a terminal, else a new
    line whenever the status changes."""

    def __init__(self, stream: TextIO | None = None) -> None:
        from rich.console import Console

        self.console = Console(file=stream or sys.stderr, highlight=False)
        self._shown: str | None = None
        self._live: object | None = None

    def show(self, status: PeerStatus) -> None:
        """Show ``status`` if it differs from what is shown."""
        line = status.line()
        if line == self._shown:
            return
        self._shown = line
        if not self.console.is_terminal:
            self.console.print(line, markup=False)
            return
        from rich.live import Live
        from rich.text import Text

        if self._live is None:
            live = Live(console=self.console, auto_refresh=False, transient=False)
            live.start()
            self._live = live
        assert isinstance(self._live, Live)
        self._live.update(Text(line), refresh=True)

    def close(self) -> None:
        """Leave the last line on screen and stop redrawing."""
        if self._live is not None:
            from rich.live import Live

            assert isinstance(self._live, Live)
            self._live.stop()
            self._live = None
