"""Plotly figures and table rows of a :class:`DashboardSnapshot` (pure: no I/O)."""

from __future__ import annotations

import math
from typing import Any

import plotly.graph_objects as go

from .readings import DashboardSnapshot

TIER_ORDER = ("bronze", "silver", "gold", "platinum")
TIER_COLOURS = ("#a97142", "#a8a9ad", "#d4af37", "#5fb3b3")
VERDICT_COLOURS = {
    "accepted": "#2e7d32",
    "downweighted": "#f9a825",
    "rejected": "#c62828",
}
SHORT_ID_CHARS = 12
"""As in ``flp2p leaderboard``: enough characters to tell peers apart."""


def short_id(identity: str) -> str:
    """First characters of an identity, for labels."""
    return identity[:SHORT_ID_CHARS]


def _figure(title: str, xaxis: str, yaxis: str) -> go.Figure:
    figure = go.Figure()
    figure.update_layout(
        title=title,
        xaxis_title=xaxis,
        yaxis_title=yaxis,
        margin={"l": 50, "r": 20, "t": 40, "b": 40},
        height=300,
        template="plotly_white",
        # Keeps zoom and hidden traces across refreshes instead of resetting them.
        uirevision="keep",
    )
    return figure


def _whole_rounds(figure: go.Figure, rounds: list[int]) -> go.Figure:
    """Round ticks at whole numbers (about ten of them), never 0.5 or 1.5."""
    figure.update_xaxes(dtick=max(1, math.ceil(max(rounds, default=1) / 10)))
    return figure


def accuracy_figure(snapshot: DashboardSnapshot) -> go.Figure:
    """Central test accuracy per round (from the run's ``metrics.csv``)."""
    figure = _figure("test accuracy", "round", "accuracy (%)")
    points = snapshot.metrics
    figure.add_trace(
        go.Scatter(
            x=[p.server_round for p in points],
            y=[100 * p.accuracy for p in points],
            mode="lines+markers",
            name="accuracy",
        )
    )
    return _whole_rounds(figure, [p.server_round for p in points])


def epsilon_figure(snapshot: DashboardSnapshot) -> go.Figure:
    """ε spent after each round: the clients' maximum and median (DP-SGD) or the
    aggregate's (central DP, ``epsilon`` only)."""
    figure = _figure("privacy spent", "round", "ε")
    for field, name in (("epsilon", "ε (max)"), ("epsilon_median", "ε (median)")):
        points = [
            (p.server_round, getattr(p, field))
            for p in snapshot.metrics
            if getattr(p, field) is not None
        ]
        if points:
            figure.add_trace(
                go.Scatter(
                    x=[r for r, _ in points],
                    y=[e for _, e in points],
                    mode="lines+markers",
                    name=name,
                )
            )
    return _whole_rounds(figure, [p.server_round for p in snapshot.metrics])


def verdicts_figure(snapshot: DashboardSnapshot) -> go.Figure:
    """Replies per round by verdict, stacked."""
    figure = _figure("verdicts per round", "round", "replies")
    figure.update_layout(barmode="stack")
    rounds = [v.server_round for v in snapshot.verdicts]
    for verdict, colour in VERDICT_COLOURS.items():
        figure.add_trace(
            go.Bar(
                x=rounds,
                y=[getattr(v, verdict) for v in snapshot.verdicts],
                name=verdict,
                marker_color=colour,
            )
        )
    return _whole_rounds(figure, rounds)


def reputation_figure(snapshot: DashboardSnapshot) -> go.Figure:
    """Each peer's reputation score after every round; the tier is in the hover."""
    figure = _figure("reputation", "round", "score")
    by_identity: dict[str, list[tuple[int, float, str]]] = {}
    for point in snapshot.reputations:
        by_identity.setdefault(point.identity, []).append(
            (point.server_round, point.score, point.tier)
        )
    for identity in sorted(by_identity):
        series = by_identity[identity]
        figure.add_trace(
            go.Scatter(
                x=[r for r, _, _ in series],
                y=[s for _, s, _ in series],
                text=[t for _, _, t in series],
                hovertemplate="round %{x}: %{y:.3f} (%{text})",
                mode="lines+markers",
                name=short_id(identity),
            )
        )
    return _whole_rounds(figure, [p.server_round for p in snapshot.reputations])


def tier_figure(snapshot: DashboardSnapshot) -> go.Figure:
    """Tier of each peer after every round (rows: peers, columns: rounds)."""
    figure = _figure("tier", "round", "peer")
    identities = sorted({p.identity for p in snapshot.reputations})
    rounds = sorted({p.server_round for p in snapshot.reputations})
    level = {(p.identity, p.server_round): p.tier for p in snapshot.reputations}
    z = [
        [
            TIER_ORDER.index(level[(i, r)]) if level.get((i, r)) in TIER_ORDER else None
            for r in rounds
        ]
        for i in identities
    ]
    last = len(TIER_ORDER) - 1
    figure.add_trace(
        go.Heatmap(
            x=rounds,
            y=[short_id(i) for i in identities],
            z=z,
            zmin=0,
            zmax=last,
            colorscale=[
                [step / last, colour] for step, colour in enumerate(TIER_COLOURS)
            ],
            colorbar={
                "tickvals": list(range(len(TIER_ORDER))),
                "ticktext": list(TIER_ORDER),
            },
            hovertemplate="%{y}, round %{x}: %{customdata}<extra></extra>",
            customdata=[[level.get((i, r), "-") for r in rounds] for i in identities],
        )
    )
    return _whole_rounds(figure, rounds)


def leaderboard_rows(snapshot: DashboardSnapshot) -> list[dict[str, Any]]:
    """Rows of the tokens leaderboard table (full identities, for copying)."""
    return [
        {
            "rank": entry.rank,
            "peer": entry.identity,
            "tier": entry.tier,
            "reputation": (
                "-" if entry.reputation is None else f"{entry.reputation:.3f}"
            ),
            "tokens": f"{entry.tokens:.2f}",
            "accepted": entry.accepted,
            "rejected": entry.rejected,
        }
        for entry in snapshot.board
    ]


def judgement_rows(snapshot: DashboardSnapshot) -> list[dict[str, Any]]:
    """Rows of the table of down-weighted, rejected and weight-0 replies, newest
    first."""
    return [
        {
            "round": j.server_round,
            "peer": j.identity,
            "verdict": j.verdict,
            "weight": f"{j.weight:.3f}",
            "reason": j.reason,
        }
        for j in snapshot.judgements
    ]
