"""The Flower App folder and SuperLink connection the aggregator submits with.

``flwr run`` takes an app folder (its ``pyproject.toml`` names the components and
declares the run config) and a named SuperLink connection from
``$FLWR_HOME/config.toml``. The aggregator writes both into its work folder: the
components are those of :mod:`flp2p.peer.federation_app`, importable from the installed
``flp2p`` package, and the run config is the federation's resolved settings (one
JSON value) plus the ``peer.`` keys, so the run is fully described by files the
aggregator controls.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from flp2p.dht.codec import JSONValue

APP_NAME = "flp2p-peer"
CONNECTION_NAME = "flp2p-peer"
"""Name of the SuperLink connection in the aggregator's ``config.toml``."""


def toml_value(value: JSONValue) -> str:
    """A TOML literal for a scalar (JSON's strings, numbers and booleans are TOML's).

    Raises
    ------
    ValueError
        For ``None``, lists and tables, which a Flower run config cannot hold.
    """
    if value is None or isinstance(value, (list, dict)):
        raise ValueError(f"run-config values must be scalars, got {value!r}")
    return json.dumps(value)


def flatten_parameters(
    parameters: Mapping[str, JSONValue], prefix: str = ""
) -> dict[str, JSONValue]:
    """Nested genesis parameters as dotted keys (``partition.alpha``), the form of
    Hydra overrides."""
    flat: dict[str, JSONValue] = {}
    for key, value in parameters.items():
        if isinstance(value, dict):
            flat.update(flatten_parameters(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def app_pyproject(run_config: Mapping[str, JSONValue]) -> str:
    """``pyproject.toml`` of the peer Flower App with ``run_config`` as its config."""
    lines = [
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        f'name = "{APP_NAME}"',
        'version = "1.0.0"',
        "dependencies = []",
        "",
        "[tool.hatch.build.targets.wheel]",
        'packages = ["."]',
        "",
        "[tool.flwr.app]",
        'publisher = "flp2p"',
        "",
        "[tool.flwr.app.components]",
        'serverapp = "flp2p.peer.federation_app:server_app"',
        'clientapp = "flp2p.peer.federation_app:client_app"',
        "",
        "[tool.flwr.app.config]",
    ]
    lines += [f"{key} = {toml_value(v)}" for key, v in sorted(run_config.items())]
    return "\n".join(lines) + "\n"


def connection_toml(address: str, root_certificate: Path | None) -> str:
    """``config.toml`` whose default SuperLink connection is ``address``."""
    trust = (
        "insecure = true"
        if root_certificate is None
        else f"root-certificates = {json.dumps(str(root_certificate))}"
    )
    return (
        f'[superlink]\ndefault = "{CONNECTION_NAME}"\n\n'
        f'[superlink.{CONNECTION_NAME}]\naddress = "{address}"\n{trust}\n'
    )


def write_app(
    work_dir: Path,
    run_config: Mapping[str, JSONValue],
    address: str,
    root_certificate: Path | None,
) -> tuple[Path, Path]:
    """Write the app folder and ``FLWR_HOME``; return both paths."""
    app_dir = work_dir / "app"
    flwr_home = work_dir / "flwr-home"
    app_dir.mkdir(parents=True, exist_ok=True)
    flwr_home.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text(app_pyproject(run_config))
    (flwr_home / "config.toml").write_text(connection_toml(address, root_certificate))
    return app_dir, flwr_home
