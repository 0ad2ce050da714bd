"""Experiment settings: one typed, validated view of the composed Hydra config.

The Hydra config (``conf/``) is composed once, by ``python -m flp2p.simulate`` or, when
the project runs as a Flower App (``flwr run .``), from the app's run config. Either
way it becomes a frozen :class:`RunSettings` that ServerApp and ClientApp share, so
every bad value is caught before any training starts, with a message naming the fix.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from flp2p.attacks import AttackSettings
from flp2p.data import PARTITION_SCHEMES, DatasetSpec, build_dataset
from flp2p.privacy_settings import PrivacySettings, build_privacy
from strategies.update_codecs import NoCompression, UpdateCodec, build_codec

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
"""The Hydra config directory of a source checkout (``conf/`` beside the package)."""

SIMULATION_BACKENDS = ("ray", "in_process")
"""``ray``: Flower's engine (a worker process per client, in parallel); ``in_process``:
:class:`flp2p.engine.InProcessGrid` (clients one after another, deterministic)."""


class ConfigError(ValueError):
    """An invalid setting; the message names the key and the fix."""


@dataclass(frozen=True)
class TrainSettings:
    """Local training hyper-parameters of every client."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    max_steps: int | None = None
    """Cap on local optimiser steps per round (``None``: all ``epochs``)."""


RESULT_NEUTRAL_SETTINGS = (
    "plot",
    "progress",
    "num_cpus",
    "cpus_per_client",
    "ray_address",
)
"""Settings that change how a run is executed or shown, not what it computes: a
resumed sweep may change them and still skip the runs already done."""


@dataclass(frozen=True)
class RunSettings:
    """Everything a federation run needs, validated.

    ``data``, ``attack``, ``privacy`` and ``compression`` are typed (a
    :class:`~flp2p.data.DatasetSpec`; :class:`~flp2p.attacks.AttackSettings`; one
    of :class:`~flp2p.privacy_settings.NoPrivacy`,
    :class:`~flp2p.dpsgd.DPSGDSettings`,
    :class:`~flp2p.privacy_settings.CentralPrivacy`; an
    :class:`~strategies.update_codecs.UpdateCodec`), built once from the config
    groups' ``_target_``. ``ray_address`` names an existing Ray cluster
    (``auto`` or ``HOST:PORT``; ``None`` starts a local one).
    """

    rounds: int
    clients: int
    seed: int
    data: DatasetSpec
    """The data set (``conf/dataset/<name>.yaml``)."""
    partition_scheme: str
    alpha: float
    fraction_train: float
    fraction_evaluate: float
    train: TrainSettings
    strategy: Mapping[str, Any]
    attack: AttackSettings
    privacy: PrivacySettings
    compression: UpdateCodec = field(default_factory=NoCompression)
    cpus_per_client: float = 1.0
    num_cpus: int | None = None
    backend: str = "ray"
    ray_address: str | None = None
    plot: bool = True
    progress: bool = True
    ledger_enabled: bool = True
    ledger_replicate: bool = True
    ledger_path: str | None = None

    @property
    def fingerprint(self) -> str:
        """SHA-256 of every setting that can change the run's result (all but
        :data:`RESULT_NEUTRAL_SETTINGS`): ``resume`` skips a finished run only if
        it was run with the same fingerprint, so a sweep whose rounds, data,
        attack or strategy changed never mixes old runs into new tables."""
        kept = [
            (f.name, getattr(self, f.name))
            for f in fields(self)
            if f.name not in RESULT_NEUTRAL_SETTINGS
        ]
        return hashlib.sha256(repr(kept).encode()).hexdigest()

    @property
    def client_threads(self) -> int:
        """Torch threads for one ClientApp call.

        Ray runs several clients at once, each in its own reserved CPUs; in process
        the clients take turns, so each may use every core.
        """
        if self.backend == "in_process":
            return self.num_cpus or os.cpu_count() or 1
        return max(1, int(self.cpus_per_client))

    @property
    def dataset(self) -> str:
        """Short name of the data set (``fmnist``, ``digits``)."""
        return self.data.name

    @property
    def data_dir(self) -> str | None:
        """Where the data set's files are read (``None``: its default place)."""
        return self.data.data_dir

    @property
    def strategy_name(self) -> str:
        """Name of the strategy config (``strategy.name``)."""
        return str(self.strategy.get("name", "custom"))

    @property
    def attack_name(self) -> str:
        """Name of the attack config (``attack.name``)."""
        return self.attack.name

    @property
    def privacy_name(self) -> str:
        """Name of the privacy choice (``none``, ``dpsgd`` or ``central``)."""
        return self.privacy.name

    @property
    def num_malicious(self) -> int:
        """How many clients the attack controls (``round(fraction × clients)``)."""
        if self.attack_name == "none":
            return 0
        return math.floor(self.attack.fraction * self.clients)

    @classmethod
    def from_config(cls, cfg: DictConfig | Mapping[str, Any]) -> RunSettings:
        """Validate a composed config and freeze it.

        Raises
        ------
        ConfigError
            On the first invalid value, naming the key.
        """
        if isinstance(cfg, DictConfig):
            container = OmegaConf.to_container(cfg, resolve=True)
            assert isinstance(container, dict)
            plain = {str(key): value for key, value in container.items()}
        else:
            plain = dict(cfg)
        return _settings_from_plain(plain)


def _settings_from_plain(cfg: dict[str, Any]) -> RunSettings:
    train_cfg = dict(cfg.get("train") or {})
    partition = dict(cfg.get("partition") or {})
    simulation = dict(cfg.get("simulation") or {})
    output = dict(cfg.get("output") or {})
    ledger = dict(cfg.get("ledger") or {})
    settings = RunSettings(
        rounds=_int(cfg, "rounds", minimum=1),
        clients=_int(cfg, "clients", minimum=1),
        seed=_int(cfg, "seed", minimum=0),
        data=_dataset(cfg.get("dataset")),
        partition_scheme=str(partition.get("scheme", "dirichlet")),
        alpha=float(partition.get("alpha", 0.5)),
        fraction_train=float(cfg.get("fraction_train", 1.0)),
        fraction_evaluate=float(cfg.get("fraction_evaluate", 0.0)),
        train=TrainSettings(
            epochs=_int(train_cfg, "epochs", minimum=1, prefix="train."),
            batch_size=_int(train_cfg, "batch_size", minimum=1, prefix="train."),
            lr=float(train_cfg.get("lr", 0.05)),
            momentum=float(train_cfg.get("momentum", 0.9)),
            max_steps=(
                None
                if train_cfg.get("max_steps") is None
                else _int(train_cfg, "max_steps", minimum=1, prefix="train.")
            ),
        ),
        strategy=dict(cfg.get("strategy") or {"name": "fedavg"}),
        attack=_attack(dict(cfg.get("attack") or {"name": "none"})),
        privacy=_privacy(dict(cfg.get("privacy") or {"name": "none"})),
        compression=_compression(dict(cfg.get("compression") or {"name": "none"})),
        cpus_per_client=float(simulation.get("cpus_per_client", 1)),
        num_cpus=simulation.get("num_cpus"),
        backend=str(simulation.get("backend", "ray")),
        ray_address=_ray_address(simulation.get("ray_address")),
        plot=bool(output.get("plot", True)),
        progress=bool(output.get("progress", True)),
        ledger_enabled=bool(ledger.get("enabled", True)),
        ledger_replicate=bool(ledger.get("replicate", True)),
        ledger_path=ledger.get("path"),
    )
    _check(settings)
    return settings


def _int(cfg: Mapping[str, Any], key: str, minimum: int, prefix: str = "") -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{prefix}{key} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{prefix}{key} must be ≥ {minimum}, got {value}")
    return value


def _attack(spec: Mapping[str, Any]) -> AttackSettings:
    fraction = float(spec.get("fraction", 0.0))
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"attack.fraction must lie in [0, 1), got {fraction}")
    try:
        return AttackSettings.from_spec(spec)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"attack {spec.get('name', 'none')!r}: {err}") from None


def _dataset(spec: Mapping[str, Any] | None) -> DatasetSpec:
    try:
        return build_dataset(spec)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None


def _privacy(spec: Mapping[str, Any]) -> PrivacySettings:
    try:
        return build_privacy(spec)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"privacy {spec.get('name', 'none')!r}: {err}") from None


def _compression(spec: Mapping[str, Any]) -> UpdateCodec:
    try:
        return build_codec(spec)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"compression {spec.get('name', 'none')!r}: {err}") from None


def _ray_address(value: Any) -> str | None:
    """``simulation.ray_address``: ``None``, ``auto`` or ``HOST:PORT``."""
    if value is None or value == "":
        return None
    address = str(value)
    if address == "auto":
        return address
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"simulation.ray_address must be auto or HOST:PORT, got {address!r}"
        )
    return address


def _check(s: RunSettings) -> None:
    if s.partition_scheme not in PARTITION_SCHEMES:
        raise ConfigError(
            f"partition.scheme must be one of {', '.join(PARTITION_SCHEMES)}, "
            f"got {s.partition_scheme!r}"
        )
    if not s.alpha > 0:
        raise ConfigError(f"partition.alpha must be > 0, got {s.alpha}")
    for key, value in (
        ("fraction_train", s.fraction_train),
        ("fraction_evaluate", s.fraction_evaluate),
    ):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key} must lie in [0, 1], got {value}")
    if s.fraction_train == 0.0:
        raise ConfigError("fraction_train must be > 0: nobody would train")
    if not s.train.lr > 0:
        raise ConfigError(f"train.lr must be > 0, got {s.train.lr}")
    if not 0.0 <= s.train.momentum < 1.0:
        raise ConfigError(f"train.momentum must lie in [0, 1), got {s.train.momentum}")
    if s.cpus_per_client <= 0:
        raise ConfigError("simulation.cpus_per_client must be > 0")
    if s.ray_address is not None and s.num_cpus is not None:
        raise ConfigError(
            "simulation.num_cpus must be null with simulation.ray_address: the "
            "cluster's nodes bring their own CPUs"
        )
    if s.ray_address is not None and s.backend != "ray":
        raise ConfigError("simulation.ray_address needs simulation.backend=ray")
    if s.backend not in SIMULATION_BACKENDS:
        raise ConfigError(
            f"simulation.backend must be one of {', '.join(SIMULATION_BACKENDS)}, "
            f"got {s.backend!r}"
        )
    if "_target_" not in s.strategy:
        raise ConfigError(
            f"strategy {s.strategy_name!r} has no _target_: name the strategy class "
            "in conf/strategy/<name>.yaml"
        )


def compose(overrides: Sequence[str] = (), config_dir: Path = CONF_DIR) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides, outside ``@hydra.main``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if not config_dir.is_dir():
        raise ConfigError(f"config directory {config_dir} not found")
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir)):
        return hydra_compose(config_name="config", overrides=list(overrides))


def build_strategy(
    settings: RunSettings,
    wrap: Callable[[Any], Any] | None = None,
    **extra: Any,
) -> Any:
    """Instantiate ``strategy._target_`` with the run's sampling arguments, once.

    Arguments the class accepts and the config leaves unset are filled from the run:
    ``fraction_train``, ``fraction_evaluate``, ``min_available_nodes`` (all clients,
    so that no round starts before every virtual client registered),
    and, for Flower's built-ins only (``flwr_krum`` …, which need a count),
    ``num_malicious_nodes`` (the attack's count) and for Multi-Krum
    ``num_nodes_to_select`` (n − f). flp2p's own rules never get the attack's
    count: they take ``f = ⌊byzantine_fraction · n⌋`` of each round's valid replies
    (their config, default 0.3), so that no defence is told how many attackers the
    run has. ``extra`` is passed to the constructor as is
    (e.g. a recorder), when the class accepts it. Nested ``_target_`` entries of the
    strategy config (e.g. its ``detectors`` list) are instantiated with Hydra first.
    With ``privacy=central`` the strategy is held by a
    :class:`strategies.central_dp.CentralDP`; ``wrap`` may then hold the result in
    one more wrapper (e.g. ``lambda s: LedgerBroadcast(s, ledger)``).
    """
    from hydra.utils import get_class

    from strategies.base import ScreenedFedAvg

    params = {k: v for k, v in settings.strategy.items() if k not in {"name"}}
    target = params.pop("_target_")
    try:
        cls = get_class(target)
    except Exception as err:  # Hydra wraps import errors in several types
        raise ConfigError(
            f"strategy {settings.strategy_name!r}: cannot import {target!r} ({err})"
        ) from None
    accepted = dict(inspect.signature(cls).parameters)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        # flp2p strategies forward ScreenedFedAvg's (hence FedAvg's) arguments
        # through **options; intermediate classes may fix some of their own.
        from flwr.serverapp.strategy import FedAvg

        forwarded = ScreenedFedAvg if issubclass(cls, ScreenedFedAvg) else FedAvg
        accepted.update(inspect.signature(forwarded).parameters)
    f = settings.num_malicious
    defaults: dict[str, Any] = {
        "fraction_train": settings.fraction_train,
        "fraction_evaluate": settings.fraction_evaluate,
        "min_available_nodes": settings.clients,
        "min_train_nodes": max(
            1, math.ceil(settings.fraction_train * settings.clients)
        ),
        "min_evaluate_nodes": 0 if settings.fraction_evaluate == 0 else 1,
        "num_malicious_nodes": f,
        "num_nodes_to_select": max(1, settings.clients - f),
    }
    if cls.__module__.split(".")[0] == "strategies":
        del defaults["num_malicious_nodes"], defaults["num_nodes_to_select"]
    for key, value in {**defaults, **extra}.items():
        if key in accepted and key not in params:
            params[key] = value
    unknown = sorted(set(params) - set(accepted))
    if unknown and not any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()
    ):
        raise ConfigError(
            f"strategy {settings.strategy_name!r}: {cls.__name__} takes no "
            f"argument(s) {', '.join(unknown)}"
        )
    if settings.compression.compresses and not (
        isinstance(cls, type) and issubclass(cls, ScreenedFedAvg)
    ):
        raise ConfigError(
            f"compression={settings.compression.name} needs an flp2p strategy (it "
            f"decodes the replies), not {cls.__name__}: use strategy=screened_fedavg "
            "(FedAvg semantics) or strategy=trusted"
        )
    central = settings.privacy_name == "central"
    privacy = _central_dp_variant(settings, cls) if central else None
    # Flower warns when fraction_evaluate is 0; here that is the configured choice
    # (central evaluation runs every round), so keep the console for real problems.
    flwr_logger = logging.getLogger("flwr")
    previous_level = flwr_logger.level
    flwr_logger.setLevel(max(previous_level, logging.ERROR))
    try:
        params = {key: _instantiated(value) for key, value in params.items()}
        strategy = cls(**params)
        if privacy is not None:
            from strategies.central_dp import CentralDP

            strategy = CentralDP(strategy, **privacy)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"strategy {settings.strategy_name!r}: {err}") from None
    except Exception as err:  # Hydra's InstantiationError wraps the cause
        if type(err).__name__ != "InstantiationError":
            raise
        raise ConfigError(f"strategy {settings.strategy_name!r}: {err}") from None
    finally:
        flwr_logger.setLevel(previous_level)
    return strategy if wrap is None else wrap(strategy)


def _instantiated(value: Any) -> Any:
    """``value`` with every nested ``{_target_: ...}`` mapping built by Hydra."""
    from hydra.utils import instantiate

    if isinstance(value, Mapping) and "_target_" in value:
        return instantiate(dict(value))
    if isinstance(value, list | tuple):
        return [_instantiated(item) for item in value]
    return value


def _central_dp_variant(settings: RunSettings, cls: type) -> dict[str, Any]:
    """The arguments of the :class:`~strategies.central_dp.CentralDP` wrapper."""
    from strategies.base import ScreenedFedAvg

    if not (isinstance(cls, type) and issubclass(cls, ScreenedFedAvg)):
        raise ConfigError(
            f"privacy=central needs an flp2p strategy, not {cls.__name__}: use "
            "strategy=screened_fedavg (FedAvg semantics) or strategy=trusted"
        )
    from flp2p.privacy_settings import CentralPrivacy

    privacy = settings.privacy
    if not isinstance(privacy, CentralPrivacy):
        raise ConfigError(
            f"privacy=central needs {CentralPrivacy.__name__} settings, "
            f"not {type(privacy).__name__}"
        )
    # One planner (CentralPrivacy) for the noise, the share cap and the clip count.
    try:
        return privacy.strategy_kwargs(
            settings.fraction_train, settings.clients, settings.rounds, settings.seed
        )
    except ValueError as err:
        raise ConfigError(f"privacy 'central': {err}") from None
