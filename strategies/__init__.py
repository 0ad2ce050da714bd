"""Flower strategies for federations of peers that do not trust each other.

Every strategy here is a Message-API strategy (``flwr.serverapp.strategy``) built on
:class:`ScreenedFedAvg`: each reply is validated on its own, a bad one is dropped with
its reason instead of aborting the run, and no reply is ever mutated. The pure rules
behind them (numpy in, numpy out) live in :mod:`strategies.aggregators`.

>>> from strategies import Median
>>> strategy = Median(min_available_nodes=10)   # doctest: +SKIP

The extension kit, for a strategy of one's own:

* a robust rule: :class:`RobustRuleFedAvg` ``(rule=..., preaggregator=...)`` turns
  any :class:`~strategies.aggregators.AggregationRule` (or a :class:`RoundRule` that
  explains each row) into a strategy; raise :class:`InsufficientReplies` to skip a
  round;
* a detector: any :class:`Detector` in ``TrustedFedAvg(detectors=[...])`` (run by a
  :class:`DetectorPanel`); reputation knobs in :class:`ReputationPolicy`;
* a hook of one's own: subclass :class:`ScreenedFedAvg` and return an
  :class:`AggregationOutcome` from ``aggregate_updates``, taking
  :class:`ScreenedFedAvgOptions` as ``**options``;
* a layer around any strategy: :class:`StrategyWrapper` (as :class:`CentralDP`).
"""

from strategies import aggregators
from strategies.base import (
    AggregationOutcome,
    InsufficientReplies,
    ScreenedFedAvg,
    ScreenedFedAvgOptions,
    UpdateBatch,
)
from strategies.bulyan import Bulyan
from strategies.centered_clipping import CenteredClipping
from strategies.central_dp import CentralDP
from strategies.detection import Detector, DetectorPanel
from strategies.geometric_median import GeometricMedian
from strategies.krum import Krum, MultiKrum
from strategies.median import Median
from strategies.records import (
    Contribution,
    InMemoryStore,
    ReputationState,
    ReputationStore,
    RoundRecorder,
    RoundReport,
    Tier,
    Transactional,
    Verdict,
)
from strategies.reputation import ReputationPolicy
from strategies.robust_rule import (
    AcceptEveryRow,
    PreAggregator,
    RobustRuleFedAvg,
    RoundRule,
)
from strategies.trimmed_mean import TrimmedMean
from strategies.trusted import DetectorsOnlyFedAvg, TrustedFedAvg, TrustedMedianFedAvg
from strategies.wrapping import StrategyWrapper

__all__ = [
    "AcceptEveryRow",
    "AggregationOutcome",
    "Bulyan",
    "CenteredClipping",
    "CentralDP",
    "Contribution",
    "Detector",
    "DetectorPanel",
    "DetectorsOnlyFedAvg",
    "GeometricMedian",
    "InMemoryStore",
    "InsufficientReplies",
    "Krum",
    "Median",
    "MultiKrum",
    "PreAggregator",
    "ReputationPolicy",
    "ReputationState",
    "ReputationStore",
    "RobustRuleFedAvg",
    "RoundRecorder",
    "RoundReport",
    "RoundRule",
    "ScreenedFedAvg",
    "ScreenedFedAvgOptions",
    "StrategyWrapper",
    "Tier",
    "Transactional",
    "TrimmedMean",
    "TrustedFedAvg",
    "TrustedMedianFedAvg",
    "UpdateBatch",
    "Verdict",
    "aggregators",
]
