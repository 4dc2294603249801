"""``blockwatch completion bash|zsh|tcsh``: a shell completion script for every command and
option, generated from the parser itself by shtab (so it never falls behind the CLI).

    blockwatch completion bash > ~/.local/share/bash-completion/completions/blockwatch
    blockwatch completion zsh > ~/.zfunc/_blockwatch   # with fpath+=(~/.zfunc) in ~/.zshrc
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

SHELLS = ("bash", "zsh", "tcsh")


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> dict[str, Any]:
    p = sub.add_parser("completion", help="print a shell completion script (bash, zsh, tcsh)")
    p.add_argument("shell", choices=SHELLS,
                   help="the shell: bash (save it in ~/.local/share/bash-completion/completions"
                   "/blockwatch), zsh (as _blockwatch in a directory of your fpath) or tcsh")
    return {"completion": cmd_completion}


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    from blockwatch.cli import build_parser

    sys.stdout.write(shtab.complete(build_parser(), shell=args.shell))
    return 0
