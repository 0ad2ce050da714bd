"""What a run shows: verdicts and ε per round, the closing table, ε in every file.

Unit tests drive :class:`RunReporter` and :class:`ReplyTap` directly; two short
in-process federations (digits, 2 rounds, 4 clients) check the whole path, with
Flower's FedAvg under DP-SGD (ε read from the replies, not the strategy) and with
the flp2p default strategy.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from helpers_ledger import FEDERATION, KeySigner, record_rounds
from helpers_messages import make_error_reply, make_train_reply
from rich.console import Console

from flp2p.config import RunSettings, compose
from flp2p.ledger import Ledger
from flp2p.reply_tap import ReplyTap
from flp2p.reporting import (
    METRICS_COLUMNS,
    PRIVACY_COLUMNS,
    RunReporter,
    VerdictCounts,
    client_privacy,
)
from flp2p.simulate import simulate


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as stream:
        return list(csv.DictReader(stream))


def test_verdict_counts_name_the_commonest_rejection_reason() -> None:
    counts = VerdictCounts.of(
        [
            ("accepted", "", 0.5),
            ("downweighted", "on probation", 0.5),
            ("rejected", "norm outlier", 0.0),
            ("rejected", "cosine outlier", 0.0),
            ("rejected", "norm outlier", 0.0),
        ]
    )
    assert counts == VerdictCounts(1, 1, 3, "norm outlier")
    assert counts.text() == ("accepted 1  down-weighted 1  rejected 3 (norm outlier)")
    assert VerdictCounts.of([("accepted", "", 1.0)]).text().endswith("rejected 0")
    assert counts + counts == VerdictCounts(2, 2, 6)


def test_kept_replies_without_weight_are_counted_and_shown() -> None:
    """The default strategy's robust stage may give no weight to a reply the
    detectors accepted: the round line must not pass it off as counted."""
    counts = VerdictCounts.of(
        [
            ("accepted", "", 0.5),
            ("accepted", "weight 0: left out by the robust stage", 0.0),
            ("downweighted", "cosine; weight 0: left out by the robust stage", 0.0),
            ("downweighted", "cosine", 0.5),
            ("rejected", "norm outlier", 0.0),
        ]
    )
    assert (counts.accepted, counts.downweighted, counts.kept_at_weight_0) == (2, 2, 2)
    assert counts.text() == (
        "accepted 2  down-weighted 2  rejected 1 (norm outlier)  kept at weight 0: 2"
    )
    assert (counts + counts).kept_at_weight_0 == 4


def test_client_privacy_is_the_max_and_median_of_the_replies() -> None:
    metrics = [
        {"dp-epsilon": 1.0, "dp-delta": 1e-5},
        {"dp-epsilon": 4.0, "dp-delta": 1e-5},
        {"dp-epsilon": 2.0, "dp-delta": 1e-5},
        {"train-loss": 0.3},  # a reply without DP (e.g. an attacker's)
    ]
    assert client_privacy(metrics) == {
        "epsilon": 4.0,
        "epsilon_median": 2.0,
        "delta": 1e-5,
    }
    assert client_privacy([{"train-loss": 0.3}]) == {}


class RecordingGrid(Grid):
    """Answers each instruction with a prepared reply; only what the tap calls."""

    def __init__(self, replies: list[Message]) -> None:
        self.replies = replies

    def set_run(self, run: object) -> None:  # type: ignore[override]
        raise NotImplementedError

    @property
    def run(self) -> object:  # type: ignore[override]
        raise NotImplementedError

    def create_message(self, *args: object, **kwargs: object) -> Message:  # type: ignore[override]
        raise NotImplementedError

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        return list(self.replies)


def instruction(message_type: str, server_round: int) -> Message:
    config = ConfigRecord({"server-round": server_round})
    return Message(
        RecordDict({"config": config}), dst_node_id=1, message_type=message_type
    )


def test_reply_tap_shows_training_replies_and_passes_them_on() -> None:
    arrays = {"w": np.zeros(2, dtype=np.float32)}
    replies = [
        make_train_reply(arrays, 10, 1, metrics={"dp-epsilon": 0.5}),
        make_train_reply(arrays, 10, 2, metrics={"dp-epsilon": 1.5}),
        make_error_reply(3),
    ]
    seen: list[tuple[int, list[dict[str, float]]]] = []
    tap = ReplyTap(RecordingGrid(replies), lambda r, m: seen.append((r, list(m))))
    passed = list(tap.send_and_receive([instruction(MessageType.TRAIN, 3)]))
    assert passed == replies
    assert [(r, [m["dp-epsilon"] for m in ms]) for r, ms in seen] == [(3, [0.5, 1.5])]
    tap.send_and_receive([instruction(MessageType.EVALUATE, 3)])
    assert len(seen) == 1  # evaluation replies are not training rounds
    assert tap.get_node_ids() == [1, 2, 3]


def test_reporter_lines_carry_verdicts_and_epsilon(tmp_path: Path) -> None:
    console = Console(file=open(tmp_path / "console.txt", "w"), width=200)  # noqa: SIM115
    with Ledger.open(
        tmp_path / "ledger.db", federation=FEDERATION, signer=KeySigner(1), create=True
    ) as ledger:
        reporter = RunReporter(
            tmp_path / "run",
            rounds=2,
            plot=False,
            console=console,
            privacy_columns=PRIVACY_COLUMNS["dpsgd"],
            ledger=ledger,
        )
        with reporter:
            reporter.round_done(0, 0.1, 2.3)
            for server_round, epsilons in ((1, [1.0, 3.0, 2.0]), (2, [2.0, 5.0])):
                reporter.train_replies(
                    server_round,
                    [{"dp-epsilon": e, "dp-delta": 1e-5} for e in epsilons],
                )
                record_rounds(ledger, [server_round])  # the strategy records first
                reporter.round_done(server_round, 0.5, 1.0)
    console.file.close()
    text = (tmp_path / "console.txt").read_text()
    line_one = next(line for line in text.splitlines() if line.startswith("round   1"))
    assert "accepted 3  down-weighted 0  rejected 1 (norm outlier)" in line_one
    assert "ε 3 (median 2)" in line_one
    assert "accepted 6  down-weighted 0  rejected 2" in text  # the closing totals
    assert "top 5 peers by tokens" in text and "peer-001" in text
    assert f"flp2p dashboard --db {tmp_path / 'ledger.db'}" in text
    rows = read_rows(tmp_path / "run" / "metrics.csv")
    assert tuple(rows[0]) == (*METRICS_COLUMNS, "epsilon", "epsilon_median", "delta")
    assert [(r["epsilon"], r["epsilon_median"]) for r in rows] == [
        ("", ""),
        ("3", "2"),
        ("5", "3.5"),
    ]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["epsilon"], summary["epsilon_median"]) == (5.0, 3.5)
    assert summary["delta"] == 1e-5
    assert summary["verdicts"] == {"accepted": 6, "downweighted": 0, "rejected": 2}
    assert summary["kept_at_weight_0"] == 0  # every accepted made-up reply counted


def test_a_resumed_reporter_continues_the_folders_files(tmp_path: Path) -> None:
    """A successor aggregator resumes from round 2: it keeps rows 0 and 1 as they
    were, writes round 2 itself (it evaluates the model it resumes from), and its
    totals count every round's verdicts once."""
    run = tmp_path / "run"
    quiet = Console(file=open(tmp_path / "console.txt", "w"))  # noqa: SIM115
    with Ledger.open(
        tmp_path / "ledger.db", federation=FEDERATION, signer=KeySigner(1), create=True
    ) as ledger:
        columns = PRIVACY_COLUMNS["dpsgd"]
        first = RunReporter(
            run, 3, plot=False, console=quiet, privacy_columns=columns, ledger=ledger
        )
        with first:
            first.round_done(0, 0.1, 2.3)
            for server_round in (1, 2):
                first.train_replies(server_round, [{"dp-epsilon": 1.5}])
                record_rounds(ledger, [server_round])
                first.round_done(server_round, 0.2 * server_round, 1.0)
        before = read_rows(run / "metrics.csv")
        successor = RunReporter(
            run,
            3,
            plot=False,
            console=quiet,
            privacy_columns=columns,
            ledger=ledger,
            resume_round=2,
        )
        with successor:
            successor.round_done(2, 0.45, 0.9)
            record_rounds(ledger, [3])
            successor.round_done(3, 0.6, 0.8)
    quiet.file.close()
    rows = read_rows(run / "metrics.csv")
    assert [r["round"] for r in rows] == ["0", "1", "2", "3"]
    assert rows[:2] == before[:2]  # ε of round 1 included
    assert rows[2]["accuracy"] == "0.450000"
    assert float(rows[2]["seconds"]) >= float(rows[1]["seconds"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds_completed"] == 3 and summary["final_accuracy"] == 0.6
    assert summary["verdicts"] == {"accepted": 9, "downweighted": 0, "rejected": 3}


def test_a_fresh_reporter_starts_the_file_over(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("round,accuracy,loss,seconds\n0,0.1,2.0,1.0\n")
    RunReporter(run, 2, show_progress=False)
    assert read_rows(run / "metrics.csv") == []


FAST = [
    "dataset=digits",
    "rounds=2",
    "clients=4",
    "simulation.backend=in_process",
    "train.max_steps=3",
    "output.plot=false",
]


def test_flowers_fedavg_under_dpsgd_reports_client_epsilon(tmp_path: Path) -> None:
    settings = RunSettings.from_config(
        compose([*FAST, "strategy=fedavg", "privacy=dpsgd", "output.progress=false"])
    )
    summary = simulate(settings, tmp_path)
    rows = read_rows(tmp_path / "metrics.csv")
    assert tuple(rows[0]) == (*METRICS_COLUMNS, *PRIVACY_COLUMNS["dpsgd"])
    assert rows[0]["epsilon"] == ""  # the initial model spent nothing
    epsilon = [float(r["epsilon"]) for r in rows[1:]]
    median = [float(r["epsilon_median"]) for r in rows[1:]]
    assert 0 < epsilon[0] < epsilon[1]  # cumulative: round 2 spends more
    assert all(m <= e for m, e in zip(median, epsilon, strict=True))
    assert summary["epsilon"] == pytest.approx(epsilon[-1], rel=1e-5)
    assert summary["epsilon_median"] == pytest.approx(median[-1], rel=1e-5)
    assert summary["delta"] == settings.privacy.delta
    assert "verdicts" not in summary  # Flower's FedAvg judges nothing


def test_central_dp_epsilon_goes_to_metrics_csv_as_well(tmp_path: Path) -> None:
    settings = RunSettings.from_config(
        compose(
            [
                *FAST,
                "strategy=screened_fedavg",
                "privacy=central",
                "output.progress=false",
            ]
        )
    )
    summary = simulate(settings, tmp_path)
    rows = read_rows(tmp_path / "metrics.csv")
    assert tuple(rows[0]) == (*METRICS_COLUMNS, *PRIVACY_COLUMNS["central"])
    epsilon = [float(r["epsilon"]) for r in rows]
    assert epsilon[0] == 0.0 < epsilon[1] < epsilon[2]  # one accountant step a round
    # Fixed clipping: every round clips to the configured norm.
    clip_norm = getattr(settings.privacy, "clip_norm")  # noqa: B009  # the central field
    assert {float(r["clip_norm"]) for r in rows} == {clip_norm}
    assert summary["epsilon"] == pytest.approx(epsilon[-1], rel=1e-5)
    assert "epsilon_median" not in summary  # one ε for the aggregate, not per client


def test_the_default_run_is_flp2ps_and_says_what_it_judged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = RunSettings.from_config(compose(FAST))
    assert settings.strategy_name == "trusted"
    summary = simulate(settings, tmp_path)
    assert summary["strategy"] == "trusted"
    verdicts = summary["verdicts"]
    assert sum(verdicts.values()) == 2 * 4  # every reply of both rounds judged
    with Ledger.open(tmp_path / "ledger.db") as ledger:
        assert ledger.verify() == 3
    assert tuple(read_rows(tmp_path / "metrics.csv")[0]) == METRICS_COLUMNS
    err = capsys.readouterr().err
    assert "accepted" in err and "rejected" in err and "ε" not in err
    assert f"flp2p leaderboard --db {tmp_path / 'ledger.db'}" in err
    assert "top 5 peers by tokens" in err


def test_sweep_results_carry_epsilon(tmp_path: Path) -> None:
    from flp2p.sweep import collect_sweep, write_results

    for job, extra in (("0", {}), ("1", {"epsilon": 2.5, "epsilon_median": 1.5})):
        (tmp_path / job).mkdir()
        summary = {"status": "completed", "final_accuracy": 0.5, **extra}
        (tmp_path / job / "summary.json").write_text(json.dumps(summary))
    rows = read_rows(write_results(tmp_path, collect_sweep(tmp_path)))
    assert [(r["epsilon"], r["epsilon_median"]) for r in rows] == [
        ("", ""),
        ("2.5", "1.5"),
    ]
