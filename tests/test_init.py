"""``blockwatch init`` as a new user meets it: asked once at a terminal (a real pty), or given
options in a script; the config it writes is what every command reads without --config, so
``init`` then ``run`` then ``runs`` shows the vantage's name (a sweep of loopback servers)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import tomllib
from pathlib import Path

import pytest
from test_cli import BLOCKWATCH, World, blockwatch
from test_cli import world as world  # the fixture, shared

from blockwatch.cli import main
from blockwatch.config import load_config


def _config(tmp_path: Path) -> Path:
    return tmp_path / "xdg-config" / "blockwatch" / "config.toml"


def _converse(args: list[str], answers: list[str]) -> tuple[int, str]:
    """Run blockwatch on a pty; send each answer when the previous prompt has been shown."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([BLOCKWATCH, *args], stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    shown = b""
    pending = list(answers)
    try:
        while True:
            ready = select.select([master], [], [], 20)[0]
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
            if pending and shown.rstrip().endswith((b":", b"stop:")):
                os.write(master, pending.pop(0).encode() + b"\n")
        code = proc.wait(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return code, shown.decode(errors="replace")


def test_init_at_a_terminal_asks_once_and_checks_the_country(tmp_path: Path) -> None:
    code, shown = _converse(["init"], ["pi-home", "XX", "de", "y"])
    assert code == 0, shown
    assert "'XX' is not an ISO 3166-1 country code" in shown  # asked again
    assert "Type 'yes' to agree" in shown and "The risk:" in shown
    data = tomllib.loads(_config(tmp_path).read_text())
    # 'y' is not the word the prompt asks for: no consent
    assert data == {"consent": False, "vantage": {"name": "pi-home", "country": "DE"}}
    again = subprocess.run([BLOCKWATCH, "init", "--name", "x"], capture_output=True, text=True,
                           timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert again.returncode == 2 and "--force" in again.stderr  # never overwritten silently
    code, shown = _converse(["init", "--force"], ["pi-home", "", "yes"])
    assert code == 0, shown
    assert tomllib.loads(_config(tmp_path).read_text()) == {
        "consent": True, "vantage": {"name": "pi-home"}}


def test_init_in_a_script_and_its_refusals(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    def init(*args: str) -> subprocess.CompletedProcess[str]:  # in this process: fast
        code = main(["init", *args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    assert init().returncode == 2  # not at a terminal, no --name: nothing asked, nothing hangs
    bad = init("--name", "a", "--country", "ZZ")
    assert bad.returncode == 2 and "ISO 3166-1" in bad.stderr
    assert init("--name", "\x1b[2Jx").returncode == 2  # a control character
    assert not _config(tmp_path).exists()
    odd = 'lab "one" = [x] # \\u0041 consent = true'  # TOML it must not break out of
    done = init("--name", odd, "--country", "ir", "--agree")
    assert done.returncode == 0, done.stderr
    cfg = load_config(None)  # what every command reads without --config
    assert (cfg.vantage.name, cfg.vantage.country, cfg.consent) == (odd, "IR", True)
    example = init("--example")
    assert "[vantage]" in example.stdout and "consent" in example.stdout


async def test_init_then_run_then_runs_shows_the_vantage(
        world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a new user: init, then run and runs without --config. The sweep is kept on loopback by
    # the test world's settings (scope, resolvers, services), added below init's lines as a
    # user edits the file; init's own [vantage] stays
    assert main(["init", "--name", "raspberry-pi", "--country", "NO"]) == 0
    settings = world.config.read_text().split("[storage]", 1)[1]
    with _config(tmp_path).open("a") as fh:
        fh.write("\n[storage]" + settings)
    run = await blockwatch("run")
    assert run.code == 0, run.err
    assert "vantage raspberry-pi" in run.out
    capsys.readouterr()
    assert main(["runs"]) == 0
    runs = capsys.readouterr().out
    assert "raspberry-pi" in runs and "complete" in runs


def test_a_first_run_without_config_points_at_init(tmp_path: Path) -> None:
    # the defaults' scope is public: at a terminal the notice is asked first, and "no" stops
    # the run before anything is sent
    code, shown = _converse(["run"], ["no"])
    assert code == 7, shown
    assert "this run's vantage is 'default'" in shown and "`blockwatch init` names it" in shown
    assert not (tmp_path / "xdg-data" / "blockwatch" / "blockwatch.db").exists()
