"""Consent: asked once at a terminal, never prompted elsewhere (nothing hangs), refused
unattended without ``--yes`` / ``consent = true``, not needed for loopback or lab scopes.

Interactive cases use a real pseudo-terminal, so ``isatty`` is true exactly as for a person."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
from pathlib import Path

import pytest
from test_cli import BLOCKWATCH

from blockwatch import consent
from blockwatch.config import parse_config
from blockwatch.consent import ConsentRefused, ensure_consent, needs_consent
from blockwatch.schedule_cli import check_consent, state_dir

PUBLIC = ["public"]


@pytest.mark.parametrize(
    ("scope", "needed"),
    [
        (["public"], True),
        (["system-resolvers"], True),
        (["127.0.0.0/8", "::1/128"], False),
        (["10.200.0.0/16", "fd00:200::/48", "127.0.0.1/32"], False),  # the lab
        (["127.0.0.0/8", "8.8.8.0/24"], True),
        (["0.0.0.0/0"], True),
        (["2001:db8::/32", "169.254.0.0/16"], False),
    ],
)
def test_consent_is_needed_when_public_addresses_are_in_scope(scope: list[str],
                                                              needed: bool) -> None:
    assert needs_consent(scope) is needed


def _ensure(tmp_path: Path, stdin: io.TextIOBase, stderr: io.TextIOBase, *, yes: bool = False,
            configured: bool = False, scope: list[str] = PUBLIC) -> str:
    return ensure_consent(yes=yes, configured=configured, scope=scope, state_dir=tmp_path,
                          stdin=stdin, stderr=stderr)  # type: ignore[arg-type]


def test_unattended_without_consent_refuses_without_prompting(tmp_path: Path) -> None:
    stdin, stderr = io.StringIO("yes\n"), io.StringIO()  # not ttys: the answer must be ignored
    with pytest.raises(ConsentRefused) as info:
        _ensure(tmp_path, stdin, stderr)
    assert "consent = true" in str(info.value) and "--yes" in str(info.value)
    assert "nothing was measured" in str(info.value)
    assert stderr.getvalue() == "" and stdin.read() == "yes\n"  # nothing asked, nothing read
    assert not consent.consent_file(tmp_path).exists()


def test_flag_config_and_scope_give_consent(tmp_path: Path) -> None:
    stdin, stderr = io.StringIO(), io.StringIO()
    assert _ensure(tmp_path, stdin, stderr, yes=True) == "flag"
    assert _ensure(tmp_path, stdin, stderr, configured=True) == "config"
    assert _ensure(tmp_path, stdin, stderr, scope=["127.0.0.0/8"]) == "not-needed"
    assert stderr.getvalue() == ""


def _terminal_answer(answer: str) -> tuple[int, io.TextIOWrapper, io.TextIOWrapper]:
    master, slave = pty.openpty()
    os.write(master, answer.encode())
    tty_in = open(slave, encoding="utf-8", closefd=False)  # noqa: SIM115 - closed by the test
    tty_err = open(slave, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    return master, tty_in, tty_err


def _read_all(fd: int) -> str:
    """Everything written to the terminal so far (a pty hands it out in chunks)."""
    chunks = []
    while select.select([fd], [], [], 0.2)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


# the prompt says type 'yes': 'y' is not it
@pytest.mark.parametrize(("answer", "agreed"), [("yes\n", True), ("YES\n", True), ("no\n", False),
                                                ("\n", False), ("y\n", False)])
def test_a_terminal_is_asked_once(tmp_path: Path, answer: str, agreed: bool) -> None:
    master, tty_in, tty_err = _terminal_answer(answer)
    try:
        if agreed:
            assert _ensure(tmp_path, tty_in, tty_err) == "asked"
        else:
            with pytest.raises(ConsentRefused, match="you did not agree"):
                _ensure(tmp_path, tty_in, tty_err)
        shown = _read_all(master)
    finally:
        tty_in.close()
        tty_err.close()
        os.close(master)
    assert "The risk:" in shown and "Your IP address is never stored" in shown
    assert consent.recorded(tmp_path) is agreed
    if agreed:  # the next run at a terminal does not ask again; an unattended one still
        # needs --yes or consent = true, as the notice and the refusal say
        master, tty_in, tty_err = _terminal_answer("")
        try:
            assert _ensure(tmp_path, tty_in, tty_err) == "recorded"
        finally:
            tty_in.close()
            tty_err.close()
            os.close(master)
        with pytest.raises(ConsentRefused, match="pass --yes"):
            _ensure(tmp_path, io.StringIO(), io.StringIO())


def test_damaged_or_outdated_record_asks_again(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    consent.consent_file(tmp_path).write_text("{not json")
    assert not consent.recorded(tmp_path)
    consent.record(tmp_path)
    assert consent.recorded(tmp_path)
    monkeypatch.setattr(consent, "NOTICE_VERSION", consent.NOTICE_VERSION + 1)
    assert not consent.recorded(tmp_path)  # a new notice needs a new answer


def test_run_guard_refuses_with_exit_7_and_names_the_config(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           ) -> None:
    cfg = parse_config("[probes]\nscope = ['public']\n", str(tmp_path / "bw.toml"))
    assert check_consent(cfg, yes=False) == 7
    err = capsys.readouterr().err
    assert f"set `consent = true` in {tmp_path / 'bw.toml'}" in err
    assert check_consent(cfg, yes=True) is None
    agreed = parse_config("consent = true\n[probes]\nscope = ['public']\n", "c.toml")
    assert check_consent(agreed, yes=False) is None


def test_consent_command_prints_the_notice_and_records_agreement(tmp_path: Path) -> None:
    shown = subprocess.run([BLOCKWATCH, "consent"], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=30, check=False)
    assert shown.returncode == 0 and "The risk:" in shown.stdout
    assert not consent.recorded(state_dir())
    agreed = subprocess.run([BLOCKWATCH, "consent", "--agree"], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=30, check=False)
    assert agreed.returncode == 0 and "consent recorded" in agreed.stderr
    record = json.loads((tmp_path / "xdg-state" / "blockwatch" / "consent.json").read_text())
    assert record["version"] == consent.NOTICE_VERSION
    # what the message says: an unattended run still needs --yes or consent = true
    config = tmp_path / "public.toml"
    config.write_text(f"[storage]\nurl = 'sqlite:///{tmp_path / 'r.db'}'\n"
                      "[probes]\nscope = ['public']\n")
    refused = subprocess.run([BLOCKWATCH, "run", "--config", str(config)], capture_output=True,
                             text=True, stdin=subprocess.DEVNULL, timeout=60, check=False)
    assert refused.returncode == 7 and "--yes" in refused.stderr
    assert not (tmp_path / "r.db").exists()


def test_consent_command_at_a_terminal_asks(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen([BLOCKWATCH, "consent"], stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    os.write(master, b"yes\n")
    output = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    assert proc.wait(timeout=30) == 0
    os.close(master)
    assert b"Type 'yes' to agree" in output and b"consent recorded" in output
    assert consent.recorded(tmp_path / "xdg-state" / "blockwatch")


def test_unattended_install_timer_without_consent_refuses(tmp_path: Path) -> None:
    # install-timer never probes anything, so a public scope is safe to test the refusal with
    cfg = tmp_path / "public.toml"
    cfg.write_text(f'[storage]\nurl = "sqlite:///{tmp_path / "r.db"}"\n')
    units = tmp_path / "units"

    def install(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([BLOCKWATCH, "install-timer", "--user", "--config", str(cfg),
                               "--dir", str(units), *extra], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=30, check=False)

    refused = install()
    assert refused.returncode == 7, refused.stderr
    assert "no consent for an unattended run" in refused.stderr
    assert f"set `consent = true` in {cfg}" in refused.stderr
    assert not units.exists()
    assert install("--yes").returncode == 0
    assert "--yes" in (units / "blockwatch.service").read_text()
