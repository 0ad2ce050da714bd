"""Client-side DP-SGD: accounting across rounds and budget enforcement."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from flp2p.app import make_client_app
from flp2p.client_mods import BUDGET_EXHAUSTED
from flp2p.config import ConfigError, RunSettings, compose
from flp2p.data import load_digits
from flp2p.dpsgd import (
    ACCOUNTANT_STATE_KEY,
    DPSGD_KEY,
    DPSGDSettings,
    PrivacyBudgetExceeded,
    load_accountant,
    planned_noise_multiplier,
    save_accountant,
    steps_per_round,
    train_dpsgd,
)
from flp2p.local_training import arrays_to_record, federation_name, initial_model
from flp2p.models import build_model
from strategies.records import METRICS_KEY


def dp_settings(*extra: str) -> RunSettings:
    return RunSettings.from_config(
        compose(["dataset=digits", "clients=4", "rounds=3", "privacy=dpsgd", *extra])
    )


def train_round(settings: RunSettings, context: Context, server_round: int) -> Message:
    arrays = arrays_to_record(
        {k: v.detach().numpy() for k, v in initial_model(settings).state_dict().items()}
    )
    config = ConfigRecord(
        {"server-round": server_round, "federation": federation_name(settings)}
    )
    msg = Message(
        content=RecordDict({"arrays": arrays, "config": config}),
        dst_node_id=2,
        message_type=MessageType.TRAIN,
    )
    return make_client_app(settings)(msg, context)


def fresh_context() -> Context:
    return Context(
        run_id=1,
        node_id=2,
        node_config={"partition-id": 1, "num-partitions": 4},
        state=RecordDict(),
        run_config={},
    )


def test_epsilon_accumulates_across_rounds_in_the_context() -> None:
    settings = dp_settings()
    context = fresh_context()
    spent = [
        train_round(settings, context, r).content[METRICS_KEY]["dp-epsilon"]
        for r in (1, 2, 3)
    ]
    assert 0 < spent[0] < spent[1] < spent[2]
    history = load_accountant(
        context.state.config_records[ACCOUNTANT_STATE_KEY], "rdp"
    ).history
    local = train_round(settings, fresh_context(), 1).content[METRICS_KEY]
    per_round = steps_per_round(int(local["num-examples"]), 32, 1)
    assert sum(steps for _, _, steps in history) == 3 * per_round


def test_a_new_accountant_per_round_would_under_report() -> None:
    settings = dp_settings()
    kept = fresh_context()
    for r in (1, 2):
        cumulative = train_round(settings, kept, r).content[METRICS_KEY]["dp-epsilon"]
    single = train_round(settings, fresh_context(), 2).content[METRICS_KEY][
        "dp-epsilon"
    ]
    assert cumulative > single


def test_client_over_budget_stops_with_a_reason() -> None:
    settings = dp_settings("privacy.epsilon_budget=0.5", "privacy.noise_multiplier=0.7")
    reply = train_round(settings, fresh_context(), 1)
    assert reply.has_error()
    assert reply.error.code == BUDGET_EXHAUSTED
    assert "privacy budget exhausted" in reply.error.reason


def test_more_noise_spends_less() -> None:
    data = load_digits()
    images, labels = data.train.images[:200], data.train.labels[:200]
    epsilons = []
    for sigma in (0.8, 1.6):
        accountant = load_accountant(None, "rdp")
        train_dpsgd(
            build_model(data.image_shape, 10),
            images,
            labels,
            epochs=1,
            batch_size=32,
            lr=0.1,
            momentum=0.0,
            seed=0,
            noise_multiplier=sigma,
            max_grad_norm=1.0,
            accountant=accountant,
            epsilon_budget=None,
            delta=1e-5,
        )
        epsilons.append(accountant.get_epsilon(delta=1e-5))
    assert epsilons[0] > epsilons[1] > 0


def test_budget_check_happens_before_any_step() -> None:
    data = load_digits()
    accountant = load_accountant(None, "rdp")
    with pytest.raises(PrivacyBudgetExceeded):
        train_dpsgd(
            build_model(data.image_shape, 10),
            data.train.images[:64],
            data.train.labels[:64],
            epochs=1,
            batch_size=32,
            lr=0.1,
            momentum=0.0,
            seed=0,
            noise_multiplier=0.5,
            max_grad_norm=1.0,
            accountant=accountant,
            epsilon_budget=0.01,
            delta=1e-5,
        )
    assert accountant.history == []


def test_target_epsilon_plans_sigma_for_the_whole_run() -> None:
    dp = DPSGDSettings(noise_multiplier=None, target_epsilon=3.0)
    short = planned_noise_multiplier(dp, 300, 32, 1, rounds=2)
    long = planned_noise_multiplier(dp, 300, 32, 1, rounds=20)
    assert long > short > 0


def test_accountant_state_round_trips() -> None:
    accountant = load_accountant(None, "rdp")
    accountant.step(noise_multiplier=1.1, sample_rate=0.1)
    restored = load_accountant(save_accountant(accountant), "rdp")
    assert restored.get_epsilon(1e-5) == pytest.approx(accountant.get_epsilon(1e-5))
    assert np.isfinite(restored.get_epsilon(1e-5))


def test_dpsgd_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        dp_settings("privacy.target_epsilon=3")
    with pytest.raises(ConfigError, match="max_grad_norm"):
        dp_settings("privacy.max_grad_norm=0")


def test_the_accountant_stays_on_the_client() -> None:
    context = fresh_context()
    reply = train_round(dp_settings(), context, 1)
    assert DPSGD_KEY not in reply.content
    assert reply.content[METRICS_KEY]["dp-delta"] == pytest.approx(1e-5)
    assert ACCOUNTANT_STATE_KEY in context.state.config_records
