"""``blockwatch init``: a first config, asked for once.

At a terminal it asks for the vantage's name, its country (an ISO 3166-1 alpha-2 code, checked)
and, after showing the notice (``blockwatch consent``), for informed consent (the word ``yes``);
in a script the same comes from ``--name``, ``--country`` and ``--agree``. It writes
``$XDG_CONFIG_HOME/blockwatch/config.toml`` (``blockwatch.config.default_config_path``), which
every command reads when no ``--config`` is given. ``--example`` prints the annotated example
config that ships with blockwatch (every setting).

Guarantees: nothing is written unless the whole file parses as a valid config; an existing
config is replaced only with ``--force``; the name and country are written as TOML strings
(never as TOML a name could break out of); without consent the file says ``consent = false``
and unattended runs refuse (exit 7) until it is changed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any, TextIO

from blockwatch.cli import EXIT_OK, VANTAGE_NAME_MAX, UsageError

ATTEMPTS = 3  # a question asked again at most this often before init gives up


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> dict[str, Any]:
    p = sub.add_parser("init", help="write your config once: vantage name, country, consent "
                       "(~/.config/blockwatch/config.toml, read by every command)")
    p.add_argument("--name", metavar="NAME",
                   help="the vantage's name, e.g. home-wifi (stored with every run; do not use "
                   "anything that identifies you)")
    p.add_argument("--country", metavar="CC",
                   help="the vantage's country, an ISO 3166-1 code such as IR, RU, DE")
    p.add_argument("--agree", action="store_true",
                   help="I have read `blockwatch consent` and agree: writes consent = true "
                   "(unattended runs need it)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write here instead of ~/.config/blockwatch/config.toml "
                   "($XDG_CONFIG_HOME)")
    p.add_argument("--force", action="store_true", help="replace an existing config")
    p.add_argument("--example", action="store_true",
                   help="print the annotated example config (every setting), or write it to "
                   "--output FILE, and exit")
    return {"init": cmd_init}


def example_config() -> str:
    """The example config that ships in the package (config.example.toml)."""
    return (files("blockwatch") / "config.example.toml").read_text(encoding="utf-8")


def check_country(text: str) -> str:
    """An ISO 3166-1 alpha-2 code, upper case; ValueError otherwise."""
    import iso3166

    code = text.strip().upper()
    if code not in iso3166.countries_by_alpha2:
        raise ValueError(f"{text.strip()!r} is not an ISO 3166-1 country code (e.g. IR, RU, CN, "
                         "DE)")
    return code


def check_name(text: str) -> str:
    name = text.strip()
    if not name:
        raise ValueError("a vantage name cannot be empty")
    if len(name) > VANTAGE_NAME_MAX:
        raise ValueError(f"a vantage name has at most {VANTAGE_NAME_MAX} characters")
    if not name.isprintable():
        raise ValueError("a vantage name is printable text (no control characters)")
    return name


def render(name: str, country: str | None, consent: bool) -> str:
    """The config text (TOML strings written by json.dumps: a valid TOML basic string)."""
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    lines = [
        f"# Written by `blockwatch init` on {when}. Every blockwatch command reads this file",
        "# when no --config is given. Every setting, explained: `blockwatch init --example`.",
        "",
        "# true: you have read `blockwatch consent` (what blockwatch does, the risks) and agree;",
        "# unattended runs (cron, systemd, the daemon) refuse without it",
        f"consent = {'true' if consent else 'false'}",
        "",
        "[vantage]",
        f"name = {json.dumps(name, ensure_ascii=False)}",
    ]
    if country:
        lines.append(f"country = {json.dumps(country)}")
    return "\n".join(lines) + "\n"


def _ask(question: str, check: Callable[[str], str], stdin: TextIO, stderr: TextIO,
         *, optional: bool = False) -> str | None:
    for _ in range(ATTEMPTS):
        stderr.write(question)
        stderr.flush()
        line = stdin.readline()
        if not line:  # end of input
            raise UsageError("init: no answer (end of input): nothing was written")
        if optional and not line.strip():
            return None
        try:
            return check(line)
        except ValueError as exc:
            stderr.write(f"  {exc}\n")
    raise UsageError(f"init: no valid answer after {ATTEMPTS} tries: nothing was written")


def cmd_init(args: argparse.Namespace) -> int:
    from blockwatch.config import ConfigError, default_config_path, parse_config
    from blockwatch.consent import ask, is_interactive

    if args.example and not args.output:
        sys.stdout.write(example_config())
        return EXIT_OK
    target = Path(args.output).expanduser() if args.output else default_config_path()
    if target.exists() and not args.force:
        raise UsageError(f"{target} exists (blockwatch init was run before): edit it, or "
                         "use --force to replace it")
    if args.example:  # --output FILE: written there, as a config of one's own would be
        _write(target, example_config())
        print(f"blockwatch: wrote the example config to {target}", file=sys.stderr)
        return EXIT_OK
    interactive = is_interactive(sys.stdin, sys.stderr)
    try:
        name = check_name(args.name) if args.name is not None else None
        country = check_country(args.country) if args.country else None
    except ValueError as exc:
        raise UsageError(f"init: {exc}") from None
    if name is None and not interactive:
        raise UsageError("init: not at a terminal: give --name NAME (and --country CC, "
                         "--agree after reading `blockwatch consent`)")
    consent = bool(args.agree)
    if interactive:
        if name is None:
            name = _ask("Vantage name (a label for this machine's network, e.g. home-wifi; "
                        "not your own name): ", check_name, sys.stdin, sys.stderr)
        if country is None and args.country is None:
            country = _ask("Country (ISO 3166-1 code such as IR, RU, DE; empty to leave it "
                           "out): ", check_country, sys.stdin, sys.stderr, optional=True)
        if not consent:
            sys.stderr.write("\n")
            consent = ask(sys.stdin, sys.stderr)  # the notice, then: type 'yes'
    assert name is not None
    text = render(name, country, consent)
    try:
        parse_config(text, str(target))  # never write a file the commands would refuse
    except ConfigError as exc:
        raise UsageError(f"init: {exc}") from None
    _write(target, text)
    print(f"blockwatch: wrote {target} (vantage {name!r}"
          f"{', ' + country if country else ''}, consent = {str(consent).lower()})",
          file=sys.stderr)
    if not consent:
        print("blockwatch: no consent: runs at a terminal will ask; unattended runs refuse "
              "until you set consent = true there (read `blockwatch consent` first)",
              file=sys.stderr)
    if target == default_config_path():
        print(f"next: blockwatch run   (every command reads {target} when no --config is "
              "given)", file=sys.stderr)
    else:
        print(f"next: blockwatch run --config {target}", file=sys.stderr)
    return EXIT_OK


def _write(target: Path, text: str) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror}") from None
