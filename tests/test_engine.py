"""The in-process engine: Flower's Grid contract without Ray, and capped local steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flp2p.config import ConfigError, RunSettings, compose
from flp2p.data import load_digits
from flp2p.dpsgd import load_accountant, train_dpsgd
from flp2p.engine import InProcessGrid, run_federation_in_process
from flp2p.models import build_model, train
from flp2p.simulate import simulate


def counting_client_app() -> ClientApp:
    """Replies with its partition and a per-node call count; scribbles on its input."""
    app = ClientApp()

    @app.query()
    def _query(msg: Message, context: Context) -> Message:
        calls = int(context.state.config_records.get("calls", {"n": 0})["n"]) + 1
        context.state["calls"] = ConfigRecord({"n": calls})
        msg.content["scribble"] = ConfigRecord({"by": context.node_id})
        return Message(
            RecordDict(
                {
                    "out": ConfigRecord(
                        {
                            "partition": int(context.node_config["partition-id"]),
                            "calls": calls,
                        }
                    )
                }
            ),
            reply_to=msg,
        )

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        raise RuntimeError("this client is broken")

    return app


def query(grid: Grid, node_ids: list[int], server_round: int) -> list[Message]:
    messages = [
        Message(RecordDict(), dst_node_id=n, message_type="query", group_id=str(r))
        for n, r in zip(node_ids, [server_round] * len(node_ids), strict=True)
    ]
    return list(grid.send_and_receive(messages))


def test_each_node_keeps_its_own_context_across_rounds() -> None:
    grid = InProcessGrid(counting_client_app(), num_nodes=3, seed=1)
    nodes = list(grid.get_node_ids())
    assert len(set(nodes)) == 3
    query(grid, nodes, 1)
    replies = query(grid, nodes[:2], 2)
    by_node = {r.metadata.src_node_id: r.content["out"] for r in replies}
    assert set(by_node) == set(nodes[:2])
    assert [by_node[n]["calls"] for n in nodes[:2]] == [2, 2]
    assert sorted(int(v["partition"]) for v in by_node.values()) == [0, 1]
    third = query(grid, nodes[2:], 3)[0].content["out"]
    assert third["calls"] == 2 and third["partition"] == 2


def test_replies_answer_their_instruction_and_inputs_are_not_touched() -> None:
    grid = InProcessGrid(counting_client_app(), num_nodes=2)
    nodes = list(grid.get_node_ids())
    sent = Message(RecordDict(), dst_node_id=nodes[0], message_type="query")
    (reply,) = grid.send_and_receive([sent])
    assert reply.metadata.reply_to_message_id == sent.metadata.message_id
    assert reply.metadata.dst_node_id == sent.metadata.src_node_id
    assert "scribble" not in sent.content  # the ClientApp wrote on its own copy


def test_a_raising_client_app_becomes_an_error_reply() -> None:
    grid = InProcessGrid(counting_client_app(), num_nodes=2)
    nodes = list(grid.get_node_ids())
    messages = [
        Message(RecordDict(), dst_node_id=n, message_type="train") for n in nodes
    ]
    replies = list(grid.send_and_receive(messages))
    assert len(replies) == 2
    assert all(r.has_error() for r in replies)
    assert "this client is broken" in replies[0].error.reason


def test_flower_strategy_runs_on_the_in_process_grid() -> None:
    """Flower's own FedAvg.start drives the grid: sampling, train, aggregate."""
    client = ClientApp()

    @client.train()
    def _train(msg: Message, context: Context) -> Message:
        arrays = msg.content.array_records["arrays"].to_numpy_ndarrays()
        shift = float(context.node_config["partition-id"]) + 1.0
        content = RecordDict(
            {
                "arrays": ArrayRecord([a + shift for a in arrays]),
                "metrics": MetricRecord({"num-examples": 1}),
            }
        )
        return Message(content, reply_to=msg)

    server = ServerApp()
    results: list[np.ndarray] = []

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        out = FedAvg(fraction_evaluate=0.0).start(
            grid=grid, initial_arrays=ArrayRecord([np.zeros(3)]), num_rounds=2
        )
        results.append(out.arrays.to_numpy_ndarrays()[0])

    run_federation_in_process(server, client, num_clients=4)
    # Each round adds the mean shift (1 + 2 + 3 + 4) / 4 = 2.5.
    np.testing.assert_allclose(results[0], np.full(3, 5.0))


def test_in_process_simulation_is_reproducible(tmp_path: Path) -> None:
    overrides = [
        "dataset=digits",
        "rounds=2",
        "clients=4",
        "strategy=trusted",
        "attack=sign_flip",
        "simulation.backend=in_process",
        "train.max_steps=5",
        "output.progress=false",
        "output.plot=false",
    ]
    settings = RunSettings.from_config(compose(overrides))
    first = simulate(settings, tmp_path / "a")
    second = simulate(settings, tmp_path / "b")
    assert first["status"] == second["status"] == "completed"
    assert first["final_accuracy"] == second["final_accuracy"]
    assert (tmp_path / "a" / "metrics.csv").read_text().splitlines()[1:] != []
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["rounds_completed"] == 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("simulation.backend=threads", "simulation.backend must be one of"),
        ("train.max_steps=0", "train.max_steps must be ≥ 1"),
        ("train.max_steps=2.5", "train.max_steps must be an integer"),
    ],
)
def test_engine_settings_are_validated(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunSettings.from_config(compose([override]))


def test_client_threads_follow_the_backend() -> None:
    ray = RunSettings.from_config(compose(["simulation.cpus_per_client=1"]))
    local = RunSettings.from_config(
        compose(["simulation.backend=in_process", "simulation.num_cpus=3"])
    )
    assert ray.client_threads == 1
    assert local.client_threads == 3


def test_max_steps_caps_plain_and_private_training() -> None:
    data = load_digits()
    images, labels = data.train.images[:320], data.train.labels[:320]
    schedule = {"epochs": 2, "batch_size": 32, "lr": 0.05, "momentum": 0.0, "seed": 0}
    capped = train(build_model(data.image_shape, 10), images, labels, **schedule,
                   max_steps=7)  # fmt: skip
    full = train(build_model(data.image_shape, 10), images, labels, **schedule)
    assert (capped.steps, full.steps) == (7, 20)

    accountant = load_accountant(None, "rdp")
    private = train_dpsgd(
        build_model(data.image_shape, 10),
        images,
        labels,
        **schedule,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        accountant=accountant,
        epsilon_budget=None,
        delta=1e-5,
        max_steps=7,
    )
    assert private.steps <= 7
    assert sum(int(steps) for _, _, steps in accountant.history) == private.steps
