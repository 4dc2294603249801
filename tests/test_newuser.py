"""What a new volunteer or researcher met following the README (issue: use blockwatch as a
newcomer would, and fix what breaks): each test is one thing that was wrong."""

from __future__ import annotations

import re
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
