"""ByzFL's aggregators as a rule of :class:`strategies.RobustRuleFedAvg`.

So that ByzFL's pipelines (Allouah et al., "ByzFL", 2024) run through the same
Flower app as our strategies in the Fashion-MNIST robustness matrix
(``conf/strategy/byzfl_*.yaml``), not only at the update level
(``benchmarks/robust_updates.py``). Evaluation only: it lives in ``benchmarks/``
because ByzFL is no dependency of the library (installed ``--no-deps``, see
``pyproject.toml``); ``strategy=byzfl_nnm_median`` needs the repository root on
``PYTHONPATH``, as every benchmark does.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from strategies.preaggregation import byzantine_count

TAKES_F = frozenset({"NNM", "ARC", "TrMean", "Krum", "MultiKrum", "Meamed", "CAF"})
"""ByzFL steps built with ``f``; the others take no argument."""


def load_byzfl_aggregators() -> types.ModuleType | None:
    """``byzfl.aggregators``, or ``None`` when ByzFL is not installed.

    ``byzfl/__init__`` also imports its training framework, which imports
    torchvision; a torchvision wheel built for another torch (the CUDA wheel next to
    a CPU torch) fails there. The aggregators need only numpy, torch and scipy, so
    then the package is registered without running its ``__init__``.
    """
    loaded = sys.modules.get("byzfl.aggregators")
    if loaded is not None:
        return loaded
    spec = importlib.util.find_spec("byzfl")
    if spec is None:
        return None
    try:
        return importlib.import_module("byzfl.aggregators")
    except (ImportError, RuntimeError):
        for name in [m for m in sys.modules if m == "byzfl" or m.startswith("byzfl.")]:
            del sys.modules[name]
    package = types.ModuleType("byzfl")
    package.__path__ = list(spec.submodule_search_locations or [])
    package.__spec__ = spec
    sys.modules["byzfl"] = package
    return importlib.import_module("byzfl.aggregators")


@dataclass(frozen=True)
class ByzFLPipeline:
    """ByzFL's ``steps`` in order (pre-aggregators, then one aggregator), each with
    ``f = ⌊byzantine_fraction · n⌋`` of the ``n`` rows of the round.

    ``f`` is capped at ``⌊(n − 1)/2⌋`` (and Krum's ``(n − 3)/2``); bucketing uses
    ByzFL's ``s = 2``. ByzFL's ARC clips in place and its bucketing draws from
    ``np.random``: rows are copied first, and ``seed`` seeds ``np.random`` on every
    call so that a round is reproducible.

    Parameters
    ----------
    steps : Sequence[str]
        Names of ``byzfl.aggregators`` classes, e.g. ``["NNM", "Median"]``.
    byzantine_fraction : float
        Assumed Byzantine fraction, ``0 ≤ β < 1``.
    seed : int
        Seed of ``np.random`` for ByzFL's random steps.
    """

    steps: Sequence[str] = ("NNM", "Median")
    byzantine_fraction: float = 0.3
    seed: int = 0
    supports_weights: ClassVar[bool] = False

    def __post_init__(self) -> None:
        byzfl = load_byzfl_aggregators()
        if byzfl is None:
            raise ValueError("ByzFL is not installed: pip install --no-deps byzfl")
        unknown = [step for step in self.steps if not hasattr(byzfl, step)]
        if not self.steps or unknown:
            raise ValueError(f"unknown ByzFL steps {unknown or list(self.steps)}")
        byzantine_count(self.byzantine_fraction, 1)  # refuses a bad fraction now
        object.__setattr__(self, "steps", tuple(self.steps))

    def built(self, n: int) -> list[Any]:
        """The steps for ``n`` rows."""
        byzfl = load_byzfl_aggregators()
        assert byzfl is not None
        f = byzantine_count(self.byzantine_fraction, n, lambda m: (m - 1) // 2)
        made = []
        for step in self.steps:
            if step in {"Krum", "MultiKrum"}:
                made.append(getattr(byzfl, step)(f=min(f, max(0, (n - 3) // 2))))
            elif step in TAKES_F:
                made.append(getattr(byzfl, step)(f=f))
            elif step == "Bucketing":
                made.append(byzfl.Bucketing(s=2))
            else:
                made.append(getattr(byzfl, step)())
        return made

    def __call__(self, updates: Any, weights: Any = None) -> np.ndarray:
        if weights is not None:
            raise ValueError("ByzFLPipeline does not take weights")
        vectors = np.array(np.asarray(updates), dtype=np.float64)
        np.random.seed(self.seed)  # noqa: NPY002 (ByzFL reads it)
        for step in self.built(vectors.shape[0]):
            vectors = np.asarray(step(vectors), dtype=np.float64)
        return vectors
