"""One look for every benchmark figure: a fixed colour per strategy, labelled axes."""

from __future__ import annotations

from typing import Any

STRATEGY_ORDER = (
    "fedavg", "fedmedian", "fedtrimmedavg", "flwr_krum", "flwr_multikrum",
    "flwr_bulyan", "screened_fedavg", "median", "trimmed_mean", "krum", "multikrum",
    "bulyan", "geometric_median", "centered_clipping", "trusted", "trusted_median",
    "detectors_only",
)  # fmt: skip
"""Display order: Flower's built-ins first, then ours."""

_PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
    "#ff9da7", "#9c755f", "#bab0ac", "#1f77b4", "#8c564b", "#17becf", "#bcbd22",
    "#d62728", "#e377c2", "#2ca02c",
)  # fmt: skip
STRATEGY_COLORS = dict(zip(STRATEGY_ORDER, _PALETTE, strict=True))
"""Strategy name → colour, the same in every figure."""
CLEAN_FEDAVG_STYLE: dict[str, Any] = {
    "color": "black",
    "linestyle": "--",
    "linewidth": 1.2,
}
"""The clean-FedAvg reference line drawn on every robustness plot."""


def color_of(strategy: str) -> str:
    """The strategy's colour (grey for names outside the palette)."""
    return STRATEGY_COLORS.get(strategy, "#7f7f7f")


def ordered(strategies: list[str]) -> list[str]:
    """``strategies`` in display order, unknown names last (alphabetically)."""
    rank = {name: i for i, name in enumerate(STRATEGY_ORDER)}
    return sorted(strategies, key=lambda s: (rank.get(s, len(rank)), s))
