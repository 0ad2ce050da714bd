"""What the aggregator writes and runs: app folder, connection, commands, run config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tomli
from flwr.app import ArrayRecord, MetricRecord

from flp2p.app import arrays_to_record
from flp2p.config import ConfigError, RunSettings, compose
from flp2p.dht import Genesis
from flp2p.dht.codec import JSONValue
from flp2p.peer import federation_app
from flp2p.peer.aggregator import AggregatorError, peer_run_config, total_rounds
from flp2p.peer.app_folder import (
    connection_toml,
    flatten_parameters,
    toml_value,
    write_app,
)
from flp2p.peer.checkpoints import CheckpointStore
from flp2p.peer.federation_app import (
    CHECKPOINT_DIR_KEY,
    FEDERATION_KEY,
    SETTINGS_KEY,
    START_ROUND_KEY,
    ConcurrentEvaluation,
    PeerRun,
    experiment_settings,
    resolve_genesis,
    settings_json,
)
from flp2p.peer.processes import descendants, superlink_command, supernode_command
from strategies.records import update_sha256

FEDERATION = "fe" * 32


def test_flatten_parameters_uses_dotted_keys() -> None:
    nested: dict[str, JSONValue] = {
        "rounds": 2,
        "partition": {"alpha": 0.5, "scheme": "iid"},
    }
    assert flatten_parameters(nested) == {
        "rounds": 2,
        "partition.alpha": 0.5,
        "partition.scheme": "iid",
    }


def test_toml_value_refuses_what_a_run_config_cannot_hold() -> None:
    assert toml_value('say "hi"') == '"say \\"hi\\""'
    assert toml_value(True) == "true"
    bad_values: list[JSONValue] = [None, [1], {"a": 1}]
    for bad in bad_values:
        with pytest.raises(ValueError, match="scalars"):
            toml_value(bad)


def test_written_app_and_connection_parse_back(tmp_path: Path) -> None:
    settings = {"rounds": 3, "dataset": {"name": "digits"}, "partition": {"alpha": 0.1}}
    config = peer_run_config(
        settings,
        FEDERATION,
        1,
        tmp_path / "ckpt",
        tmp_path / "out",
    )
    certificate = tmp_path / "tls" / "superlink.crt"
    app_dir, home = write_app(tmp_path, config, "127.0.0.1:9999", certificate)
    app = tomli.loads((app_dir / "pyproject.toml").read_text())
    flwr = app["tool"]["flwr"]["app"]
    assert flwr["components"] == {
        "serverapp": "flp2p.peer.federation_app:server_app",
        "clientapp": "flp2p.peer.federation_app:client_app",
    }
    run_config = flwr["config"]
    # The experiment is one value: the resolved settings, exactly as given.
    peer_keys = run_config["peer"]
    assert json.loads(peer_keys.pop("settings")) == settings
    assert peer_keys == {
        "start-round": 1,
        "checkpoint-dir": str(tmp_path / "ckpt"),
        "federation": FEDERATION,
    }
    assert set(run_config) == {"peer", "output-dir"}
    assert run_config["output-dir"] == str(tmp_path / "out")
    connection = tomli.loads((home / "config.toml").read_text())["superlink"]
    name = connection["default"]
    assert connection[name] == {
        "address": "127.0.0.1:9999",
        "root-certificates": str(certificate),
    }


def test_insecure_connection() -> None:
    parsed = tomli.loads(connection_toml("127.0.0.1:1", None))["superlink"]
    assert parsed[parsed["default"]] == {"address": "127.0.0.1:1", "insecure": True}


def test_peer_keys_are_required_and_stripped_from_the_experiment() -> None:
    with pytest.raises(ValueError, match="not a peer-runtime run"):
        PeerRun.from_run_config({"rounds": 2})
    with pytest.raises(ValueError, match="not a peer-runtime run"):
        experiment_settings({"rounds": 2})
    run_config = {
        SETTINGS_KEY: settings_json(
            resolve_genesis({"rounds": 2, "dataset": "digits"})
        ),
        START_ROUND_KEY: 1,
        CHECKPOINT_DIR_KEY: "/tmp/c",
        FEDERATION_KEY: FEDERATION,
    }
    peer = PeerRun.from_run_config(run_config)
    assert (peer.start_round, peer.checkpoint_dir, peer.federation) == (
        1,
        Path("/tmp/c"),
        FEDERATION,
    )
    settings = experiment_settings(run_config, {"data-dir": "/data/mine"})
    assert settings.rounds == 2 and settings.dataset == "digits"
    assert settings.data_dir == "/data/mine"


def test_genesis_is_composed_once_into_the_settings_every_app_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    genesis: dict[str, JSONValue] = {
        "rounds": 2,
        "dataset": "digits",
        "strategy": "trusted",
        "partition": {"alpha": 0.1},
        "output": {"progress": False},
    }
    resolved = resolve_genesis(genesis)
    # The same settings a simulation composes from the same overrides ...
    expected = RunSettings.from_config(
        compose(
            [
                "rounds=2", "dataset=digits", "strategy=trusted",
                "partition.alpha=0.1", "output.progress=false",
            ]
        )
    )  # fmt: skip
    assert expected.strategy_name == "trusted" and expected.alpha == 0.1
    assert RunSettings.from_config(resolved) == expected
    with pytest.raises(ConfigError, match="rounds"):
        resolve_genesis({"rounds": 0})  # refused at the aggregator, before a run
    # ... and the apps read them without composing anything again.
    monkeypatch.setattr(federation_app, "compose", _no_second_composition)
    run_config = {SETTINGS_KEY: settings_json(resolved)}
    assert experiment_settings(run_config) == expected


def _no_second_composition(*args: object) -> None:
    raise AssertionError("the settings were composed again")


def test_checkpoints_are_numbered_in_federation_rounds(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    seen: list[int] = []

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        seen.append(server_round)
        return MetricRecord({"accuracy": 0.5})

    model = {"w": np.arange(4, dtype=np.float32)}
    with ConcurrentEvaluation(evaluate, store, start_round=3) as evaluate_fn:
        evaluate_fn(0, arrays_to_record(model))  # the starting model: already held
        assert store.rounds() == []
        evaluate_fn(1, arrays_to_record(model))
        evaluate_fn(2, arrays_to_record({"w": model["w"] + 1}))
        assert store.rounds() == [4, 5]
    assert store.load(5).sha256 == update_sha256({"w": model["w"] + 1})
    assert seen == [0, 1, 2]  # evaluation itself is unchanged


def test_total_rounds_comes_from_the_genesis() -> None:
    def genesis(parameters: dict[str, JSONValue]) -> Genesis:
        return Genesis("a" * 64, parameters, ("b" * 64,))

    assert total_rounds(genesis({"rounds": 4})) == 4
    bad_parameters: list[dict[str, JSONValue]] = [
        {},
        {"rounds": 0},
        {"rounds": True},
        {"rounds": "3"},
    ]
    for bad in bad_parameters:
        with pytest.raises(AggregatorError, match="positive 'rounds'"):
            total_rounds(genesis(bad))


def test_superlink_command_tls_and_insecure(tmp_path: Path) -> None:
    crt, key = tmp_path / "c.crt", tmp_path / "c.key"
    tls = superlink_command("0.0.0.0", 9000, (crt, key))
    assert tls[tls.index("--host") + 1] == "0.0.0.0"  # binds where it is told
    assert tls[tls.index("--port") + 1] == "9000"
    assert tls[tls.index("--ssl-certfile") + 1] == str(crt)
    assert tls[tls.index("--ssl-ca-certfile") + 1] == str(crt)  # self-signed
    assert tls[tls.index("--ssl-keyfile") + 1] == str(key)
    assert "--insecure" not in tls
    plain = superlink_command("10.77.0.2", 9000, None)
    assert plain[plain.index("--host") + 1] == "10.77.0.2"
    assert "--insecure" in plain and "--ssl-certfile" not in plain


def test_supernode_command_quotes_strings_and_pins_the_root(tmp_path: Path) -> None:
    pem = tmp_path / "pin.pem"
    command = supernode_command(
        "127.0.0.1:9000", pem, 9100, {"partition-id": 1, "data-dir": "/d"}
    )
    assert command[command.index("--superlink") + 1] == "127.0.0.1:9000"
    # Its runtime API serves only the SuperExec it starts: never off this host.
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--root-certificates") + 1] == str(pem)
    assert command[command.index("--node-config") + 1] == 'partition-id=1 data-dir="/d"'
    assert "--insecure" in supernode_command("h:1", None, 9100, {})


def test_descendants_walks_the_whole_tree() -> None:
    tree = {1: [2, 3], 2: [4], 4: [5], 9: [10]}
    assert sorted(descendants(1, tree)) == [2, 3, 4, 5]
    assert descendants(5, tree) == []
