"""Attacks: each formula on synthetic updates, and their wiring into the ClientApp."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from flp2p.app import make_client_app
from flp2p.attacks import (
    ALIE,
    IPM,
    Attack,
    AttackContext,
    AttackSettings,
    FreeRider,
    GaussianNoise,
    LabelFlip,
    SignFlip,
    Sybil,
    build_attack,
    flip_labels,
    malicious_partitions,
)
from flp2p.config import CONF_DIR, ConfigError, RunSettings, compose
from flp2p.local_training import (
    TRAINING_DATA_KEY,
    arrays_to_record,
    federation_name,
    initial_model,
    record_to_arrays,
)
from flp2p.models import get_weights
from flp2p.signatures import contribution_message
from strategies.base import flatten_arrays
from strategies.records import (
    IDENTITY_KEY,
    IDENTITY_PUBLIC_KEY,
    IDENTITY_SIGNATURE,
    METRICS_KEY,
    NUM_EXAMPLES_KEY,
    update_sha256,
)


def context_for(honest: np.ndarray, benign: np.ndarray, **kw: object) -> AttackContext:
    return AttackContext(
        honest_delta=honest,
        benign_deltas=lambda: benign,
        num_malicious=len(benign),
        num_clients=kw.pop("num_clients", 10),  # type: ignore[arg-type]
        rng=np.random.default_rng(0),
        **kw,  # type: ignore[arg-type]
    )


BENIGN = np.array([[1.0, 2.0, -1.0], [3.0, 2.0, 1.0], [2.0, 5.0, 0.0]])


def test_malicious_partitions_are_a_seeded_fraction() -> None:
    chosen = malicious_partitions(20, 0.3, seed=4)
    assert len(chosen) == 6 and chosen <= set(range(20))
    assert chosen == malicious_partitions(20, 0.3, seed=4)
    assert chosen != malicious_partitions(20, 0.3, seed=5)
    assert malicious_partitions(20, 0.0, seed=4) == frozenset()


def test_sign_flip_negates_and_scales() -> None:
    honest = np.array([1.0, -2.0, 0.5])
    out = SignFlip(scale=2.0).poison_update(context_for(honest, BENIGN))
    np.testing.assert_array_equal(out, [-2.0, 4.0, -1.0])


def test_alie_uses_baruch_z_max() -> None:
    # n = 20, f = 6: s = floor(20/2 + 1) - 6 = 5, z = Phi^-1(15/20) = 0.6745
    assert ALIE.z_max(20, 6) == pytest.approx(0.67449, abs=1e-4)
    out = ALIE(z=1.5).poison_update(context_for(BENIGN[0], BENIGN))
    mean = np.array([2.0, 3.0, 0.0])
    std = np.sqrt(((BENIGN - mean) ** 2).mean(axis=0))
    np.testing.assert_allclose(out, mean - 1.5 * std)


def test_ipm_is_minus_epsilon_times_the_benign_mean() -> None:
    out = IPM(epsilon=0.5).poison_update(context_for(BENIGN[0], BENIGN))
    np.testing.assert_allclose(out, [-1.0, -1.5, 0.0])


def test_gaussian_noise_ignores_the_update() -> None:
    honest = np.full(20_000, 7.0)
    out = GaussianNoise(std=0.1).poison_update(context_for(honest, BENIGN))
    assert abs(out.mean()) < 0.01 and out.std() == pytest.approx(0.1, rel=0.05)


def test_label_flip_is_a_fixed_point_free_permutation() -> None:
    labels = np.arange(10)
    flipped = flip_labels(labels, 10)
    assert sorted(flipped.tolist()) == list(range(10))
    assert not np.any(flipped == labels)
    images = np.zeros((10, 1, 2, 2), dtype=np.float32)
    _, poisoned = LabelFlip().poison_data(images, labels, 10)
    np.testing.assert_array_equal(poisoned, 9 - labels)


def test_free_rider_sends_nothing_or_replays() -> None:
    honest = np.ones(1000)
    zero = FreeRider(mode="zero").poison_update(context_for(honest, BENIGN))
    assert np.linalg.norm(zero) < 1e-2 * np.linalg.norm(honest)
    stale = FreeRider(mode="stale")
    first = stale.poison_update(context_for(honest, BENIGN))
    np.testing.assert_array_equal(first, honest)
    replay = stale.poison_update(context_for(2 * honest, BENIGN, previous_delta=first))
    np.testing.assert_array_equal(replay, honest)
    with pytest.raises(ValueError, match="mode"):
        FreeRider(mode="lazy")


def test_sybils_send_one_update_and_inflate_examples() -> None:
    sybil = Sybil(scale=1.0, examples_factor=3.0)
    a = sybil.poison_update(context_for(BENIGN[0], BENIGN))
    b = sybil.poison_update(context_for(BENIGN[1], BENIGN))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, -BENIGN.mean(axis=0))
    assert sybil.claimed_examples(100) == 300


ATTACK_OPTIONS = sorted(path.stem for path in (CONF_DIR / "attack").glob("*.yaml"))


@pytest.mark.parametrize("name", ATTACK_OPTIONS)
def test_every_attack_config_builds(name: str) -> None:
    settings = RunSettings.from_config(compose([f"attack={name}"]))
    assert isinstance(settings.attack, AttackSettings)
    assert settings.attack.name == name
    assert settings.attack.attack.name == name


def test_an_attack_is_named_by_its_class() -> None:
    spec = {"name": "sign_flip", "fraction": 0.3, "scale": 2.0}
    attack = build_attack({**spec, "_target_": "flp2p.attacks.SignFlip"})
    assert isinstance(attack, SignFlip) and attack.scale == 2.0
    with pytest.raises(ValueError, match=r"attack .teleport.: cannot import"):
        build_attack({"name": "teleport", "_target_": "flp2p.attacks.Teleport"})
    with pytest.raises(ValueError, match="no _target_"):
        build_attack(spec)
    with pytest.raises(ValueError, match=r"is not a flp2p\.attacks\.Attack class"):
        build_attack({"name": "fake", "_target_": "flp2p.attacks.AttackContext"})
    assert type(AttackSettings().attack) is Attack
    with pytest.raises(ValueError, match=r"attack\.fraction"):
        AttackSettings(fraction=1.0)


def test_bad_attack_argument_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="attack 'alie'"):
        RunSettings.from_config(compose(["attack=alie", "+attack.strength=3"]))


# --------------------------------------------------------------- ClientApp wiring


def train_reply(settings: RunSettings, partition_id: int) -> tuple[Message, Message]:
    arrays = arrays_to_record(get_weights(initial_model(settings)))
    config = ConfigRecord({"server-round": 1, "federation": federation_name(settings)})
    msg = Message(
        content=RecordDict({"arrays": arrays, "config": config}),
        dst_node_id=3,
        message_type=MessageType.TRAIN,
    )
    context = Context(
        run_id=1,
        node_id=3,
        node_config={"partition-id": partition_id, "num-partitions": 5},
        state=RecordDict(),
        run_config={},
    )
    return msg, make_client_app(settings)(msg, context)


def delta_of(msg: Message, reply: Message) -> np.ndarray:
    before = flatten_arrays(record_to_arrays(msg.content.array_records["arrays"]))
    return (
        flatten_arrays(record_to_arrays(reply.content.array_records["arrays"])) - before
    )


def test_malicious_client_sends_the_attack_and_honest_ones_do_not() -> None:
    base = ["dataset=digits", "clients=5", "rounds=1"]
    honest_settings = RunSettings.from_config(compose(base))
    attacked = RunSettings.from_config(
        compose([*base, "attack=sign_flip", "attack.fraction=0.4"])
    )
    bad = malicious_partitions(5, 0.4, attacked.seed)
    good = next(p for p in range(5) if p not in bad)
    evil = min(bad)

    msg, honest_reply = train_reply(honest_settings, evil)
    _, evil_reply = train_reply(attacked, evil)
    np.testing.assert_allclose(
        delta_of(msg, evil_reply), -delta_of(msg, honest_reply), atol=1e-6
    )

    _, reference = train_reply(honest_settings, good)
    _, untouched = train_reply(attacked, good)
    np.testing.assert_array_equal(delta_of(msg, untouched), delta_of(msg, reference))


def test_the_signature_covers_the_attacked_update() -> None:
    settings = RunSettings.from_config(
        compose(
            ["dataset=digits", "clients=5", "attack=sign_flip", "attack.fraction=0.4"]
        )
    )
    evil = min(malicious_partitions(5, 0.4, settings.seed))
    msg, reply = train_reply(settings, evil)
    assert TRAINING_DATA_KEY not in msg.content  # the mod forwarded a copy
    identity = reply.content[IDENTITY_KEY]
    public = identity[IDENTITY_PUBLIC_KEY]
    assert isinstance(public, bytes)
    digest = update_sha256(record_to_arrays(reply.content.array_records["arrays"]))
    Ed25519PublicKey.from_public_bytes(public).verify(
        identity[IDENTITY_SIGNATURE],
        contribution_message(federation_name(settings), 1, digest),
    )


def test_sybil_clients_reply_with_identical_updates() -> None:
    settings = RunSettings.from_config(
        compose(["dataset=digits", "clients=5", "attack=sybil", "attack.fraction=0.4"])
    )
    first, second = sorted(malicious_partitions(5, 0.4, settings.seed))
    msg, a = train_reply(settings, first)
    _, b = train_reply(settings, second)
    np.testing.assert_array_equal(delta_of(msg, a), delta_of(msg, b))
    examples = a.content.metric_records[METRICS_KEY][NUM_EXAMPLES_KEY]
    _, honest = train_reply(
        RunSettings.from_config(compose(["dataset=digits", "clients=5"])), first
    )
    true_examples = honest.content.metric_records[METRICS_KEY][NUM_EXAMPLES_KEY]
    assert examples == 3 * int(true_examples)
