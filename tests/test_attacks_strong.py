"""The strongest known attacks: each one's defining property on synthetic updates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_attacks import delta_of, train_reply

from flp2p.attacks import (
    PERTURBATIONS,
    Attack,
    AttackContext,
    DetectorAware,
    Mimic,
    MinMax,
    MinSum,
    SignFlip,
    Sleeper,
    SybilWave,
    gamma_search,
    malicious_partitions,
    perturbation_direction,
)
from flp2p.config import RunSettings, compose
from strategies.detection import DetectionContext, DetectorPanel

CONF = Path(__file__).resolve().parents[1] / "conf" / "attack"


def heterogeneous(rows: int, width: int, seed: int) -> np.ndarray:
    """Benign updates sharing a direction, each with a large client-specific part."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal(width)
    shared /= np.linalg.norm(shared)
    own = rng.standard_normal((rows, width))
    own *= rng.uniform(0.3, 0.8, (rows, 1)) / np.linalg.norm(own, axis=1, keepdims=True)
    return shared + own


def context_for(
    honest: np.ndarray,
    benign: np.ndarray,
    num_clients: int = 20,
    server_round: int | None = 1,
    seed: int = 0,
) -> AttackContext:
    return AttackContext(
        honest_delta=honest,
        benign_deltas=lambda: benign,
        num_malicious=len(benign),
        num_clients=num_clients,
        rng=np.random.default_rng(seed),
        server_round=server_round,
    )


def max_pairwise(rows: np.ndarray) -> float:
    return max(float(np.linalg.norm(rows - row, axis=1).max()) for row in rows)


BENIGN = heterogeneous(6, 40, seed=1)


@pytest.mark.parametrize("perturbation", PERTURBATIONS)
def test_minmax_stays_within_the_benign_diameter_and_uses_it(
    perturbation: str,
) -> None:
    attack = MinMax(perturbation=perturbation)
    crafted = attack.poison_update(context_for(BENIGN[0], BENIGN))
    widest = max_pairwise(BENIGN)
    reach = float(np.linalg.norm(BENIGN - crafted, axis=1).max())
    assert reach <= widest * (1 + 1e-12)
    # γ is the largest such: a little further along the direction breaks the bound.
    direction = perturbation_direction(BENIGN, perturbation)
    gamma = float((crafted - BENIGN.mean(axis=0)) @ direction / (direction @ direction))
    assert gamma > 0.0
    beyond = BENIGN.mean(axis=0) + (gamma + 1e-3) * direction
    assert float(np.linalg.norm(BENIGN - beyond, axis=1).max()) > widest


@pytest.mark.parametrize("perturbation", PERTURBATIONS)
def test_minsum_keeps_the_sum_of_squared_distances_within_the_benign_maximum(
    perturbation: str,
) -> None:
    crafted = MinSum(perturbation=perturbation).poison_update(
        context_for(BENIGN[0], BENIGN)
    )
    largest = max(float(((BENIGN - row) ** 2).sum()) for row in BENIGN)
    assert float(((BENIGN - crafted) ** 2).sum()) <= largest * (1 + 1e-12)
    assert not np.allclose(crafted, BENIGN.mean(axis=0))  # it did move
    # Min-Sum's constraint is tighter than Min-Max's on the same direction.
    minmax = MinMax(perturbation=perturbation).poison_update(
        context_for(BENIGN[0], BENIGN)
    )
    mean = BENIGN.mean(axis=0)
    assert np.linalg.norm(crafted - mean) <= np.linalg.norm(minmax - mean) + 1e-9


def test_perturbation_directions_follow_the_paper() -> None:
    mean, std = BENIGN.mean(axis=0), BENIGN.std(axis=0)
    np.testing.assert_allclose(
        perturbation_direction(BENIGN, "unit"), -mean / np.linalg.norm(mean)
    )
    np.testing.assert_allclose(perturbation_direction(BENIGN, "std"), -std)
    np.testing.assert_array_equal(
        perturbation_direction(BENIGN, "sign"), -np.sign(mean)
    )
    with pytest.raises(ValueError, match="perturbation must be one of"):
        perturbation_direction(BENIGN, "random")
    with pytest.raises(ValueError, match="perturbation must be one of"):
        MinMax(perturbation="random")


def test_gamma_search_finds_the_threshold() -> None:
    assert gamma_search(lambda g: g <= 7.3, 50.0, 1e-6) == pytest.approx(7.3, abs=1e-5)
    assert gamma_search(lambda g: g <= 80.0, 50.0, 1e-6) == pytest.approx(
        80.0, abs=1e-5
    )
    assert gamma_search(lambda g: False, 50.0, 1e-6) == 0.0


def test_noise_makes_colluders_differ_but_stays_reproducible() -> None:
    attack = MinMax(noise=0.5)
    first = attack.poison_update(context_for(BENIGN[0], BENIGN))
    second = attack.poison_update(context_for(BENIGN[1], BENIGN))
    assert not np.allclose(first, second)
    np.testing.assert_array_equal(
        first, attack.poison_update(context_for(BENIGN[0], BENIGN))
    )
    silent = MinMax(noise=0.0)
    np.testing.assert_array_equal(
        silent.poison_update(context_for(BENIGN[0], BENIGN)),
        silent.poison_update(context_for(BENIGN[1], BENIGN)),
    )
    # Noise is shaped like the honest spread: its scale tracks σ.
    spread = (first - silent.poison_update(context_for(BENIGN[0], BENIGN))) / (
        0.5 * BENIGN.std(axis=0)
    )
    assert 0.6 < float(spread.std()) < 1.4


def test_mimic_copies_the_benign_update_furthest_along_the_top_direction() -> None:
    benign = BENIGN.copy()
    benign[3] += 2.0 * np.eye(40)[5]  # the one client with very different data
    out = Mimic().poison_update(context_for(benign[0], benign))
    np.testing.assert_array_equal(out, benign[3])
    assert Mimic.target(benign) == 3
    same = np.tile(benign[0], (4, 1))
    assert Mimic.target(same) == 0


def test_adaptive_attack_stays_inside_every_detector_threshold() -> None:
    benign = heterogeneous(14, 60, seed=2)
    known = benign[:6]  # the colluders' own benign updates
    panel = DetectorPanel()
    attack = DetectorAware(panel=panel)
    crafted = np.stack(
        [
            attack.poison_update(context_for(known[i], known, num_clients=20))
            for i in range(6)
        ]
    )
    # Every colluder uses the same γ, with noise of its own.
    gammas = {attack.gamma(context_for(known[i], known), known) for i in range(6)}
    assert len(gammas) == 1 and gammas.pop() > 0.0
    assert min(max_pairwise(crafted[[i, j]]) for i in range(6) for j in range(i)) > 0
    # In a real round with the honest clients they are not flagged at all ...
    rows = np.vstack([benign, crafted])
    identities = [f"client-{i}" for i in range(len(rows))]
    screening = panel.screen(rows, DetectionContext.build(rows, identities))
    assert all(f == 1.0 for f in screening.factors[14:]), screening.reasons[14:]
    # ... and they do push along −σ: the mean moves against the spread.
    shift = rows.mean(axis=0) - benign.mean(axis=0)
    assert float(shift @ -known.std(axis=0)) > 0.0


def test_adaptive_attack_without_noise_is_caught_as_collusion_so_it_holds_back() -> (
    None
):
    known = heterogeneous(6, 60, seed=3)
    noisy = DetectorAware(noise=1.0).gamma(context_for(known[0], known), known)
    copies = DetectorAware(noise=0.0)
    # Copies are flagged by Collusion whatever γ: nothing passes, γ = 0.
    assert copies.gamma(context_for(known[0], known), known) == 0.0
    assert noisy > 0.0


class Marker(Attack):
    name = "marker"

    def poison_update(self, ctx: AttackContext) -> np.ndarray:
        return np.full_like(ctx.honest_delta, 42.0)


def test_sleeper_is_honest_until_it_wakes() -> None:
    sleeper = Sleeper(wake_round=3, then=Marker())
    honest = BENIGN[0]
    for server_round in (1, 2):
        out = sleeper.poison_update(
            context_for(honest, BENIGN, server_round=server_round)
        )
        np.testing.assert_array_equal(out, honest)
    for server_round in (3, 9):
        out = sleeper.poison_update(
            context_for(honest, BENIGN, server_round=server_round)
        )
        np.testing.assert_array_equal(out, np.full_like(honest, 42.0))
    with pytest.raises(ValueError, match="server_round"):
        sleeper.poison_update(context_for(honest, BENIGN, server_round=None))


def test_sleeper_builds_its_attack_from_a_config() -> None:
    sign_flip = {"_target_": "flp2p.attacks.SignFlip"}
    assert isinstance(Sleeper(then=sign_flip).then, SignFlip)
    minmax = {"_target_": "flp2p.attacks.MinMax", "perturbation": "unit"}
    built = Sleeper(then=minmax).then
    assert isinstance(built, MinMax) and built.perturbation == "unit"


def test_sybil_wave_exists_only_from_its_join_round() -> None:
    wave = SybilWave(join_round=4, then=Marker())
    assert [wave.joined(r) for r in (1, 3, 4, 10)] == [False, False, True, True]
    out = wave.poison_update(context_for(BENIGN[0], BENIGN, server_round=4))
    np.testing.assert_array_equal(out, np.full(40, 42.0))


NEW = ("minmax", "minsum", "mimic", "adaptive", "sleeper", "sybil_wave")


@pytest.mark.parametrize("name", NEW)
def test_new_attacks_are_registered_and_configurable(name: str) -> None:
    assert (CONF / f"{name}.yaml").is_file()
    settings = RunSettings.from_config(compose([f"attack={name}", "clients=20"]))
    attack = settings.attack.attack
    assert attack.name == name
    out = attack.poison_update(context_for(BENIGN[0], BENIGN, server_round=10))
    assert out.shape == BENIGN[0].shape and np.isfinite(out).all()


def test_colluding_clients_agree_on_the_crafted_update_and_differ_by_their_noise() -> (
    None
):
    # Through the ClientApp (digits, 5 clients, 2 attackers): same γ, own noise.
    base = ["dataset=digits", "clients=5", "rounds=1", "attack.fraction=0.4"]
    silent = RunSettings.from_config(compose([*base, "attack=minmax"]))
    noisy = RunSettings.from_config(compose([*base, "attack=minmax", "attack.noise=1"]))
    first, second = sorted(malicious_partitions(5, 0.4, silent.seed))
    msg, a = train_reply(silent, first)
    _, b = train_reply(silent, second)
    np.testing.assert_array_equal(delta_of(msg, a), delta_of(msg, b))
    _, c = train_reply(noisy, first)
    _, d = train_reply(noisy, second)
    assert np.isfinite(delta_of(msg, c)).all()
    assert not np.allclose(delta_of(msg, c), delta_of(msg, d))
