"""A throwaway PostgreSQL server for the tests, from Debian's binaries (package ``postgresql``,
installed by scripts/install-lab-deps.sh).

``postgres_server`` (session scope) runs ``initdb`` and ``pg_ctl`` as an unprivileged user (the
server refuses to run as root): the data directory is in a fresh temporary directory, the server
listens on 127.0.0.1 on a free port and on a unix socket in that directory, with ``fsync`` off.
It is stopped and deleted at the end of the session. ``postgres_url`` gives each test a database
of its own. Without the binaries, psycopg or a user to run them as, the tests skip with the
reason, or fail when ``BLOCKWATCH_REQUIRE_LAB=1`` (CI).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REQUIRED = os.environ.get("BLOCKWATCH_REQUIRE_LAB") == "1"
USER = "postgres"  # the Debian package's system user


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    # how to restart it (pg_ctl restart: a clean shutdown, then the same options)
    restart_argv: tuple[str, ...] = ()

    def restart(self) -> None:
        subprocess.run(list(self.restart_argv), check=True, capture_output=True, timeout=90)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"bw_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(host=self.host, port=self.port, user=self.user,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"PostgreSQL tests required (BLOCKWATCH_REQUIRE_LAB=1) but {reason}; "
                    "run scripts/install-lab-deps.sh", pytrace=False)
    pytest.skip(reason)


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[3]) if Path(p).parts[3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_user(user: str | None, argv: list[str]) -> list[str]:
    return argv if user is None else ["runuser", "-u", user, "--", *argv]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'blockwatch-censorship[postgresql]')")
    bindir = _bindir()
    if bindir is None:
        _unavailable("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin)")
        return
    run_as: str | None = None
    owner = pwd.getpwuid(os.getuid())
    if os.getuid() == 0:
        try:
            owner = pwd.getpwnam(USER)
        except KeyError:
            _unavailable(f"running as root and there is no {USER!r} user to run PostgreSQL as")
        if shutil.which("runuser") is None:
            _unavailable("running as root and runuser is missing")
        run_as = owner.pw_name
    tmp = Path(tempfile.mkdtemp(prefix="blockwatch-pg-"))
    data, log = tmp / "data", tmp / "server.log"
    os.chmod(tmp, 0o700)
    os.chown(tmp, owner.pw_uid, owner.pw_gid)
    port = _free_port()
    started = False
    try:
        subprocess.run(_as_user(run_as, [str(bindir / "initdb"), "-D", str(data), "-U",
                                          owner.pw_name, "--auth=trust", "-E", "UTF8",
                                          "--locale=C", "--no-sync"]),
                       check=True, capture_output=True, timeout=120)
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={tmp} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        started = True
        subprocess.run(_as_user(run_as, [str(bindir / "pg_ctl"), "-D", str(data), "-l",
                                          str(log), "-o", options, "-w", "-t", "60", "start"]),
                       check=True, capture_output=True, timeout=90)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        server_log = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        _stop(bindir, run_as, data, tmp, started)
        pytest.fail(f"cannot start PostgreSQL: {exc}\n{detail.decode(errors='replace')}\n"
                    f"{server_log}", pytrace=False)
    restart = _as_user(run_as, [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o",
                                options, "-m", "fast", "-w", "-t", "60", "restart"])
    try:
        yield PostgresServer("127.0.0.1", port, owner.pw_name, tuple(restart))
    finally:
        _stop(bindir, run_as, data, tmp, True)


def _stop(bindir: Path, run_as: str | None, data: Path, tmp: Path, started: bool) -> None:
    if started and (data / "postmaster.pid").exists():
        subprocess.run(_as_user(run_as, [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast",
                                         "-w", "stop"]), capture_output=True, timeout=60)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh empty database on the session's server."""
    return postgres_server.create_database()
