"""Malicious client behaviours, for evaluating robustness only.

An attack is chosen in config (``attack=alie attack.fraction=0.3``): each
``conf/attack/<name>.yaml`` names its class with ``_target_`` and gives the class's
arguments, and :meth:`AttackSettings.from_spec` builds it, so a new attack is its
class (anywhere importable) plus that one file. A seeded draw makes
``⌊fraction × clients⌋`` partitions malicious; every other client stays honest, and
the ClientApp's attack mod (:func:`flp2p.client_mods.attack_mod`) runs the attack on
the malicious ones.
Each attack may poison the client's data before training (:meth:`Attack.poison_data`)
and/or replace the trained update (:meth:`Attack.poison_update`). Updates are flat
float64 deltas (client model − global model); the ClientApp adds the poisoned delta
back to the global model before replying.

Attacks that need statistics of benign updates (ALIE, IPM) follow the colluding
threat model of Baruch et al. 2019: attackers train honestly on *their own* partitions
and share the results, so they know the mean and spread of the benign updates they
could have sent — not those of the honest clients. In simulation this collusion is
emulated by each attacker training on every malicious partition (cached per worker).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, ClassVar

import numpy as np

BenignDeltas = Callable[[], np.ndarray]
"""Returns the colluders' benign deltas, shape (num_malicious, d)."""


def malicious_partitions(
    num_clients: int, fraction: float, seed: int
) -> frozenset[int]:
    """The partitions an attack controls: ``⌊fraction × n⌋`` drawn with ``seed``."""
    count = math.floor(fraction * num_clients)
    order = np.random.default_rng([seed, 0xA77AC]).permutation(num_clients)
    return frozenset(int(p) for p in order[:count])


def build_attack(spec: Mapping[str, Any]) -> Attack:
    """The attack a config names: ``_target_`` is its class, the other keys but
    ``name`` and ``fraction`` are the class's arguments.

    Raises
    ------
    ValueError
        The spec names no class, one that cannot be imported or is no
        :class:`Attack`; ``TypeError`` from the class for a wrong argument.
    """
    from hydra.utils import get_class

    name = str(spec.get("name", "none"))
    params = {k: v for k, v in spec.items() if k not in {"name", "fraction"}}
    target = params.pop("_target_", None)
    if target is None:
        raise ValueError(
            f"attack {name!r} has no _target_: name its class in "
            f"conf/attack/{name}.yaml"
        )
    try:
        cls = get_class(str(target))
    except Exception:  # Hydra wraps import errors in several types
        raise ValueError(f"unknown attack {name!r}: cannot import {target!r}") from None
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise ValueError(f"attack {name!r}: {target!r} is not an flp2p.attacks.Attack")
    return cls(**params)


@dataclass(frozen=True)
class AttackSettings:
    """The configured attack (``conf/attack``): who is malicious and what they do.

    Attributes
    ----------
    name : str
        The config's name (reported in summaries).
    fraction : float
        Share of the clients the attack controls, in [0, 1).
    attack : Attack
        The behaviour of every malicious client (:class:`Attack`: honest).
    """

    name: str = "none"
    fraction: float = 0.0
    attack: Attack = field(default_factory=lambda: Attack())

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"attack.fraction must lie in [0, 1), got {self.fraction}")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> AttackSettings:
        """From the ``attack`` config group (:func:`build_attack` makes the attack;
        a spec naming neither a class nor an attack means every client is honest)."""
        name = str(spec.get("name", "none"))
        honest = "_target_" not in spec and name == "none"
        return cls(
            name=name,
            fraction=float(spec.get("fraction", 0.0)),
            attack=Attack() if honest else build_attack(spec),
        )

    def malicious(self, num_clients: int, seed: int) -> frozenset[int]:
        """The partitions this attack controls (:func:`malicious_partitions`)."""
        return malicious_partitions(num_clients, self.fraction, seed)


@dataclass(frozen=True)
class AttackContext:
    """What an attacker knows when it crafts its update."""

    honest_delta: np.ndarray
    """The update this client would send if honest (after any data poisoning)."""
    benign_deltas: BenignDeltas
    """Lazily computed benign updates of all colluding attackers."""
    num_malicious: int
    num_clients: int
    rng: np.random.Generator
    previous_delta: np.ndarray | None = None
    """What this client sent last time it was asked, if anything."""


class Attack:
    """Base class: an honest client. Subclasses override one or both hooks."""

    name: ClassVar[str] = "none"

    def poison_data(
        self, images: np.ndarray, labels: np.ndarray, num_classes: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Data the client trains on (default: its own, unchanged)."""
        return images, labels

    def poison_update(self, ctx: AttackContext) -> np.ndarray:
        """The delta the client sends (default: the honest one)."""
        return ctx.honest_delta

    def claimed_examples(self, num_examples: int) -> int:
        """The example count the client reports (default: the true one)."""
        return num_examples


class SignFlip(Attack):
    """Send the negated update: Δ' = −s·Δ (Damaskinos et al. 2018; Allen-Zhu 2020)."""

    name = "sign_flip"

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def poison_update(self, ctx: AttackContext) -> np.ndarray:
        return -self.scale * ctx.honest_delta


class GaussianNoise(Attack):
    """Send pure noise: Δ' ~ N(0, σ² I) (the Gaussian Byzantine of Blanchard 2017)."""

    name = "gaussian"

    def __init__(self, std: float = 0.1) -> None:
        self.std = std

    def poison_update(self, ctx: AttackContext) -> np.ndarray:
        return ctx.rng.normal(0.0, self.std, size=ctx.honest_delta.shape)


class Scaling(Attack):
    """Model replacement: a label-flipped update boosted by λ (Bagdasaryan et al. 2020).

    Δ' = λ·Δ_poisoned, so that after averaging with n − 1 benign updates the poisoned
    direction survives at full strength (λ ≈ n / number of attackers in the paper).
    """

    name = "scaling"

    def __init__(self, factor: float = 10.0) -> None:
        self.factor = factor

    def poison_data(
        self, images: np.ndarray, labels: np.ndarray, num_classes: int
    ) -> tuple[np.ndarray, np.ndarray]:
        return images, flip_labels(labels, num_classes)

    def poison_update(self, ctx: AttackContext) -> np.ndarray:
        return self.factor * ctx.honest_delta


class ALIE(Attack):
    """ "A Little Is Enough" (Baruch, Baruch & Goldberg, NeurIPS 2019).

    Every attacker sends Δ' = μ − z·σ (coordinate-wise mean and standard deviation
    of the colluders' benign updates), with z_max = Φ⁻¹((n − s) / n) and
    s = ⌊n / 2 + 1⌋ − f: the largest shift that still leaves the crafted update
    inside the majority's spread, so that median- and Krum-style rules accept it.
    """

    name = "alie"

    def __init__(self, z: float | None = None) -> None:
        self.z = z

    @staticmethod
    def z_max(num_clients: int, num_malicious: int) -> float:
        """Baruch et al.'s z for n clients of which f are malicious."""
        supporters = math.floor(num_clients / 2 + 1) - num_malicious
        quantile = (num_clients - supporters) / num_clients
        return NormalDist().inv_cdf(min(max(quantile, 1e-6), 1 - 1e-6))

    def poison_update(self, ctx: AttackContext) -> np.ndarray:
        benign = ctx.benign_deltas()
        z = (
            self.z
            if self.z is not None
            else self.z_max(ctx.num_clients, ctx.num_malicious)
        )
        return benign.mean(axis=0) - z * benign.std(axis=0)


class IPM(Attack):
    """Inner-product manipulation (Xie, Koyejo & Gupta, UAI 2019).

    Δ' = −ε·μ with μ the mean benign update: a small ε keeps the crafted update close
    to the benign ones (it evades distance-based rules) while making the inner product
    of the aggregate with the true gradient negative once enough attackers join.
    """

    name = "ipm"

    def __init__(self, epsilon: float = 0.5) -> None:
        self.epsilon = epsilon

    def poison_update(self, ctx: AttackContext) -> np.ndarray:
        return -self.epsilon * ctx.benign_deltas().mean(axis=0)


class LabelFlip(Attack):
    """Train on flipped labels y → C − 1 − y (Tolpegin et al. 2020)."""

    name = "label_flip"

    def poison_data(
        self, images: np.ndarray, labels: np.ndarray, num_classes: int
    ) -> tuple[np.ndarray, np.ndarray]:
        return images, flip_labels(labels, num_classes)


class FreeRider(Attack):
    """Claim credit without training (Lin et al. 2019, "Free-riders in FL").

    ``mode="zero"`` returns the global model (Δ' = 0, optionally with tiny noise to
    dodge an exact-zero check); ``mode="stale"`` replays the previous round's update.
    """

    name = "free_rider"

    def __init__(self, mode: str = "zero", noise: float = 1e-4) -> None:
        if mode not in {"zero", "stale"}:
            raise ValueError(f"free_rider mode must be 'zero' or 'stale', got {mode!r}")
        self.mode = mode
        self.noise = noise

    def poison_update(self, ctx: AttackContext) -> np.ndarray:
        if self.mode == "stale":
            # The first time it must train once to have something to replay.
            if ctx.previous_delta is None:
                return ctx.honest_delta
            return ctx.previous_delta
        return ctx.rng.normal(0.0, self.noise, size=ctx.honest_delta.shape)


class Sybil(Attack):
    """Colluding Sybils: one crafted update sent under several identities.

    All attackers send the same Δ' = −s·μ (the negated mean of their benign updates)
    and inflate their example count ×k, so that identity-blind weighting hands them
    a large share (Fung, Yoon & Beschastnikh 2020, "FoolsGold").
    """

    name = "sybil"

    def __init__(self, scale: float = 1.0, examples_factor: float = 3.0) -> None:
        self.scale = scale
        self.examples_factor = examples_factor

    def poison_update(self, ctx: AttackContext) -> np.ndarray:
        return -self.scale * ctx.benign_deltas().mean(axis=0)

    def claimed_examples(self, num_examples: int) -> int:
        return round(num_examples * self.examples_factor)


def flip_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Map each label y to C − 1 − y (a permutation with no fixed point for even C)."""
    return (num_classes - 1 - labels).astype(labels.dtype)
