"""blockwatch installs as one namespace: nothing called probes, storage, scheduler or reports
(names other packages use) is importable at top level from an installed blockwatch, and no
module of ours is loaded twice under two names."""

from __future__ import annotations

import subprocess
import sys

TOP_LEVEL = ("probes", "analysis", "storage", "ooni", "scheduler", "reports")


def test_every_module_imports_under_the_blockwatch_namespace_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # in a fresh interpreter outside the source tree, so that nothing this test session
    # already imported hides a stray top-level import
    code = f"""
import importlib, pkgutil, sys
import blockwatch
skip = {{"blockwatch.lab.inject", "blockwatch.lab.delay", "blockwatch.lab.udpecho",
        "blockwatch.storage.migrations.env"}}
names = []
for info in pkgutil.walk_packages(blockwatch.__path__, "blockwatch."):
    if info.name not in skip and ".migrations.versions." not in info.name:
        importlib.import_module(info.name)
        names.append(info.name)
print(len(names))
print([m for m in sys.modules if m.split(".")[0] in {TOP_LEVEL!r}])
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    count, stray = done.stdout.split("\n")[:2]
    assert int(count) > 50
    assert stray == "[]"


def test_the_old_top_level_names_are_not_installed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # from anywhere but the source tree, only blockwatch is importable
    code = ("import importlib.util as u; print([n for n in " + repr(TOP_LEVEL) +
            " if u.find_spec(n) is not None])")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == "[]"
