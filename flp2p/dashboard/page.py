"""The Dash app: one page, refreshed from :func:`read_snapshot` on a timer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dash import Dash, Input, Output, dcc, html

# dash.dash_table re-exports its class untyped ("type: ignore"); its module is typed.
from dash.dash_table.DataTable import DataTable

from . import figures
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
            html.H3("down-weighted and rejected replies"),
            _table("judgements", _JUDGEMENT_COLUMNS, page_size=15),
            dcc.Interval(id="refresh", interval=refresh_ms),
        ],
    )


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
    """Lease holder, epoch and live peers (empty outside peer mode)."""
    peer = snapshot.peer
    if peer is None:
        return ""
    holder = "-" if peer.lease_holder is None else figures.short_id(peer.lease_holder)
    epoch = "-" if peer.epoch is None else str(peer.epoch)
    live = ", ".join(figures.short_id(p) for p in peer.live_peers) or "-"
    return f"lease      {holder} (epoch {epoch})\nlive peers {live}"


def create_app(
    ledger_path: Path,
    run_dir: Path | None = None,
    peer_view: PeerViewSource | None = None,
    refresh_ms: int = DEFAULT_REFRESH_MS,
) -> Dash:
    """The dashboard over ``ledger_path`` (and ``run_dir/metrics.csv`` if given).

    ``peer_view`` is the peer-mode seam: a participant's runtime passes a callable
    returning its :class:`~flp2p.dashboard.readings.PeerView`.
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

    @app.callback(
        Output("problem", "children"),
        Output("chain-head", "children"),
        Output("chain-check", "children"),
        Output("chain-check", "style"),
        Output("peer-view", "children"),
        Output("accuracy-graph", "figure"),
        Output("verdicts-graph", "figure"),
        Output("reputation-graph", "figure"),
        Output("tier-graph", "figure"),
        Output("epsilon-graph", "figure"),
        Output("leaderboard", "data"),
        Output("judgements", "data"),
        Input("refresh", "n_intervals"),
    )
    def refresh(_: int | None) -> tuple[Any, ...]:
        snapshot = read_snapshot(ledger_path, run_dir, peer_view)
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
            peer_view_text(snapshot),
            figures.accuracy_figure(snapshot),
            figures.verdicts_figure(snapshot),
            figures.reputation_figure(snapshot),
            figures.tier_figure(snapshot),
            figures.epsilon_figure(snapshot),
            figures.leaderboard_rows(snapshot),
            figures.judgement_rows(snapshot),
        )

    return app


def serve(app: Dash, host: str, port: int) -> None:
    """Serve ``app`` until interrupted (Flask's threaded server: one local viewer)."""
    # Werkzeug logs every request, i.e. one line per refresh: keep only problems.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app.run(host=host, port=port, debug=False)
