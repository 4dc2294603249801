"""Issue #12: no module of ours above ``LIMIT`` lines without a reason in its docstring.

A module that grows past the limit is split by what its parts own (as probes/dns.py and
probes/trace.py were), or says in its docstring, in a paragraph starting with ``Size:``, why it
is one module. A ``Size:`` paragraph in a module back under the limit is removed, not kept as a
licence. The tests and benchmarks are not counted; the Alembic migrations are generated.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("probes", "analysis", "storage", "ooni", "scheduler", "reports", "blockwatch")
EXCLUDED = (ROOT / "storage" / "migrations",)
LIMIT = 400
# a reason, not a bare "Size: large": a sentence's worth of words after the label
MIN_REASON_WORDS = 8


def modules() -> list[Path]:
    """Every Python module of the installed packages, once (blockwatch/ links to the others)."""
    found: set[Path] = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            real = path.resolve()
            if not any(real.is_relative_to(e) for e in EXCLUDED):
                found.add(real)
    return sorted(found)


def size_reason(source: str) -> str | None:
    """The module docstring's ``Size:`` paragraph, or None."""
    doc = ast.get_docstring(ast.parse(source), clean=True) or ""
    for paragraph in doc.split("\n\n"):
        if paragraph.lstrip().startswith("Size:"):
            return " ".join(paragraph.split())
    return None


def problem(source: str) -> str | None:
    """What is wrong with a module's size and its reason, or None."""
    lines = len(source.splitlines())
    reason = size_reason(source)
    if lines > LIMIT:
        if reason is None:
            return f"{lines} lines and no 'Size:' paragraph in its docstring"
        if len(reason.split()) - 1 < MIN_REASON_WORDS:
            return f"{lines} lines and a 'Size:' paragraph that gives no reason: {reason!r}"
    elif reason is not None:
        return f"{lines} lines (at most {LIMIT}): its 'Size:' paragraph is no longer needed"
    return None


def test_the_packages_are_found() -> None:
    found = {p.relative_to(ROOT).as_posix() for p in modules()}
    assert {"probes/dns.py", "blockwatch/cli.py", "blockwatch/lab/censor.py",
            "ooni/transform/common.py"} <= found
    assert not any(m.startswith(("storage/migrations/", "tests/", "benchmarks/")) for m in found)


def test_no_module_is_large_without_a_reason() -> None:
    offenders = []
    for path in modules():
        found = problem(path.read_text(encoding="utf-8"))
        if found is not None:
            offenders.append(f"{path.relative_to(ROOT)}: {found}")
    assert not offenders, "\n".join(offenders)


def test_the_check_fails_on_what_it_should() -> None:
    body = "x = 1\n" * LIMIT
    reason = "Size: the subcommands share one parser, and splitting them scatters it.\n"
    assert problem(f'"""A module."""\n{body}') is not None
    assert problem(f'"""A module.\n\nSize: large.\n"""\n{body}') is not None
    assert problem(f'"""A module.\n\n{reason}"""\n{body}') is None
    assert problem(f'"""A module.\n\n{reason}"""\nx = 1\n') is not None  # stale
    assert problem('"""A module."""\nx = 1\n') is None
