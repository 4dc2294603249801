"""Reading OONI files: records, or why one was skipped.

A ``.json`` file holds one measurement; any other file (``.jsonl``, ``.ooni`` as
``blockwatch export --format ooni -o x.ooni`` writes, ...) one per line; either may be
gzip-compressed (``.gz``); a directory's ``.json``, ``.jsonl`` and ``.ooni`` files are read in
name order. Records are streamed:
memory is bounded by the largest single record (``MAX_RECORD_BYTES``), and a record that is not
JSON or not an object, or is too large, is skipped and counted with its reason (``Skip``), never
a traceback. A truncated gzip stream ends its file with one counted skip. What a record holds is
checked later, by the models (``blockwatch.ooni.models``). A record and a skip carry the file and
the line (of a .jsonl file) they were read from; ``Skip.text`` says where and why in printable
text only (a file name may hold control characters or terminal escapes).
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple, cast

from blockwatch.probes.textsafe import one_line as printable  # what ooni shows

MAX_RECORD_BYTES = 64 * 1024 * 1024  # a web_connectivity record with bodies is < 2 MiB


@dataclass(frozen=True, slots=True)
class Skip:
    """A record that was not imported: where it was (the file, and the line of a .jsonl file)
    and why."""

    file: str
    reason: str
    line: int | None = None

    @property
    def where(self) -> str:
        return self.file if self.line is None else f"{self.file}:{self.line}"

    @property
    def text(self) -> str:
        """``FILE line N: reason``, printable."""
        at = self.file if self.line is None else f"{self.file} line {self.line}"
        return printable(f"{at}: {self.reason}")


class Record(NamedTuple):
    """A record as read: the file, the line of a .jsonl file (else None), the JSON object."""

    file: str
    line: int | None
    data: dict[str, Any]

    @property
    def where(self) -> str:
        return self.file if self.line is None else f"{self.file}:{self.line}"

    def skip(self, reason: str) -> Skip:
        return Skip(self.file, reason, self.line)


def _open(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return cast(IO[bytes], gzip.GzipFile(path, "rb"))
    return path.open("rb")


def _lines(fh: IO[bytes]) -> Iterator[tuple[int, bytes | None]]:
    """Numbered lines of at most ``MAX_RECORD_BYTES``; a longer one is skipped without being
    held (None)."""
    n = 0
    while True:
        n += 1
        line = fh.readline(MAX_RECORD_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_RECORD_BYTES and not line.endswith(b"\n"):
            while (rest := fh.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            yield n, None
            continue
        if line.strip():
            yield n, line


def _decode(raw: bytes, file: str, line: int | None) -> Record | Skip:
    try:
        data = json.loads(raw)
    except RecursionError:
        return Skip(file, "not JSON (nested too deeply)", line)
    except ValueError as exc:  # not JSON, not UTF-8, or an integer of thousands of digits
        return Skip(file, f"not JSON ({str(exc)[:80]})", line)
    if not isinstance(data, dict):
        return Skip(file, f"not a measurement object ({type(data).__name__})", line)
    return Record(file, line, data)


def _read_file(path: Path) -> Iterator[Record | Skip]:
    file = str(path)
    name = path.name.removesuffix(".gz")
    try:
        with _open(path) as fh:
            if not name.endswith(".json"):
                for n, line in _lines(fh):
                    yield Skip(file, f"record larger than {MAX_RECORD_BYTES} bytes", n) \
                        if line is None else _decode(line, file, n)
                return
            raw = fh.read(MAX_RECORD_BYTES + 1)
            if len(raw) > MAX_RECORD_BYTES:
                yield Skip(file, f"a .json file holds one measurement of at most "
                                 f"{MAX_RECORD_BYTES} bytes; use JSON lines (.jsonl)")
                return
            yield _decode(raw, file, None)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        yield Skip(file, f"truncated or corrupt gzip ({exc})")
    except OSError as exc:
        yield Skip(file, f"cannot read: {exc.strerror or exc}")


def read_records(paths: Iterable[str | Path]) -> Iterator[Record | Skip]:
    """Every record of the files (directories: their .json/.jsonl[.gz] files, sorted)."""
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and re.search(
                r"\.(jsonl?|ooni)(\.gz)?$", f.name))
            if not files:
                yield Skip(str(p), "no .json, .jsonl or .ooni file in this directory")
            for f in files:
                yield from _read_file(f)
        elif not p.exists():
            yield Skip(str(p), "no such file or directory")
        else:
            yield from _read_file(p)
