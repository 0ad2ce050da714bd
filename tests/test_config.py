"""Every config option composes; bad values stop with one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flp2p.config import CONF_DIR, ConfigError, RunSettings, build_strategy, compose
from flp2p.dpsgd import DPSGDSettings
from flp2p.privacy_settings import CentralPrivacy, NoPrivacy
from flp2p.simulate import CONFIG_GROUPS, check_group_choices

GROUP_OPTIONS = [
    (group, path.stem)
    for group in CONFIG_GROUPS
    for path in sorted((CONF_DIR / group).glob("*.yaml"))
]


def test_every_group_has_options() -> None:
    assert {group for group, _ in GROUP_OPTIONS} == set(CONFIG_GROUPS)


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS)
def test_every_option_composes_and_builds(group: str, option: str) -> None:
    overrides = [f"{group}={option}", "clients=20"]
    if group == "attack" and option != "none":
        overrides.append("attack.fraction=0.2")
    if group == "privacy" and option == "central":
        overrides.append("strategy=screened_fedavg")
    settings = RunSettings.from_config(compose(overrides))
    strategy = build_strategy(settings)
    assert strategy.min_available_nodes == 20
    if group == "strategy":
        assert settings.strategy_name == option


def test_defaults_are_the_documented_federation() -> None:
    settings = RunSettings.from_config(compose([]))
    assert (settings.dataset, settings.clients) == ("fmnist", 20)
    assert (settings.partition_scheme, settings.alpha) == ("dirichlet", 0.5)
    assert settings.strategy_name == "trusted"


def test_robust_baselines_get_the_attack_count() -> None:
    settings = RunSettings.from_config(
        compose(["strategy=flwr_multikrum", "clients=10"])
    )
    assert build_strategy(settings).num_malicious_nodes == 0


@pytest.mark.parametrize("name", ["krum", "multikrum", "bulyan"])
def test_flp2p_rules_never_get_the_attack_count(name: str) -> None:
    """The attack's fraction must not leak into a defence: f comes from the rule's
    own byzantine_fraction and each round's valid replies."""
    settings = RunSettings.from_config(
        compose([f"strategy={name}", "clients=10", "attack=sign_flip"])
    )
    assert settings.num_malicious > 0
    strategy = build_strategy(settings)
    assert strategy.num_malicious_nodes is None
    assert "f = ⌊0.3 · n⌋" in strategy.rule.describe()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rounds=0", "rounds must be ≥ 1"),
        ("clients=-3", "clients must be ≥ 1"),
        ("rounds=1.5", "rounds must be an integer"),
        ("partition.alpha=0", "alpha must be > 0"),
        ("partition.scheme=shards", "partition.scheme must be one of"),
        ("fraction_train=1.5", "fraction_train must lie in"),
        ("train.lr=-1", "train.lr must be > 0"),
        ("strategy=fedavg +strategy.bogus=1", "FedAvg takes no argument.s. bogus"),
        ("strategy=trusted +strategy.bogus=1", "unexpected keyword argument 'bogus'"),
    ],
)
def test_invalid_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_strategy(RunSettings.from_config(compose(override.split())))


def test_unknown_group_option_is_named_with_the_choices() -> None:
    with pytest.raises(ConfigError, match="unknown strategy 'nope': choose one of"):
        check_group_choices(["strategy=fedavg,nope"])
    check_group_choices(["strategy=fedavg,fedmedian", "seed=0,1", "rounds=3"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["strategy=nope"], "unknown strategy 'nope'"),
        (["rounds=0"], "rounds must be ≥ 1"),
        (["dataset.data_dir=/nonexistent"], "Fashion-MNIST not found in /nonexistent"),
    ],
)
def test_cli_bad_input_is_one_line_and_leaves_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "flp2p.simulate", *args, f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not run_dir.exists()


@pytest.mark.parametrize(
    ("option", "kind"),
    [("none", NoPrivacy), ("dpsgd", DPSGDSettings), ("central", CentralPrivacy)],
)
def test_privacy_is_one_typed_choice(option: str, kind: type) -> None:
    settings = RunSettings.from_config(compose([f"privacy={option}"]))
    assert type(settings.privacy) is kind
    assert settings.privacy_name == option


def test_central_privacy_gives_the_dp_wrappers_arguments() -> None:
    settings = RunSettings.from_config(
        compose(
            [
                "privacy=central",
                "strategy=screened_fedavg",
                "clients=10",
                "fraction_train=0.5",
                "rounds=4",
            ]
        )
    )
    privacy = settings.privacy
    assert isinstance(privacy, CentralPrivacy)
    assert "target_epsilon" in privacy.spec() and "seed" not in privacy.spec()
    kwargs = privacy.strategy_kwargs(
        settings.fraction_train, settings.clients, settings.rounds, settings.seed
    )
    assert "target_epsilon" not in kwargs
    assert kwargs["max_share"] == pytest.approx(2 / 5) and kwargs["seed"] == 0
    strategy = build_strategy(settings)
    assert strategy.noise_multiplier == pytest.approx(kwargs["noise_multiplier"])
    assert strategy.max_share == pytest.approx(kwargs["max_share"])
    assert strategy.delta == kwargs["delta"]
    assert strategy.clipping.clip_norm == kwargs["clip_norm"]


def test_central_adaptive_clipping_plan_spends_the_target_over_the_run() -> None:
    # The planned noise covers the aggregate and the clip count together, so the
    # accountant reaches the target after the last round, not beyond it.
    from strategies.base import ScreenedFedAvg
    from strategies.central_dp import CentralDP

    privacy = CentralPrivacy(target_epsilon=8.0, adaptive_clipping=True)
    kwargs = privacy.strategy_kwargs(1.0, 200, 10, 0)
    assert kwargs["clip_count_noise"] == pytest.approx(200 / 20)
    fixed = CentralPrivacy(target_epsilon=8.0).strategy_kwargs(1.0, 200, 10, 0)
    assert kwargs["noise_multiplier"] > fixed["noise_multiplier"]
    strategy = CentralDP(ScreenedFedAvg(), **kwargs)
    for _ in range(10):
        strategy.privacy_accountant.step()
    assert strategy.epsilon == pytest.approx(8.0, rel=0.01)


def test_build_strategy_plans_adaptive_clipping_like_the_settings() -> None:
    # build_strategy and CentralPrivacy once planned separately; the built wrapper
    # must carry the count noise and the combined multiplier the settings plan.
    from strategies.central_dp import combined_noise_multiplier, noise_multiplier_for

    settings = RunSettings.from_config(
        compose(
            [
                "privacy=central",
                "strategy=screened_fedavg",
                "clients=40",
                "rounds=4",
                "privacy.adaptive_clipping=true",
            ]
        )
    )
    strategy = build_strategy(settings)
    assert strategy.clipping.count_noise == pytest.approx(40 / 20)
    assert strategy.clipping.learning_rate > 0
    planned = noise_multiplier_for(8.0, 1e-5, settings.fraction_train, 4)
    assert combined_noise_multiplier(
        strategy.noise_multiplier, strategy.clipping.count_noise
    ) == pytest.approx(planned)
    assert strategy.privacy_accountant.noise_multiplier == pytest.approx(planned)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["privacy=central", "privacy.noise_multiplier=1.0"], "exactly one"),
        (["privacy=dpsgd", "+privacy.sigma=2"], "privacy 'dpsgd'"),
        (["privacy=none", "privacy._target_=flp2p.nothing.Here"], "cannot import"),
        (["attack=alie", "attack.fraction=1.5"], "attack.fraction must lie in"),
        (["attack=alie", "~attack._target_"], "no _target_"),
    ],
)
def test_bad_privacy_or_attack_is_one_config_error(
    overrides: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        RunSettings.from_config(compose(overrides))
    assert "\n" not in str(raised.value)


def test_a_trusted_rule_is_chosen_by_target_not_by_name() -> None:
    from strategies import aggregators

    settings = RunSettings.from_config(
        compose(
            [
                "dataset=digits",
                "strategy=trusted",
                "strategy.robust_rule={_target_: strategies.aggregators.TrimmedMean,"
                " beta: 0.1}",
            ]
        )
    )
    strategy = build_strategy(settings)
    assert strategy.rule == aggregators.TrimmedMean(beta=0.1)
    assert strategy.stage is None
    named = RunSettings.from_config(
        compose(["strategy=trusted", "strategy.robust_rule=median"])
    )
    with pytest.raises(ConfigError, match="unknown robust_rule 'median': give one"):
        build_strategy(named)
