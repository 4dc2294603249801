"""The house rules of docs/architecture.md, read from the code: which package may import which
(data moves one way), and where SQLAlchemy and APScheduler may appear."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("probes", "analysis", "storage", "ooni", "scheduler", "reports")
MAY_IMPORT = {
    "probes": set(),
    "analysis": {"probes"},
    "storage": {"probes"},
    "ooni": {"probes", "analysis", "storage"},
    "scheduler": {"probes", "analysis", "storage"},
    "reports": {"probes", "storage"},
}
# known exceptions, each with the step that removes it
EXCEPTIONS: dict[tuple[str, str], str] = {}
ONLY_IN = {"sqlalchemy": {"storage"}, "alembic": {"storage"}, "apscheduler": {"scheduler"}}


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports (``from blockwatch import x`` counts as blockwatch.x)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "blockwatch":
                found.update(f"blockwatch.{a.name}" for a in node.names)
    return found


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_data_moves_one_way() -> None:
    wrong = []
    for package in PACKAGES:
        for path in sources(package):
            rel = str(path.relative_to(ROOT))
            for module in imports(path):
                parts = module.split(".")
                if parts[0] != "blockwatch" or len(parts) < 2 or parts[1] == package:
                    continue
                other = parts[1]
                if other not in MAY_IMPORT[package] and (rel, other) not in EXCEPTIONS:
                    wrong.append(f"{rel} imports {module}")
    assert not wrong, wrong


def test_the_exceptions_are_still_needed() -> None:
    # an exception that the code no longer needs is removed from the list, not kept as a licence
    for (rel, other), why in EXCEPTIONS.items():
        assert any(m.startswith(f"blockwatch.{other}") for m in imports(ROOT / rel)), why


def test_libraries_stay_in_their_room() -> None:
    wrong = []
    for package in (*PACKAGES, "blockwatch"):
        for path in sources(package):
            if package == "blockwatch" and path.is_symlink():
                continue
            for module in imports(path):
                rooms = ONLY_IN.get(module.split(".")[0])
                if rooms is not None and package not in rooms:
                    wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not wrong, wrong
