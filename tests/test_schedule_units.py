"""Deployment files: systemd accepts every unit (``systemd-analyze verify``), the crontab line
uses options ``blockwatch run`` really has, and ``install-timer --user`` writes units that
systemd accepts and that run the config they name, however odd its path."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from test_cli import BLOCKWATCH

from blockwatch.cli import build_parser
from blockwatch.scheduler.units import TimerOptions, exec_start, quote

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(
    ANALYZE is None and not os.environ.get("BLOCKWATCH_REQUIRE_LAB"),
    reason="systemd-analyze missing (Debian: apt-get install systemd)")


def verify(*units: Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, "verify", *map(str, units)], capture_output=True,
                          text=True, timeout=60, check=False, cwd=units[0].parent)


def _installed_copy(tmp_path: Path, name: str) -> Path:
    """The unit as installed, pointing at this venv's blockwatch (verify checks it exists)."""
    text = (DEPLOY / name).read_text().replace("/opt/blockwatch/venv/bin/blockwatch", BLOCKWATCH)
    out = tmp_path / name
    out.write_text(text)
    return out


@needs_systemd
def test_systemd_accepts_the_deploy_units(tmp_path: Path) -> None:
    units = [_installed_copy(tmp_path, n) for n in
             ("blockwatch.service", "blockwatch.timer", "blockwatch-daemon.service",
              "blockwatch-collector.service")]
    res = verify(*units)
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")


@needs_systemd
def test_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    unit = _installed_copy(tmp_path, "blockwatch.service")
    unit.write_text(unit.read_text().replace("ProtectHome=yes", "ProtectHome=yes\nProtectHom=1"))
    res = verify(unit)
    assert "Unknown key" in res.stderr + res.stdout


def test_service_units_are_hardened_and_tolerate_the_lock_code() -> None:
    for name in ("blockwatch.service", "blockwatch-daemon.service"):
        text = (DEPLOY / name).read_text()
        for line in ("DynamicUser=yes", "StateDirectory=blockwatch", "NoNewPrivileges=yes",
                     "ProtectSystem=strict", "CapabilityBoundingSet=\n", "--yes"):
            assert line in text, (name, line)
        assert "\nAmbientCapabilities=CAP_NET_RAW" not in text  # only as a commented option
    # exit 5 (locked) and 4 (offline: a laptop away from its network) are no failure
    assert "SuccessExitStatus=4 5" in (DEPLOY / "blockwatch.service").read_text()
    assert "RandomizedDelaySec=" in (DEPLOY / "blockwatch.timer").read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in (
        DEPLOY / "blockwatch-daemon.service").read_text()


def test_crontab_lines_use_real_options() -> None:
    lines = [ln.lstrip("# ") for ln in (DEPLOY / "crontab").read_text().splitlines()
             if "blockwatch run" in ln and not ln.startswith("# blockwatch")]
    assert len(lines) == 2
    for line in lines:
        fields = line.split(None, 5)
        assert len(fields) == 6 and fields[0].isdigit()
        argv = shlex.split(fields[5].replace("$HOME", "/home/me"))
        assert argv[0].endswith("/blockwatch")
        args = build_parser().parse_args(argv[1:])  # SystemExit if an option does not exist
        assert args.command == "run" and args.yes and args.quiet and args.offline_ok


def test_exec_start_quotes_what_systemd_would_split_or_expand() -> None:
    odd = "/home/me/my configs/100%/bw \"x\".toml"
    options = TimerOptions(command=("/opt/bw/bin/blockwatch",), config=odd, group="night",
                           yes=True)
    line = exec_start(options)
    # systemd: "%%" is a literal "%", then C-style quoting like a POSIX shell's double quotes
    assert shlex.split(line.replace("%%", "%")) == [
        "/opt/bw/bin/blockwatch", "run", "--config", odd, "--yes", "--quiet", "--max-runtime",
        "50m", "--group", "night"]
    assert quote("plain") == "plain" and quote("") == '""'


def _install(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BLOCKWATCH, "install-timer", "--user", *args], capture_output=True,
                          text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    odd = tmp_path / "my configs"
    odd.mkdir()
    path = odd / "bw 100%.toml"
    path.write_text(f"""
[storage]
url = "sqlite:///{tmp_path / 'r.db'}"
[probes]
scope = ["127.0.0.0/8"]
[[schedules]]
name = "night"
cron = "0 3 * * *"
""")
    return path


def test_install_timer_writes_user_units_systemd_accepts(tmp_path: Path, config: Path) -> None:
    res = _install(tmp_path, "--config", str(config), "--group", "night",
                   "--on-calendar", "*-*-* 03:00:00", "--randomized-delay", "30min")
    assert res.returncode == 0, res.stderr
    units = tmp_path / "xdg-config" / "systemd" / "user"
    service, timer = units / "blockwatch-night.service", units / "blockwatch-night.timer"
    assert "systemctl --user enable --now blockwatch-night.timer" in res.stdout
    text = service.read_text()
    exec_line = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    argv = shlex.split(exec_line.removeprefix("ExecStart=").replace("%%", "%"))
    assert argv[0] == BLOCKWATCH and argv[argv.index("--config") + 1] == str(config)
    # the scope is loopback (no consent needed) and nobody said --yes: none in the unit
    assert argv[argv.index("--group") + 1] == "night" and "--yes" not in argv
    assert "SuccessExitStatus=4 5" in text
    assert "OnCalendar=*-*-* 03:00:00" in timer.read_text()
    assert "RandomizedDelaySec=30min" in timer.read_text()
    if ANALYZE is not None:
        res = verify(service, timer)
        assert (res.returncode, res.stdout, res.stderr) == (0, "", "")

    again = _install(tmp_path, "--config", str(config), "--group", "night")
    assert again.returncode == 2 and "exists; use --force" in again.stderr
    assert _install(tmp_path, "--config", str(config), "--group", "night",
                    "--force").returncode == 0


def test_install_timer_refusals(tmp_path: Path, config: Path) -> None:
    no_config = _install(tmp_path)
    assert no_config.returncode == 2 and "run `blockwatch init`" in no_config.stderr
    bad_group = _install(tmp_path, "--config", str(config), "--group", "weekly")
    assert bad_group.returncode == 2 and "no schedule group 'weekly'" in bad_group.stderr
    bad_runtime = _install(tmp_path, "--config", str(config), "--max-runtime", "ages")
    assert bad_runtime.returncode == 2 and "--max-runtime" in bad_runtime.stderr
    blocked = tmp_path / "file"
    blocked.write_text("")
    no_dir = _install(tmp_path, "--config", str(config), "--dir", str(blocked / "units"))
    assert no_dir.returncode == 2 and "cannot write units" in no_dir.stderr
    assert not (tmp_path / "xdg-config" / "systemd").exists()


def _units(tmp_path: Path) -> Path:
    return tmp_path / "xdg-config" / "systemd" / "user"


def _exec_argv(unit: Path) -> list[str]:
    line = next(ln for ln in unit.read_text().splitlines() if ln.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart=").replace("%%", "%"))


def test_install_timer_takes_consent_from_the_config_only(tmp_path: Path) -> None:
    config = tmp_path / "public.toml"
    base = f"[storage]\nurl = 'sqlite:///{tmp_path / 'r.db'}'\n[probes]\nscope = ['public']\n"
    config.write_text("consent = false\n" + base)
    refused = _install(tmp_path, "--config", str(config))
    assert refused.returncode == 7 and "consent = true" in refused.stderr
    assert not _units(tmp_path).exists()  # nothing written
    config.write_text("consent = true\n" + base)
    assert _install(tmp_path, "--config", str(config)).returncode == 0
    assert "--yes" not in _exec_argv(_units(tmp_path) / "blockwatch.service")
    config.write_text("consent = false\n" + base)  # --yes on the command line: in the unit
    assert _install(tmp_path, "--config", str(config), "--yes", "--force").returncode == 0
    assert "--yes" in _exec_argv(_units(tmp_path) / "blockwatch.service")


def test_install_timer_without_config_uses_the_init_config(tmp_path: Path) -> None:
    missing = _install(tmp_path)
    assert missing.returncode == 2 and "blockwatch init" in missing.stderr
    init = subprocess.run([BLOCKWATCH, "init", "--name", "laptop", "--agree"],
                          capture_output=True, text=True, timeout=60, check=False,
                          stdin=subprocess.DEVNULL)
    assert init.returncode == 0, init.stderr
    res = _install(tmp_path)
    assert res.returncode == 0, res.stderr
    argv = _exec_argv(_units(tmp_path) / "blockwatch.service")
    assert argv[argv.index("--config") + 1] == str(
        tmp_path / "xdg-config" / "blockwatch" / "config.toml")
    assert "--yes" not in argv  # consent = true is in that config
