"""Every option and argument of every command says what it is for (``--help`` is the manual a
volunteer reads first)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from blockwatch.cli import build_parser


def _walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_option_has_help() -> None:
    found = list(_walk(build_parser(), "blockwatch"))
    assert len(found) > 150  # every command was walked
    missing = [f"{path} {'/'.join(a.option_strings) or a.dest}" for path, a in found
               if not (a.help and a.help.strip()) or a.help == argparse.SUPPRESS]
    assert missing == []


def test_every_subcommand_has_help() -> None:
    def commands(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, str]]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {c.dest: c.help for c in action._choices_actions}
                for name, sub in action.choices.items():
                    yield f"{path} {name}", helps.get(name) or ""
                    yield from commands(sub, f"{path} {name}")

    assert [p for p, h in commands(build_parser(), "blockwatch") if not h.strip()] == []


def _complete(script: str, line: str) -> set[str]:
    """What bash offers after ``line`` with blockwatch's completion script loaded."""
    import subprocess

    words = line.split() + ([""] if line.endswith(" ") else [])
    code = (f"source {script}; COMP_WORDS=({' '.join(repr(w) for w in words)}); "
            f"COMP_CWORD={len(words) - 1}; COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}; "
            "_shtab_blockwatch; printf '%s\\n' \"${COMPREPLY[@]}\"")
    done = subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=30,
                          check=True)
    return set(done.stdout.split())


def test_bash_completion_knows_the_commands_and_options(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    from blockwatch.cli import main

    assert main(["completion", "bash"]) == 0
    script = tmp_path / "blockwatch.bash"
    script.write_text(capsys.readouterr().out)
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)  # valid bash
    assert _complete(str(script), "blockwatch in") == {"init", "install-timer"}
    assert "--offline-ok" in _complete(str(script), "blockwatch run --off")
    assert {"--since", "--until", "--vantage", "--db"} <= _complete(
        str(script), "blockwatch runs --")
