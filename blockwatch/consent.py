"""Informed consent before blockwatch sends probes that others can see.

Guarantees:
* a run whose scope can reach public addresses starts only with consent: ``--yes``,
  ``consent = true`` in the config, or, for a run at a terminal only, an earlier "yes"
  (``blockwatch consent`` or a first interactive run, recorded in the state directory for this
  version of the notice): an unattended run needs ``--yes`` or ``consent = true``, as the notice
  says;
* the answer to the prompt is the word it asks for, ``yes``; ``y`` or anything else is no;
* at a terminal (stdin and stderr both ttys) the notice is shown and the user is asked once;
* anywhere else (cron, systemd, a pipe, tests) nothing is asked, so nothing hangs: without
  consent the run is refused with a message saying how to give it;
* a scope without public addresses (loopback, a lab of private addresses) needs no consent:
  its probes cannot reach the services whose observers the notice warns about.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

# Bump when the notice says something new: earlier answers then no longer count.
NOTICE_VERSION = 3  # 2: the trace probe, the control SNI and the control proxy; 3: follow-up
# traces by default where raw sockets are available

NOTICE = """\
blockwatch: before the first run, please read this.

What it does: blockwatch sends DNS queries, TCP connections, TLS handshakes and HTTP requests
from this machine to the services it tests (social networks, messengers, news sites, VPN
servers, ...), now and, if you schedule it, regularly and unattended.

When a TLS handshake fails, it is tried once more with a harmless server name (example.com) to
tell name filtering from address blocking. When blockwatch may open raw sockets (run as root,
or with CAP_NET_RAW) and a handshake or request was reset or went unanswered, that endpoint is
traced once: the same packets with small TTLs, as traceroute does (routers on the way see them,
and they look unusual); `[probe.trace] follow_up = false` turns that off. Only if you turn them
on: the `trace` probe does so for every endpoint, `[dns] silent` asks the tested names at an
address where no DNS server runs, and `control_proxy` sends the same tests through a proxy
whose operator sees which services you test.

What is stored: every observation (answers, addresses, errors, timings, certificates, page
hashes) goes into a database on this machine (or the one your config names), labelled with
the vantage name you chose. Your IP address is never stored or exported. Nothing is sent
anywhere else unless you export or share the database yourself.

The risk: anyone watching this network (your ISP, your employer, your government) can see that
this machine tried to reach these services, again and again if scheduled. In some countries
accessing or testing blocked services is against the law or draws attention. Only run it if
you understand and accept that risk for yourself and for whoever owns this network.

Unattended runs (cron, systemd, `blockwatch schedule`) need `consent = true` in the config or
--yes on the command line: set one only after reading this.
"""


class ConsentRefused(Exception):
    """No consent: nothing may be measured. The message says how to give it."""


def needs_consent(scope: Sequence[str]) -> bool:
    """Whether probes within ``scope`` (config entries) can reach public addresses."""
    for entry in scope:
        if entry in ("public", "system-resolvers"):
            return True  # system resolvers are often the ISP's: the queries leave this network
        net = ipaddress.ip_network(entry, strict=False)
        if not (net.is_private or net.is_loopback or net.is_link_local):
            return True
    return False


def consent_file(state_dir: Path) -> Path:
    return state_dir / "consent.json"


def recorded(state_dir: Path) -> bool:
    try:
        data = json.loads(consent_file(state_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # missing or damaged: ask again rather than assume
    return isinstance(data, dict) and data.get("version") == NOTICE_VERSION


def record(state_dir: Path) -> None:
    path = consent_file(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    path.write_text(json.dumps({"version": NOTICE_VERSION, "agreed_at": when}) + "\n",
                    encoding="utf-8")


def is_interactive(stdin: TextIO, stderr: TextIO) -> bool:
    try:
        return stdin.isatty() and stderr.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def ask(stdin: TextIO, stderr: TextIO) -> bool:
    stderr.write(NOTICE + "\nType 'yes' to agree and continue, anything else to stop: ")
    stderr.flush()
    answer = stdin.readline()
    return answer.strip().lower() == "yes"  # the word the prompt asks for, nothing shorter


def ensure_consent(*, yes: bool, configured: bool, scope: Sequence[str], state_dir: Path,
                   stdin: TextIO, stderr: TextIO, source: str = "the config") -> str:
    """Return how consent was given (``flag``, ``config``, ``recorded``, ``asked``,
    ``not-needed``) or raise ``ConsentRefused``."""
    if not needs_consent(scope):
        return "not-needed"
    if yes:
        return "flag"
    if configured:
        return "config"
    interactive = is_interactive(stdin, stderr)
    if interactive and recorded(state_dir):
        return "recorded"
    if not interactive:
        raise ConsentRefused(
            "no consent for an unattended run: nothing was measured. Read what blockwatch does "
            "and the risks (`blockwatch consent`), then set `consent = true` in "
            f"{source} or pass --yes.")
    if not ask(stdin, stderr):
        raise ConsentRefused("you did not agree: nothing was measured")
    try:
        record(state_dir)
    except OSError as exc:
        stderr.write(f"blockwatch: could not remember your answer ({exc.strerror}); "
                     "you will be asked again\n")
    return "asked"


def unattended_refusal(*, yes: bool, configured: bool, scope: Sequence[str],
                       source: str) -> str | None:
    """Why every unattended run with this config (a timer's, cron's) would refuse, or None:
    their consent is ``consent = true`` or ``--yes``, never an answer given at a terminal."""
    if not needs_consent(scope) or configured or yes:
        return None
    return (f"no consent for an unattended run: {source} does not say consent = true, so "
            "every unattended run would refuse (exit 7). Read `blockwatch consent`, then set "
            f"`consent = true` in {source} (or pass --yes)")
