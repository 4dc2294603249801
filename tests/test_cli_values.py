"""Issue #15 (10): values on the command line are checked as the config checks them, before
anything runs: a clear one-line error naming the option, exit code 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from blockwatch.cli import MAX_RUNS, VANTAGE_NAME_MAX, main
from blockwatch.config import Vantage
from blockwatch.storage import open_store


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    db = tmp_path / "results.db"
    open_store(str(db)).close()
    path = tmp_path / "bw.toml"
    path.write_text(f'[storage]\nurl = "sqlite:///{db}"\n', encoding="utf-8")
    return path


def _usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert "Traceback" not in err
    return err.splitlines()[-1]


@pytest.mark.parametrize("value, says", [
    ("99999999999999999999", f"is more than {MAX_RUNS:,}"),  # was an OverflowError, exit 1
    (str(MAX_RUNS + 1), f"is more than {MAX_RUNS:,}"),
    ("0", "must be 1 or more"),
    ("-3", "must be 1 or more"),
    ("ten", "is not a whole number"),
])
def test_runs_limit(cfg: Path, value: str, says: str,
                    capsys: pytest.CaptureFixture[str]) -> None:
    line = _usage(["runs", "-c", str(cfg), "-n", value], capsys)
    assert line.startswith("blockwatch runs: error: argument -n/--limit:") and says in line


def test_runs_limit_at_the_bound_works(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "-c", str(cfg), "-n", str(MAX_RUNS)]) == 0
    assert "0 most recent runs" in capsys.readouterr().out


@pytest.mark.parametrize("value, says", [
    ("", "a vantage name cannot be empty"),
    ("x" * 10_000, f"at most {VANTAGE_NAME_MAX} characters (this one has 10,000)"),
    ("x" * (VANTAGE_NAME_MAX + 1), f"at most {VANTAGE_NAME_MAX} characters"),
])
def test_run_vantage(cfg: Path, value: str, says: str,
                     capsys: pytest.CaptureFixture[str]) -> None:
    line = _usage(["run", "-c", str(cfg), "--vantage", value], capsys)
    assert line.startswith("blockwatch run: error: argument --vantage:") and says in line
    assert len(line) < 200  # the 10,000 characters are not echoed back


def test_the_command_line_and_the_config_agree_on_vantage_names() -> None:
    from pydantic import ValidationError

    Vantage(name="x" * VANTAGE_NAME_MAX)
    for bad in ("", "x" * (VANTAGE_NAME_MAX + 1)):
        with pytest.raises(ValidationError):
            Vantage(name=bad)
    # and the longest name the command line takes is stored as it is
    from blockwatch.cli import _vantage_name

    assert _vantage_name("x" * VANTAGE_NAME_MAX) == "x" * VANTAGE_NAME_MAX


def test_a_syntax_error_in_query_is_bad_usage(cfg: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "results.db")
    assert main(["query", "--db", db, "SELEC 1"]) == 2  # the README: bad input exits 2
    err = capsys.readouterr().err
    assert err.startswith("blockwatch: bad query: ") and "syntax error" in err
    assert main(["query", "--db", db, "SELECT count(*) FROM runs"]) == 0
    assert main(["query", "--db", str(tmp_path / "missing.db"), "SELECT 1"]) == 3
