"""The ``privacy`` config group as types: no privacy, client DP-SGD or central DP.

Each ``conf/privacy/<name>.yaml`` names its settings class with ``_target_`` (Hydra's
idiom, as strategies and attacks do) and :func:`build_privacy` builds it, so a run
holds exactly one of :class:`NoPrivacy`, :class:`~flp2p.dpsgd.DPSGDSettings` or
:class:`CentralPrivacy`, validated, instead of a mapping every reader re-parses.
"""

from __future__ import annotations

import math
from collections.abc import ItemsView, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar


class PrivacySettings:
    """Base of the typed privacy choices; ``name`` is the config's name."""

    name: ClassVar[str]

    def spec(self) -> dict[str, Any]:
        """The settings as the config gave them (without ``name``)."""
        return dict(vars(self))

    def items(self) -> ItemsView[str, Any]:
        """``spec().items()``: lets code that read the privacy config as a mapping
        (``build_strategy``'s central-DP variant) read these settings unchanged."""
        return self.spec().items()


@dataclass(frozen=True)
class NoPrivacy(PrivacySettings):
    """No differential privacy (``privacy=none``)."""

    name: ClassVar[str] = "none"


@dataclass(frozen=True)
class CentralPrivacy(PrivacySettings):
    """User-level DP-FedAvg at the aggregator (``conf/privacy/central.yaml``).

    Give exactly one of ``noise_multiplier`` and ``target_epsilon`` (the noise is
    then planned for the whole run); ``max_share`` ``None`` caps each client's share
    at 2 / (clients per round). The other fields are
    :class:`strategies.central_dp.CentralDP`'s arguments of the same names.
    """

    name: ClassVar[str] = "central"
    target_epsilon: float | None = None
    noise_multiplier: float | None = None
    delta: float = 1e-5
    clip_norm: float = 1.0
    max_share: float | None = None
    adaptive_clipping: bool = False
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    clip_count_noise: float | None = None
    """Std of the noise on the adaptive clip count (``None``: participants / 20, as
    Andrew et al. 2021 suggest; unused without adaptive clipping)."""
    seed: int | None = None
    """Noise seed (``None``: the run's seed)."""

    def __post_init__(self) -> None:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("give exactly one of noise_multiplier or target_epsilon")

    def spec(self) -> dict[str, Any]:
        """The config's fields; ``seed`` only when set (the run's seed otherwise)."""
        fields = dict(vars(self))
        if fields["seed"] is None:
            del fields["seed"]
        return fields

    def strategy_kwargs(
        self, fraction_train: float, clients: int, rounds: int, seed: int
    ) -> dict[str, Any]:
        """The keyword arguments of :class:`~strategies.central_dp.CentralDP`.

        ``target_epsilon`` becomes the noise multiplier that spends it over
        ``rounds`` rounds sampled at ``fraction_train``; an unset ``max_share``
        becomes 2 / ⌈fraction_train × clients⌉ (at most 1); an unset seed the run's.
        With adaptive clipping the planned multiplier is what the aggregate's and the
        count's noise spend together, so the aggregate's own ``z`` is a little larger.
        """
        from strategies.central_dp import (
            noise_multiplier_for,
            update_noise_multiplier_for,
        )

        kwargs = self.spec()
        expected = max(1, math.ceil(fraction_train * clients))
        if kwargs["clip_count_noise"] is None:
            kwargs["clip_count_noise"] = (
                expected / 20 if self.adaptive_clipping else 0.0
            )
        target = kwargs.pop("target_epsilon")
        if target is not None:
            planned = noise_multiplier_for(
                float(target), self.delta, fraction_train, rounds
            )
            kwargs["noise_multiplier"] = (
                update_noise_multiplier_for(planned, kwargs["clip_count_noise"])
                if self.adaptive_clipping
                else planned
            )
        if kwargs["max_share"] is None:
            kwargs["max_share"] = min(1.0, 2.0 / expected)
        kwargs.setdefault("seed", seed)
        return kwargs


def build_privacy(spec: Mapping[str, Any]) -> PrivacySettings:
    """The settings a ``privacy`` config names (``_target_``; no config: none).

    Raises
    ------
    ValueError, TypeError
        An unknown class or a bad value (the message names it).
    """
    from strategies.config_instantiation import instantiate_config

    return instantiate_config(spec, PrivacySettings, group="privacy", default=NoPrivacy)
