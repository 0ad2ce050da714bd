"""The ``flp2p`` command line on real ledger files, good and bad."""

from __future__ import annotations

import csv
import io
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_ledger import FEDERATION, KeySigner, record_rounds, tamper

from flp2p.cli import main
from flp2p.ledger import Ledger

AGGREGATOR = KeySigner(1)
SUCCESSOR = KeySigner(2)


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    """Genesis + rounds 1–3 by one aggregator, rounds 4–5 by its successor."""
    path = tmp_path / "ledger.db"
    with Ledger.open(
        path, federation=FEDERATION, signer=AGGREGATOR, create=True
    ) as ledger:
        record_rounds(ledger, [1, 2, 3])
    with Ledger.open(
        path, federation=FEDERATION, signer=SUCCESSOR, create=True
    ) as ledger:
        record_rounds(ledger, [4, 5])
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_leaderboard_ranks_by_tokens(
    ledger_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "leaderboard", "--db", str(ledger_path))
    assert (code, err) == (0, "")
    rows = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in out.splitlines()
        if "peer-" in line
    ]
    # Per round (helpers_ledger): peer-001 and peer-002 earn 12.5 tokens, peer-000
    # 6.25, peer-003 is rejected; five rounds. Ties in tokens go to reputation,
    # then identity.
    assert rows == [
        ["1", "peer-001", "silver", "0.600", "62.50", "5/0"],
        ["2", "peer-002", "silver", "0.600", "62.50", "5/0"],
        ["3", "peer-000", "silver", "0.600", "31.25", "5/0"],
        ["4", "peer-003", "bronze", "0.300", "0.00", "0/5"],
    ]
    _, top, _ = run(capsys, "leaderboard", "--limit", "2", "--db", str(ledger_path))
    assert "peer-002" in top and "peer-000" not in top


def test_status_names_last_signer_round_and_peers(
    ledger_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "status", "--db", str(ledger_path))
    assert code == 0
    fields = dict(line.split(maxsplit=1) for line in out.splitlines() if line)
    assert fields["federation"] == FEDERATION
    assert fields["aggregator"] == (
        f"{SUCCESSOR.node_id[:12]} (key {SUCCESSOR.public_key.hex()[:12]})"
    )
    assert fields["round"] == "5"
    assert out.count("known peers  4") == 1


def test_verify_ok_and_tampered(
    ledger_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "ledger", "verify", "--db", str(ledger_path))
    assert code == 0
    assert "6 blocks verified" in out
    tamper(ledger_path, ("UPDATE rewards SET tokens = 99 WHERE height = 4", ()))
    code, out, err = run(capsys, "ledger", "verify", "--db", str(ledger_path))
    assert code != 0
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("flp2p: error: block 4: signature does not verify")


def test_verify_reports_foreign_federation_block(
    ledger_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tamper(ledger_path, ("UPDATE blocks SET federation = 'x' WHERE height = 3", ()))
    code, _, err = run(capsys, "ledger", "verify", "--db", str(ledger_path))
    assert code != 0
    assert err == (
        f"flp2p: error: block 3: belongs to federation 'x', not '{FEDERATION}'\n"
    )


def test_export_csv_to_file_and_stdout(
    ledger_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "out.csv"
    code, out, _ = run(
        capsys, "ledger", "export", "--csv", str(target), "--db", str(ledger_path)
    )
    assert code == 0
    assert "wrote 20 contributions" in out
    rows = list(csv.DictReader(target.open(encoding="utf-8")))
    assert len(rows) == 5 * 4
    assert sum(float(row["tokens"]) for row in rows) == pytest.approx(5 * 31.25)
    assert {row["verdict"] for row in rows if row["identity"] == "peer-003"} == {
        "rejected"
    }
    code, out, _ = run(capsys, "ledger", "export", "--csv", "--db", str(ledger_path))
    assert code == 0
    assert list(csv.DictReader(io.StringIO(out))) == rows


@pytest.mark.parametrize(
    "command",
    [
        ["leaderboard"],
        ["status"],
        ["ledger", "verify"],
        ["ledger", "export", "--csv"],
    ],
)
def test_missing_ledger_is_one_line_and_not_created(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "absent.db"
    code, out, err = run(capsys, *command, "--db", str(path))
    assert code != 0
    assert out == ""
    assert err == f"flp2p: error: no ledger at {path}\n"
    assert not path.exists()


@pytest.mark.parametrize("kind", ["corrupt", "foreign"])
def test_bad_database_is_one_line_and_unchanged(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / f"{kind}.db"
    if kind == "corrupt":
        path.write_bytes(b"\x00garbage" * 512)
    else:
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, url TEXT)")
        conn.commit()
        conn.close()
    before = path.read_bytes()
    target = tmp_path / "out.csv"
    for command in (
        ["status"],
        ["ledger", "verify"],
        ["ledger", "export", "--csv", str(target)],
    ):
        code, out, err = run(capsys, *command, "--db", str(path))
        assert code != 0
        assert out == ""
        assert err.count("\n") == 1 and err.startswith("flp2p: error: ")
        assert "Traceback" not in err
    assert path.read_bytes() == before
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_console_script_exit_status_without_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flp2p.cli", "status", "--db", str(tmp_path / "x.db")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith("flp2p: error: no ledger at")
    assert "Traceback" not in result.stderr


def test_committee_size_default_is_the_audit_default() -> None:
    from flp2p.audit.committee import DEFAULT_COMMITTEE_SIZE
    from flp2p.cli import COMMITTEE_SIZE_DEFAULT

    assert COMMITTEE_SIZE_DEFAULT == DEFAULT_COMMITTEE_SIZE
