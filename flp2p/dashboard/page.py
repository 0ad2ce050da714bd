"""The Dash app: one page, refreshed from :func:`read_snapshot` on a timer."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from dash import Dash, Input, Output, State, dcc, html

# dash.dash_table re-exports its class untyped ("type: ignore"); its module is typed.
from dash.dash_table.DataTable import DataTable
from dash.exceptions import PreventUpdate

from . import figures
from .figures import short_id
from .readings import DashboardSnapshot, PeerViewSource, read_snapshot

DEFAULT_REFRESH_MS = 2000
"""How often the page re-reads the ledger (a round takes seconds at the least)."""

_LEADERBOARD_COLUMNS = (
    "rank",
    "peer",
    "tier",
    "reputation",
    "tokens",
    "accepted",
    "rejected",
)
_JUDGEMENT_COLUMNS = ("round", "peer", "verdict", "weight", "reason")
_TABLE_STYLE: dict[str, Any] = {
    "style_table": {"overflowX": "auto"},
    "style_cell": {"fontFamily": "monospace", "fontSize": 13, "textAlign": "left"},
    "style_header": {"fontWeight": "bold"},
}


def _table(table_id: str, columns: tuple[str, ...], page_size: int) -> Any:
    return DataTable(
        id=table_id,
        columns=[{"name": c, "id": c} for c in columns],
        data=[],
        page_size=page_size,
        sort_action="native",
        **_TABLE_STYLE,
    )


def _graph(graph_id: str) -> dcc.Graph:
    return dcc.Graph(id=graph_id, config={"displaylogo": False})


def layout(refresh_ms: int) -> html.Div:
    """The page's static structure; every value in it comes from :func:`refresh`."""
    return html.Div(
        style={"fontFamily": "sans-serif", "margin": "1em 2em"},
        children=[
            html.H2("flp2p dashboard", id="title"),
            html.Div(id="problem", style={"color": "#c62828"}),
            html.Pre(id="chain-head"),
            html.Div(id="chain-check"),
            html.Div(id="peer-problem", style={"color": "#c62828"}),
            html.Pre(id="peer-view"),
            html.Div(
                style={"display": "grid", "gridTemplateColumns": "1fr 1fr"},
                children=[
                    _graph("accuracy-graph"),
                    _graph("verdicts-graph"),
                    _graph("reputation-graph"),
                    _graph("tier-graph"),
                    _graph("epsilon-graph"),
                ],
            ),
            html.H3("tokens leaderboard"),
            _table("leaderboard", _LEADERBOARD_COLUMNS, page_size=25),
            html.H3("down-weighted, rejected and weight-0 replies"),
            _table("judgements", _JUDGEMENT_COLUMNS, page_size=15),
            dcc.Interval(id="refresh", interval=refresh_ms),
            dcc.Store(id="figures-shown"),
        ],
    )


def figures_fingerprint(snapshot: DashboardSnapshot) -> str:
    """SHA-256 of everything the figures are drawn from (same data, same figures)."""
    drawn = (snapshot.metrics, snapshot.verdicts, snapshot.reputations)
    return hashlib.sha256(repr(drawn).encode()).hexdigest()


def chain_head_text(snapshot: DashboardSnapshot) -> str:
    """Federation, last block and its signer, as ``flp2p status`` prints them."""
    status = snapshot.status
    if status is None:
        return f"ledger     {snapshot.ledger_path}"
    last = "-" if status.last_height is None else str(status.last_height)
    last_round = "-" if status.last_round is None else str(status.last_round)
    signer = "-" if status.aggregator_node_id is None else status.aggregator_node_id
    return "\n".join(
        (
            f"ledger     {snapshot.ledger_path}",
            f"federation {status.federation}",
            f"head       height {last}, round {last_round}, "
            f"hash {(snapshot.head_hash or '-')[:16]}",
            f"signer     {figures.short_id(signer)}",
            f"peers      {status.known_peers}",
        )
    )


def peer_view_text(snapshot: DashboardSnapshot) -> str:
    """Lease holder, epoch and live peers (empty outside peer mode).

    Live peers are listed with address and roles when the view has them (what the
    DHT answered), else by node id.
    """
    peer = snapshot.peer
    if peer is None:
        return ""
    if peer.lease_holder is None and peer.epoch is None:
        lines = ["lease      none live (no aggregator right now)"]
    else:
        holder = "-" if peer.lease_holder is None else short_id(peer.lease_holder)
        epoch = "-" if peer.epoch is None else str(peer.epoch)
        lines = [f"lease      {holder} (epoch {epoch})"]
    details = []
    if peer.last_round is not None:
        rounds = "?" if peer.rounds is None else str(peer.rounds)
        details.append(f"round {peer.last_round}/{rounds}")
    if peer.superlink is not None:
        details.append(f"SuperLink {peer.superlink}")
    if details:
        lines.append(f"           {', '.join(details)}")
    if peer.contacts:
        lines.append(f"live peers {len(peer.contacts)} answering the DHT")
        for contact in peer.contacts:
            roles = ", ".join(contact.roles) or "participant"
            lines.append(
                f"  {contact.address:<22} {short_id(contact.node_id)}  {roles}"
            )
    else:
        live = ", ".join(short_id(p) for p in peer.live_peers) or "-"
        lines.append(f"live peers {live}")
    if peer.seen_at is not None:
        lines.append(f"seen       {_clock(peer.seen_at)}")
    return "\n".join(lines)


def peer_problem_text(snapshot: DashboardSnapshot) -> str:
    """Why the federation cannot be seen now (empty when it can, or outside peer
    mode); says how old the view shown instead is."""
    peer = snapshot.peer
    if peer is None or peer.problem is None:
        return ""
    if peer.seen_at is None:
        return f"federation not visible: {peer.problem}"
    return (
        f"federation not visible: {peer.problem} "
        f"(showing the DHT's answer of {_clock(peer.seen_at)})"
    )


def _clock(unix_time: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(unix_time))


def create_app(
    ledger_path: Path,
    run_dir: Path | None = None,
    peer_view: PeerViewSource | None = None,
    refresh_ms: int = DEFAULT_REFRESH_MS,
) -> Dash:
    """The dashboard over ``ledger_path`` (and ``run_dir/metrics.csv`` if given).

    ``peer_view`` is the peer-mode seam: a callable returning the federation's
    :class:`~flp2p.dashboard.readings.PeerView` at once (``flp2p dashboard --dht``
    passes a :class:`~flp2p.dashboard.peer_polling.PeerViewPoller`).
    """
    # serve_locally: Dash's and Plotly's JavaScript come from the installed package,
    # never a CDN; update_title="" keeps the tab title steady during refreshes.
    app = Dash(
        __name__,
        title="flp2p dashboard",
        serve_locally=True,
        update_title="",
    )
    app.layout = layout(refresh_ms)

    # Three callbacks on one timer, so that what is cheap never waits for what is
    # not: Dash drops an answer that a newer tick superseded, so one callback
    # slower than the refresh (Plotly figures take over a second on a loaded
    # machine) would leave everything it outputs blank for ever.
    @app.callback(
        Output("peer-problem", "children"),
        Output("peer-view", "children"),
        Input("refresh", "n_intervals"),
    )
    def refresh_peer_view(_: int | None) -> tuple[str, str]:
        peer = peer_view() if peer_view is not None else None
        snapshot = DashboardSnapshot(ledger_path, peer=peer)
        return peer_problem_text(snapshot), peer_view_text(snapshot)

    @app.callback(
        Output("problem", "children"),
        Output("chain-head", "children"),
        Output("chain-check", "children"),
        Output("chain-check", "style"),
        Output("leaderboard", "data"),
        Output("judgements", "data"),
        Input("refresh", "n_intervals"),
    )
    def refresh_ledger(_: int | None) -> tuple[Any, ...]:
        snapshot = read_snapshot(ledger_path, run_dir)
        chain = snapshot.chain
        if chain is None:
            check, colour = "chain: not verified", "#777"
        elif chain.ok:
            check, colour = f"chain: ok, {chain.detail}", "#2e7d32"
        else:
            check, colour = f"chain: BROKEN, {chain.detail}", "#c62828"
        return (
            snapshot.problem or "",
            chain_head_text(snapshot),
            check,
            {"color": colour, "fontWeight": "bold"},
            figures.leaderboard_rows(snapshot),
            figures.judgement_rows(snapshot),
        )

    @app.callback(
        Output("accuracy-graph", "figure"),
        Output("verdicts-graph", "figure"),
        Output("reputation-graph", "figure"),
        Output("tier-graph", "figure"),
        Output("epsilon-graph", "figure"),
        Output("figures-shown", "data"),
        Input("refresh", "n_intervals"),
        State("figures-shown", "data"),
    )
    def refresh_figures(_: int | None, shown: str | None) -> tuple[Any, ...]:
        snapshot = read_snapshot(ledger_path, run_dir, verify=False)
        # The page tells which data its figures show: unchanged data costs no new
        # figures (building them is what takes time), and no state is kept here.
        fingerprint = figures_fingerprint(snapshot)
        if fingerprint == shown:
            raise PreventUpdate
        return (
            figures.accuracy_figure(snapshot),
            figures.verdicts_figure(snapshot),
            figures.reputation_figure(snapshot),
            figures.tier_figure(snapshot),
            figures.epsilon_figure(snapshot),
            fingerprint,
        )

    return app


def serve(app: Dash, host: str, port: int) -> None:
    """Serve ``app`` until interrupted (Flask's threaded server: one local viewer)."""
    # Werkzeug logs every request, i.e. one line per refresh: keep only problems.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app.run(host=host, port=port, debug=False)
