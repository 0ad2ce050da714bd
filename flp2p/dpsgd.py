"""Client-side differential privacy: DP-SGD with Opacus (``privacy=dpsgd``).

Each client protects the examples of its own partition (sample-level DP, Abadi et al.
2016): per-example gradients are clipped to ``max_grad_norm`` and Gaussian noise of
standard deviation ``noise_multiplier × max_grad_norm`` is added to every batch sum.
One Opacus accountant per client lives across rounds — its history is kept in the
client's Flower context state — so the ε(δ) each reply reports is that client's
cumulative spend, and a client whose next round would exceed its budget stops
participating with a clear reason instead of training.
"""

from __future__ import annotations

import json
import math
import warnings
from copy import deepcopy
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from flwr.app import ConfigRecord
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from flp2p.models import LOSS_PROBE_SIZE, TrainResult, evaluate, seed_torch
from flp2p.privacy_settings import PrivacySettings

if TYPE_CHECKING:
    from opacus.accountants import IAccountant

# Opacus is imported where it is used: it pulls in torch.distributed and takes
# seconds, which every ClientApp process (one per round on a SuperNode) would pay
# even without DP.

ACCOUNTANT_STATE_KEY = "flp2p-dpsgd-accountant"
"""ConfigRecord in the client's context state holding its accountant history."""
DPSGD_KEY = "flp2p-dpsgd"
"""ConfigRecord the DP-SGD client mod adds to the instruction it forwards (the
settings and the accountant so far: :meth:`PrivateTraining.to_record`), and the
local trainer adds to its reply (the accountant's new history)."""


class PrivacyBudgetExceeded(RuntimeError):
    """Training once more would spend more than the client's ε budget."""


@dataclass(frozen=True)
class DPSGDSettings(PrivacySettings):
    """DP-SGD parameters (``conf/privacy/dpsgd.yaml``).

    Give either ``noise_multiplier`` or ``target_epsilon``; with ``target_epsilon``
    the noise is planned once for the whole run (``rounds × local steps``), because
    Opacus' ``make_private_with_epsilon`` assumes nothing was spent before.
    """

    name: ClassVar[str] = "dpsgd"
    noise_multiplier: float | None = 1.0
    target_epsilon: float | None = None
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = "rdp"
    epsilon_budget: float | None = None
    """Refuse to train past this ε (defaults to ``target_epsilon``)."""
    secure_mode: bool = False
    """Cryptographically secure noise (Opacus ``secure_mode``; needs torchcsprng)."""

    def __post_init__(self) -> None:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("give exactly one of noise_multiplier or target_epsilon")
        if self.noise_multiplier is not None and self.noise_multiplier <= 0:
            raise ValueError(
                f"noise_multiplier must be > 0, got {self.noise_multiplier}"
            )
        if self.target_epsilon is not None and self.target_epsilon <= 0:
            raise ValueError(f"target_epsilon must be > 0, got {self.target_epsilon}")
        if self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must lie in (0, 1), got {self.delta}")
        from opacus.accountants.registry import create_accountant

        create_accountant(self.accountant)  # raises on an unknown mechanism

    @property
    def budget(self) -> float | None:
        """The ε a client may not exceed, if any."""
        return (
            self.epsilon_budget
            if self.epsilon_budget is not None
            else (self.target_epsilon)
        )


@dataclass(frozen=True)
class PrivateTraining:
    """A DP-SGD client's settings and its cross-round accountant."""

    settings: DPSGDSettings
    accountant: IAccountant

    @property
    def epsilon(self) -> float:
        """ε spent so far at the configured δ."""
        return float(self.accountant.get_epsilon(delta=self.settings.delta))

    def to_record(self) -> ConfigRecord:
        """Settings and accountant history as one ConfigRecord (:data:`DPSGD_KEY`)."""
        record = save_accountant(self.accountant)
        record["settings"] = json.dumps(asdict(self.settings))
        return record

    @classmethod
    def from_record(cls, record: ConfigRecord) -> PrivateTraining:
        """Inverse of :meth:`to_record`."""
        dp = DPSGDSettings(**json.loads(str(record["settings"])))
        return cls(dp, load_accountant(record, dp.accountant))


def steps_per_round(
    num_examples: int, batch_size: int, epochs: int, max_steps: int | None = None
) -> int:
    """Expected optimiser steps of one round (Poisson sampling, rate b / n)."""
    steps = epochs * max(1, math.ceil(num_examples / batch_size))
    return steps if max_steps is None else min(steps, max_steps)


def planned_noise_multiplier(
    dp: DPSGDSettings,
    num_examples: int,
    batch_size: int,
    epochs: int,
    rounds: int,
    max_steps: int | None = None,
) -> float:
    """σ for this client: given, or solved so ``rounds`` rounds spend the target."""
    if dp.noise_multiplier is not None:
        return dp.noise_multiplier
    assert dp.target_epsilon is not None
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=dp.target_epsilon,
            target_delta=dp.delta,
            sample_rate=min(1.0, batch_size / num_examples),
            steps=rounds * steps_per_round(num_examples, batch_size, epochs, max_steps),
            accountant=dp.accountant,
        )
    )


def load_accountant(state: ConfigRecord | None, mechanism: str) -> IAccountant:
    """The client's accountant, restored from its context state (empty if new)."""
    from opacus.accountants.registry import create_accountant

    accountant = create_accountant(mechanism)
    if state is not None and "history" in state:
        accountant.history = [tuple(h) for h in json.loads(str(state["history"]))]
    return accountant


def save_accountant(accountant: IAccountant) -> ConfigRecord:
    """The accountant's history as a ConfigRecord for the context state."""
    return ConfigRecord({"history": json.dumps([list(h) for h in accountant.history])})


def epsilon_after(
    accountant: IAccountant,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
) -> float:
    """ε the client would have spent after ``steps`` more steps (state unchanged)."""
    preview = deepcopy(accountant)
    preview.history.append((noise_multiplier, sample_rate, steps))
    return float(preview.get_epsilon(delta=delta))


def train_dpsgd(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    seed: int,
    noise_multiplier: float,
    max_grad_norm: float,
    accountant: IAccountant,
    epsilon_budget: float | None,
    delta: float,
    secure_mode: bool = False,
    max_steps: int | None = None,
) -> TrainResult:
    """DP-SGD for ``epochs`` local epochs; ``accountant`` accumulates the spend.

    Raises
    ------
    PrivacyBudgetExceeded
        Before touching the data, when this round would push ε past the budget.
    """
    if len(labels) == 0:
        raise ValueError("cannot train on an empty partition")
    sample_rate = min(1.0, batch_size / len(labels))
    steps = steps_per_round(len(labels), batch_size, epochs, max_steps)
    if epsilon_budget is not None:
        projected = epsilon_after(
            accountant, noise_multiplier, sample_rate, steps, delta
        )
        if projected > epsilon_budget:
            raise PrivacyBudgetExceeded(
                f"privacy budget exhausted: another round would bring ε to "
                f"{projected:.2f} > budget {epsilon_budget:.2f} (δ={delta:g})"
            )
    from opacus import PrivacyEngine
    from opacus.validators import ModuleValidator

    if not ModuleValidator.is_valid(model):
        model = ModuleValidator.fix(model)
    seed_torch(seed)
    probe = slice(0, LOSS_PROBE_SIZE)
    loss_before = evaluate(model, images[probe], labels[probe])[0]
    model.train()  # Opacus refuses a module in eval mode
    with warnings.catch_warnings():
        # Opacus warns on every engine that secure RNG is off; that is the
        # configured choice (privacy.secure_mode), not news each round.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(
            accountant=accountant.mechanism(), secure_mode=secure_mode
        )
    engine.accountant = accountant  # one accountant across rounds, not one per round
    loader = DataLoader(
        TensorDataset(torch.from_numpy(images), torch.from_numpy(labels)),
        batch_size=batch_size,
        generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    private_model, private_optimizer, private_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
    )
    criterion = nn.CrossEntropyLoss()
    private_model.train()
    taken = 0
    with warnings.catch_warnings():
        # Opacus' per-sample hooks fire on the first layer, whose input (the data)
        # needs no gradient; torch warns about that on every step.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for _ in range(epochs):
            for x, y in private_loader:
                if taken >= steps:
                    break
                private_optimizer.zero_grad()
                if len(y) == 0:  # Poisson sampling can draw an empty batch
                    continue
                criterion(private_model(x), y).backward()
                private_optimizer.step()
                taken += 1
    loss_after = evaluate(model, images[probe], labels[probe])[0]
    return TrainResult(len(labels), loss_before, loss_after, taken)
