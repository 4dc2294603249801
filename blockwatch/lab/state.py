"""The lab's manifest: what one lab created (namespaces, processes, files), written to disk
*before* each thing is created, so teardown after a crash removes exactly what exists.

A process is recorded with its start time (``/proc/PID/stat`` field 22), so a PID that the
kernel has since given to another program is never signalled.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_ROOT = Path(os.environ.get("BLOCKWATCH_LAB_ROOT", "/run/blockwatch-lab"))
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")


class LabError(Exception):
    """Something the user can act on: the message says what is wrong and what to do."""


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise LabError(f"lab name {name!r}: use 1-12 lower-case letters and digits, "
                       "starting with a letter")
    return name


@dataclass(slots=True)
class Proc:
    role: str
    pid: int
    start: str
    namespace: str


@dataclass(slots=True)
class Manifest:
    name: str
    status: str = "creating"  # creating -> up; down removes the directory
    scenario: str = "none"
    namespaces: list[str] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # outside the state dir (/etc/netns/...)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def directory(self) -> Path:
        return STATE_ROOT / self.name

    @property
    def file(self) -> Path:
        return self.directory / "manifest.json"

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")
        tmp.replace(self.file)  # atomic: a crash never leaves half a manifest

    @classmethod
    def load(cls, name: str) -> Manifest | None:
        path = STATE_ROOT / name / "manifest.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            raw["procs"] = [Proc(**p) for p in raw.get("procs", [])]
            return cls(**raw)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError) as exc:
            raise LabError(f"{path}: unreadable lab manifest ({exc}); remove the lab's "
                           f"namespaces with `ip netns list` / `ip netns del` and delete "
                           f"{path.parent}") from None


def proc_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot, or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces or parentheses: split after the last ')'
    return stat.rsplit(")", 1)[1].split()[19]


def alive(p: Proc) -> bool:
    """Still running: a zombie (exited, waiting for its parent or init to reap it) is not."""
    if proc_start(p.pid) != p.start:
        return False
    try:
        state = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
