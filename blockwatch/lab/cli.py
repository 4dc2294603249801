"""``blockwatch lab up|status|down|exec|demo``: the censorship lab from the command line.

Every lab error is one message saying what is wrong and what to do, exit code 2; the lab never
prints a traceback for a missing package, a missing privilege or a bad scenario file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from blockwatch.lab.scenario import shipped
from blockwatch.lab.state import LabError

EXIT_OK, EXIT_MISMATCH, EXIT_LAB = 0, 1, 2


def register(sub: Any, common: Any) -> dict[str, Any]:
    lab = sub.add_parser("lab", help="the censorship lab (network namespaces; needs root)",
                         description="A censored client, an uncensored control client, a censor "
                         "and real servers in network namespaces on this machine.")
    lab.add_argument("--name", default="bw", metavar="NAME",
                     help="lab name, the prefix of its namespaces (default: bw)")
    cmds = lab.add_subparsers(dest="lab_command", required=True, metavar="ACTION")
    up = cmds.add_parser("up", help="build the lab (or switch the scenario of a running one)")
    up.add_argument("--scenario", metavar="NAME|FILE",
                    help=f"a shipped scenario ({', '.join(shipped())}) or a TOML file")
    up.add_argument("--sites", type=int, default=0, metavar="N",
                    help="also serve N generated sites siteN.bench.lab (benchmarks)")
    cmds.add_parser("status", help="what the lab runs and where its configs are")
    down = cmds.add_parser("down", help="remove everything the lab created; its results "
                           "database is kept (in /var/lib/blockwatch-lab) and named")
    down.add_argument("--delete-results", action="store_true",
                      help="delete the lab's results database instead of keeping it")
    ex = cmds.add_parser("exec", help="run a command in the censored client's namespace")
    ex.add_argument("--control", action="store_true", help="in the control client instead")
    ex.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                    help="the command to run in the client's namespace, after --")
    demo = cmds.add_parser("demo", help="up, a sweep from both clients, the verdicts, down")
    demo.add_argument("--scenario", default="methods", metavar="NAME|FILE",
                      help="a built-in scenario or a scenario file (default: methods)")
    demo.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    return {"lab": handle}


def handle(args: argparse.Namespace) -> int:
    try:
        return int(_ACTIONS[args.lab_command](args))
    except LabError as exc:
        print(f"blockwatch lab: {exc}", file=sys.stderr)
        return EXIT_LAB


def _up(args: argparse.Namespace) -> int:
    from blockwatch.lab import lifecycle

    if not 0 <= args.sites <= 1000:
        raise LabError("--sites: from 0 to 1000")
    lab, said = lifecycle.up(args.name, args.scenario, args.sites)
    print(said)
    print(f"  configs: {lab.manifest.info['censored_config']} (censored client), "
          f"{lab.manifest.info['control_config']} (control client)")
    named = "" if args.name == "bw" else f" --name {args.name}"
    print(f"  try: sudo blockwatch lab{named} exec -- blockwatch run --config "
          f"{lab.manifest.info['censored_config']}")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from blockwatch.lab import lifecycle
    from blockwatch.lab.state import Manifest, alive

    m = Manifest.load(args.name)
    if m is None:
        print(f"lab {args.name}: not up")
        return EXIT_OK
    problems = lifecycle.healthy(m)
    state = m.status if not problems else f"{m.status}, broken: {'; '.join(problems)}"
    print(f"lab {m.name}: {state}; scenario {m.scenario}; state in {m.directory}")
    print(f"  namespaces: {' '.join(m.namespaces)}")
    for p in m.procs:
        print(f"  {p.role:<12} pid {p.pid:<8} in {p.namespace:<14} "
              f"{'running' if alive(p) else 'NOT RUNNING'}")
    for key in ("censored_config", "control_config"):
        if key in m.info:
            print(f"  {key.replace('_', ' ')}: {m.info[key]}")
    return EXIT_OK


def _down(args: argparse.Namespace) -> int:
    from blockwatch.lab import lifecycle

    print(lifecycle.down(args.name, delete_results=args.delete_results))
    return EXIT_OK


def _exec(args: argparse.Namespace) -> int:
    from blockwatch.lab import lifecycle

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise LabError("exec: give a command, e.g. `blockwatch lab exec -- dig kakao.com`")
    lab = lifecycle.get(args.name)
    namespace = lab.ns("control" if args.control else "client")
    argv, env = with_this_blockwatch(argv, os.environ)
    try:
        os.execvpe("ip", ["ip", "netns", "exec", namespace, *argv], env)
    except OSError as exc:
        raise LabError(f"cannot run ip netns exec: {exc}") from None


def with_this_blockwatch(argv: list[str], environ: Any) -> tuple[list[str], dict[str, str]]:
    """``blockwatch`` in the namespace is this blockwatch: sudo's secure_path does not hold a
    virtualenv's bin directory, so `sudo blockwatch lab exec -- blockwatch run` would find no
    ``blockwatch`` (or another one). That directory also leads the command's PATH."""
    from blockwatch.lab.runner import blockwatch_argv

    here = str(Path(sys.executable).parent)
    env = dict(environ)
    env["PATH"] = os.pathsep.join([here, *[p for p in env.get("PATH", "").split(os.pathsep)
                                           if p and p != here]]) or here
    if argv[:1] == ["blockwatch"]:
        argv = [*blockwatch_argv(), *argv[1:]]
    return argv, env


def _demo(args: argparse.Namespace) -> int:
    from blockwatch.lab.demo import demo

    return demo(args.name, args.scenario, keep=args.keep)


_ACTIONS = {"up": _up, "status": _status, "down": _down, "exec": _exec, "demo": _demo}
