"""What a new volunteer or researcher met following the README (issue: use blockwatch as a
newcomer would, and fix what breaks): each test is one thing that was wrong."""

from __future__ import annotations

import datetime as dt
import re
import shutil
from pathlib import Path

import pytest
import trustme

from blockwatch.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_config_example_measures_its_own_service(tmp_path: Path) -> None:
    """The README's example config adds a service of its own (mynews) beside
    ``[probes] services``: that list must name it, or a run never measures it."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```toml\n(.*?)```", readme, re.S)
                if 'name = "seoul-home"' in b]
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "mynews-ca.pem"))  # its pinned CA
    path = tmp_path / "config.toml"
    path.write_text(block, encoding="utf-8")
    chosen = [s.name for s in load_config(path).selected_services()]
    assert "mynews" in chosen and {"kakaotalk", "line"} <= set(chosen)


def test_a_lab_that_is_not_up_names_the_command_that_starts_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--name`` is an option of ``lab``: ``blockwatch lab up --name NAME`` is refused by
    the parser, so the hint must say ``blockwatch lab --name NAME up``."""
    from blockwatch.cli import build_parser
    from blockwatch.lab import lifecycle, state

    monkeypatch.setattr(state, "STATE_ROOT", tmp_path / "run")
    with pytest.raises(state.LabError) as err:
        lifecycle.get("nolab7")
    (hint,) = re.findall(r"`sudo (blockwatch [^`]*)`", str(err.value))
    assert hint == "blockwatch lab --name nolab7 up"
    args = build_parser().parse_args(hint.split()[1:])  # the parser takes it as written
    assert (args.name, args.lab_command) == ("nolab7", "up")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_runs_shows_ids_that_show_takes(backend: str, tmp_path: Path,
                                        request: pytest.FixtureRequest,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Runs made in the same millisecond share the 13 characters ``runs`` used to show (OONI
    measurements imported from the same second always do), and ``show`` refused every one
    of them as ambiguous: each shown id is now its shortest unique prefix, checked against
    runs not listed too (``-n``)."""
    from blockwatch.cli import main
    from blockwatch.storage import open_store
    from blockwatch.storage.queries import bulk_insert

    at = dt.datetime(2026, 12, 6, 18, 23, 52, tzinfo=dt.UTC)
    ids = ["01a24c99-1ac0-7667-979a-2d0f63105583", "01a24c99-1ac0-7a9a-a2fc-89f3b5d179db",
           "01a24c99-1ac0-7a9b-9edd-2115bdde53c4", "01a24c99-1d35-725e-b403-851ece9b24ee"]
    db = tmp_path / "r.db" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    with open_store(str(db)) as store:
        bulk_insert(store, "runs", [
            {"id": i, "vantage": "ooni-IR-AS0", "country": "IR", "asn": None,
             "group_name": None, "started_at": at + dt.timedelta(microseconds=n),
             "finished_at": at, "status": "complete", "software_version": "t",
             "config_hash": "", "baseline": {}, "summary": {}} for n, i in enumerate(ids)])
    assert main(["runs", "--db", str(db), "-n", "3"]) == 0  # the oldest run is not listed
    shown = re.findall(r"│ (01a24c99-[0-9a-f-]+) +│", capsys.readouterr().out)
    assert shown == ["01a24c99-1d35", "01a24c99-1ac0-7a9b", "01a24c99-1ac0-7a9a"]
    with open_store(str(db), read_only=True) as store:
        for prefix in shown:  # what `blockwatch show PREFIX` does
            run = store.get_run(prefix)
            assert run is not None and run.id.startswith(prefix)


@pytest.mark.parametrize("value, says", [
    ("20001", "is more than 20,000 (as [concurrency] global)"),
    ("99999999999", "is more than 20,000"),  # was taken, where the config refuses 20,001
    ("0", "must be 1 or more"),
])
def test_run_concurrency_is_bounded_as_the_config_bounds_it(
        value: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from blockwatch.cli import MAX_CONCURRENCY, main
    from blockwatch.config import Concurrency

    bounds = [m.le for m in Concurrency.model_fields["total"].metadata if hasattr(m, "le")]
    assert bounds == [MAX_CONCURRENCY]
    with pytest.raises(SystemExit) as exit_:  # refused before the config is even read
        main(["run", "--config", str(tmp_path / "none.toml"), "--concurrency", value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert f"argument --concurrency: {value!r} {says}" in err.splitlines()[-1]


def test_init_example_writes_to_output(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """``init --example --output FILE`` printed the example on stdout and wrote nothing: the
    file is written, and an existing one is kept without --force, as ``init`` does."""
    from blockwatch.cli import main
    from blockwatch.init_cli import example_config

    out = tmp_path / "mine" / "bw.toml"
    assert main(["init", "--example", "--output", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == example_config()
    assert capsys.readouterr().out == ""
    load_config(out)  # the commands take it
    out.write_text("# edited\n", encoding="utf-8")
    assert main(["init", "--example", "--output", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == "# edited\n"
    assert main(["init", "--example", "--output", str(out), "--force"]) == 0
    assert out.read_text(encoding="utf-8") == example_config()


def test_a_token_added_and_redirected_is_a_token_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``collector token add NAME > NAME.token`` wrote the line before the token too, and a
    vantage refused that file ("not a collector token"): the token is alone on stdout."""
    from blockwatch.cli import main
    from blockwatch.collector.outbox import read_token

    db = tmp_path / "collector.db"
    assert main(["collector", "token", "add", "home-pi", "--db", str(db)]) == 0
    said = capsys.readouterr()
    assert "shown once" in said.err
    token_file = tmp_path / "home-pi.token"
    token_file.write_text(said.out, encoding="utf-8")
    assert read_token(token_file) == said.out.strip() and said.out.count("\n") == 1


def test_reports_load_never_writes(tmp_path: Path) -> None:
    """docs/schema.md: ``reports.load`` never writes. It opened the database for writing: a
    mistyped path became a new, empty database (and empty frames), and an older one was
    upgraded in place. It reads as ``blockwatch report`` does now."""
    from blockwatch import reports
    from blockwatch.storage import StorageError, open_store

    missing = tmp_path / "typo.db"
    with pytest.raises(StorageError, match="no database"):
        reports.load(str(missing), as_frames=False)
    assert not missing.exists()
    db = tmp_path / "results.db"
    open_store(str(db)).close()
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    assert reports.load(str(db), as_frames=False) == reports.Data([], [])
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before  # as tests/test_readonly.py
    wal = tmp_path / "results.db-wal"  # reading a WAL database may leave these, empty
    assert {p.name for p in tmp_path.iterdir()} <= {"results.db", wal.name, "results.db-shm"}
    assert not wal.exists() or wal.stat().st_size == 0


@pytest.mark.parametrize("option, value, says", [
    ("--on-calendar", "hourly\nExecStartPre=/bin/true", "is not a systemd calendar value"),
    ("--on-calendar", " ", "is not a systemd calendar value"),
    ("--on-calendar", "every hour", "systemd refuses 'every hour'"),
    ("--randomized-delay", "15 minutes or so", "systemd refuses '15 minutes or so'"),
])
def test_install_timer_refuses_what_systemd_would(
        option: str, value: str, says: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A schedule systemd cannot parse was written into the units and only failed at
    ``systemctl --user enable --now`` (or, with a line break, added a line to the unit)."""
    from blockwatch.cli import main

    if "systemd refuses" in says and shutil.which("systemd-analyze") is None:
        pytest.skip("no systemd-analyze here: the refusal is systemd's own")
    config = tmp_path / "bw.toml"
    config.write_text('consent = true\n', encoding="utf-8")
    units = tmp_path / "units"
    argv = ["install-timer", "--user", "--config", str(config), "--dir", str(units)]
    assert main([*argv, option, value]) == 2
    assert says in capsys.readouterr().err and not units.exists()
    assert main([*argv, "--on-calendar", "Mon *-*-* 02:00", "--randomized-delay", "1h"]) == 0
    assert "OnCalendar=Mon *-*-* 02:00\n" in (units / "blockwatch.timer").read_text()
