"""``python -m flp2p.simulate``: one federation, or a Hydra sweep, in simulation.

Examples
--------
::

    python -m flp2p.simulate                                  # FMNIST, 20 clients
    python -m flp2p.simulate dataset=digits rounds=2 clients=4
    python -m flp2p.simulate -m strategy=fedavg,fedmedian seed=0,1

Each run writes ``metrics.csv``, ``summary.json`` and ``accuracy.png`` into its Hydra
output folder; a sweep also writes ``results.csv`` (see :mod:`flp2p.sweep`).
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from flp2p.app import LEDGER_FILE, REPLICA_DIR, make_client_app, make_server_app
from flp2p.config import CONF_DIR, ConfigError, RunSettings, build_strategy
from flp2p.data import DatasetNotFoundError, partition_indices
from flp2p.engine import run_federation, run_federation_in_process
from flp2p.reporting import SUMMARY_FILE
from flp2p.tracking import TrackingSettings, record_run


class RayClusterUnreachable(RuntimeError):
    """``simulation.ray_address`` names a Ray head nobody answers at."""


USER_ERRORS = (ConfigError, DatasetNotFoundError)
CONFIG_GROUPS = ("strategy", "attack", "privacy", "compression", "dataset", "logger")


def check_group_choices(argv: list[str], config_dir: Path = CONF_DIR) -> None:
    """Reject an unknown config-group option before Hydra composes anything.

    Hydra's own message for ``strategy=nope`` is a dozen lines; this one names the
    options in one. Sweep lists (``strategy=a,b``) are checked item by item; Hydra's
    sweep functions (``choice(...)``, ``glob(...)``) are left to Hydra.
    """
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key not in CONFIG_GROUPS or "(" in value:
            continue
        available = sorted(p.stem for p in (config_dir / key).glob("*.yaml"))
        for choice in value.split(","):
            if choice not in available:
                raise ConfigError(
                    f"unknown {key} {choice!r}: choose one of {', '.join(available)}"
                )


def simulate(settings: RunSettings, output_dir: Path) -> dict[str, Any]:
    """Run one federation on Flower's simulation engine; return its summary.

    Raises
    ------
    ConfigError, DatasetNotFoundError
        Before anything runs, when the settings or the data set are unusable.
    RayClusterUnreachable
        Before anything runs, when ``simulation.ray_address`` names a head
        nobody answers at.
    """
    if settings.backend == "ray" and settings.ray_address not in (None, "auto"):
        check_ray_head(str(settings.ray_address))
    data = settings.data.load()
    if settings.clients > len(data.train):
        raise ConfigError(
            f"clients={settings.clients} exceeds the {len(data.train)} training "
            f"examples of {settings.dataset}"
        )
    build_strategy(settings)  # fail on a bad strategy before Ray starts
    discard_unfinished_run(output_dir, settings.fingerprint)
    partitions = tuple(
        partition_indices(
            data.train.labels,
            settings.clients,
            settings.partition_scheme,
            settings.alpha,
            settings.seed,
        )
    )
    server_app = make_server_app(settings, output_dir)
    client_app = make_client_app(
        settings,
        partitions,
        output_dir / REPLICA_DIR if settings.ledger_replicate else None,
    )
    if settings.backend == "in_process":
        run_federation_in_process(
            server_app, client_app, num_clients=settings.clients, seed=settings.seed
        )
    else:
        run_federation(
            server_app,
            client_app,
            num_clients=settings.clients,
            cpus_per_client=settings.cpus_per_client,
            num_cpus=settings.num_cpus,
            ray_address=settings.ray_address,
        )
    summary: dict[str, Any] = json.loads((output_dir / SUMMARY_FILE).read_text())
    return summary


def check_ray_head(address: str, timeout: float = 5.0) -> None:
    """Fail in one line, before anything runs, if no Ray head listens at
    ``HOST:PORT`` (Ray itself would retry for a minute, then print a traceback)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except OSError as err:
        raise RayClusterUnreachable(
            f"no Ray head answers at {address} ({err.strerror or err}): start one "
            "with `ray start --head --port PORT` or fix simulation.ray_address"
        ) from None


def discard_unfinished_run(output_dir: Path, fingerprint: str | None = None) -> None:
    """Remove what an interrupted run left in its folder before running it again.

    A rerun (``resume=true`` after a crash) must start from round 0: its run
    ledger would otherwise carry the reputations and blocks of the lost attempt.
    A folder holding a completed run (of the settings ``fingerprint`` names, if
    given) is left alone.
    """
    if completed_summary(output_dir, fingerprint) is not None:
        return
    for name in (LEDGER_FILE, f"{LEDGER_FILE}-wal", f"{LEDGER_FILE}-shm"):
        (output_dir / name).unlink(missing_ok=True)
    shutil.rmtree(output_dir / REPLICA_DIR, ignore_errors=True)


def completed_summary(
    output_dir: Path, fingerprint: str | None = None
) -> dict[str, Any] | None:
    """The summary of a run folder that already finished, else ``None``.

    With ``fingerprint`` (:attr:`RunSettings.fingerprint`), only a run of exactly
    those settings counts as finished: one of other settings (an older sweep's
    rounds, say) is not this run's result.
    """
    summary = _summary_of(output_dir)
    if summary is None or summary.get("status") != "completed":
        return None
    if fingerprint is not None and summary.get("settings_sha256") != fingerprint:
        return None
    return summary


def _summary_of(output_dir: Path) -> dict[str, Any] | None:
    path = output_dir / SUMMARY_FILE
    if not path.is_file():
        return None
    summary: dict[str, Any] = json.loads(path.read_text())
    return summary


def _discard_if_empty(output_dir: Path) -> None:
    """Remove a run folder holding nothing but Hydra's own bookkeeping."""
    leftovers = {p.name for p in output_dir.iterdir()} - {".hydra", "simulate.log"}
    if not leftovers:
        shutil.rmtree(output_dir, ignore_errors=True)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> dict[str, Any]:
    """Hydra entry point: compose, validate, simulate; one clear line on bad input."""
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        settings = RunSettings.from_config(cfg)
        tracking = TrackingSettings.from_spec(cfg.get("logger"))
        tracking.check_available()
        if cfg.get("resume"):
            done = completed_summary(output_dir, settings.fingerprint)
            if done is not None:
                print(
                    f"flp2p.simulate: {output_dir} already completed; skipped",
                    file=sys.stderr,
                )
                return done
            if completed_summary(output_dir) is not None:
                print(
                    f"flp2p.simulate: {output_dir} holds a run of other settings "
                    "(or of a version that did not record them); running it again",
                    file=sys.stderr,
                )
        try:
            return simulate(settings, output_dir)
        finally:
            if tracking.enabled and (output_dir / SUMMARY_FILE).is_file():
                container = OmegaConf.to_container(cfg, resolve=True)
                assert isinstance(container, dict)
                record_run(
                    tracking, {str(k): v for k, v in container.items()}, output_dir
                )
    except USER_ERRORS as err:
        _discard_if_empty(output_dir)
        print(f"flp2p.simulate: error: {err}", file=sys.stderr)
        sys.exit(2)
    except RayClusterUnreachable as err:
        _discard_if_empty(output_dir)
        print(f"flp2p.simulate: error: {err}", file=sys.stderr)
        sys.exit(1)


def cli() -> None:
    """``python -m flp2p.simulate``: check group choices, then hand over to Hydra."""
    try:
        check_group_choices(sys.argv[1:])
    except ConfigError as err:
        print(f"flp2p.simulate: error: {err}", file=sys.stderr)
        sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
