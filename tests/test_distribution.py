"""The wheel users install: named blockwatch-censorship (``blockwatch`` on PyPI is someone
else's), with the example config and the deploy units inside (``blockwatch init --example``,
install-timer), and ``python -m blockwatch`` in it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from blockwatch import DISTRIBUTION

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_wheel_carries_the_example_config_and_the_units(tmp_path: Path) -> None:
    made_build = not (ROOT / "build").exists()  # setuptools builds in the tree: tidy up
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                               str(ROOT), "-w", str(tmp_path)], capture_output=True, text=True,
                              timeout=300, check=False, cwd=tmp_path)
    finally:
        if made_build:
            shutil.rmtree(ROOT / "build", ignore_errors=True)
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name.startswith("blockwatch_censorship-")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        assert f"Name: {DISTRIBUTION}\n" in zf.read(meta).decode()
        example = zf.read("blockwatch/config.example.toml").decode()
    assert example == (ROOT / "config.example.toml").read_text()
    for unit in ("blockwatch.service", "blockwatch.timer", "blockwatch-daemon.service",
                 "crontab"):
        assert f"blockwatch/deploy/{unit}" in names
    assert "blockwatch/__main__.py" in names
    assert not any(n.split("/")[0] in ("probes", "storage", "deploy") for n in names)


def test_the_readme_never_points_at_the_other_package() -> None:
    text = "\n".join(p.read_text() for p in (ROOT / "README.md", *ROOT.glob("docs/*.md"),
                                             *ROOT.glob("deploy/*")))
    assert "pip install blockwatch\n" not in text and "pip install 'blockwatch[" not in text
    assert "pip install 'blockwatch-censorship[postgresql]'" in text
