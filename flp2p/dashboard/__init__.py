"""``flp2p dashboard``: a local, read-only web page over a ledger and its run.

The page shows, refreshed every couple of seconds while a run goes on: test accuracy
per round, each round's verdicts and the reasons for every down-weighted or rejected
reply, each peer's reputation and tier over rounds, the tokens leaderboard, ε over
rounds (from the run's ``metrics.csv`` when a privacy mode is on), the chain head and
the result of re-verifying the whole chain. In peer mode (over a participant's
replica) the lease holder, its epoch and the live peers with their addresses and
roles come from a :data:`~flp2p.dashboard.readings.PeerViewSource`: ``flp2p
dashboard --dht HOST:PORT --federation ID`` passes a
:class:`~flp2p.dashboard.peer_polling.PeerViewPoller` that asks the federation's
DHT in the background, so a slow or unreachable DHT never holds up the page (the
panel then says why it cannot see the federation).

Why Dash (Plotly): it is a maintained, widely used framework for exactly this — a
small data app in pure Python with interactive charts and tables — so there is no
JavaScript to write or build. Its JavaScript bundles (React, Plotly.js, the table)
ship inside the installed wheels and are served from them (``serve_locally``), so the
page works without a network and loads no CDN. A timer component (``dcc.Interval``)
gives live refresh without websockets. Streamlit was the other candidate: it reruns
a whole script per interaction over a websocket and is heavier to start and to drive
from a headless browser test; Panel/Bokeh carry more machinery than one page needs.

Read-only by construction: every refresh opens the ledger through SQLite's
``mode=ro`` URI (:func:`~flp2p.dashboard.readings.open_read_only`), and the server
binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

from .page import DEFAULT_REFRESH_MS, create_app, serve
from .peer_polling import PeerViewPoller
from .readings import (
    DashboardSnapshot,
    PeerContact,
    PeerView,
    PeerViewSource,
    read_snapshot,
)

__all__ = [
    "DEFAULT_REFRESH_MS",
    "DashboardSnapshot",
    "PeerContact",
    "PeerView",
    "PeerViewPoller",
    "PeerViewSource",
    "create_app",
    "read_snapshot",
    "serve",
]
