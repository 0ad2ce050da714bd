"""A strategy that holds another strategy: composition instead of run-time subclasses.

Flower's own ``DifferentialPrivacyServerSide*`` strategies hold the strategy they
privatise and forward every call to it. :class:`StrategyWrapper` is that shape for
flp2p: a wrapper overrides only what it changes (central DP changes the aggregation,
the ledger broadcast the training instruction) and forwards the rest. Attributes it
does not define are read from the held strategy, so a wrapped strategy still answers
``strategy.recorder``, ``strategy.reputations()`` or ``strategy.epsilon`` whichever
layer defines them; wrappers nest (``LedgerBroadcast(CentralDP(TrustedFedAvg()))``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy


class StrategyWrapper(Strategy):
    """Forwards every :class:`flwr.serverapp.strategy.Strategy` call to ``strategy``.

    Parameters
    ----------
    strategy : Strategy
        The strategy held (any Flower Message-API strategy).
    """

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes this object lacks. "strategy" itself is
        # excluded so that a half-built wrapper (copy, unpickling) cannot recurse.
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    def innermost(self) -> Strategy:
        """The strategy at the bottom of a stack of wrappers."""
        inner = self.strategy
        while isinstance(inner, StrategyWrapper):
            inner = inner.strategy
        return inner

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The held strategy's training instructions."""
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The held strategy's aggregate."""
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The held strategy's evaluation instructions."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """The held strategy's evaluation metrics."""
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        """The held strategy's summary."""
        self.strategy.summary()
