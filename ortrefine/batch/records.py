"""JSONL in, JSONL out, one whole record per line: what makes a job resumable after kill -9.

Every output record is appended with a single write of its whole line and fsync'd before the next
one starts, so a killed job leaves complete lines plus, at worst, one torn last line without its
newline. On the next run that tail is cut off (its record is redone) and the ids of the complete
lines are skipped. A lock on the output file keeps two jobs from writing it at once.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ortrefine.errors import ConfigError, OrtRefineError


def id_key(value: Any) -> str:
    """A record id as a set key: 7 and "7" stay different ids."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


@dataclass
class InputRecord:
    """One line of the input: its id (given, or the 1-based line number), the record or why it
    cannot be read (then it becomes an error record)."""

    id: Any
    line: int
    record: dict[str, Any] | None
    problem: str | None = None


def read_input(path: str | Path) -> list[InputRecord]:
    """Every non-blank line of IN; refuses duplicate ids (resuming skips by id)."""
    path = Path(path)
    out: list[InputRecord] = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                out.append(InputRecord(n, n, None, f"line {n} is not a JSON object ({e})"))
                continue
            if not isinstance(rec, dict):
                out.append(InputRecord(n, n, None, f"line {n} is not a JSON object"))
                continue
            rid = rec.get("id", n)
            if not isinstance(rid, (str, int)) or isinstance(rid, bool):
                out.append(InputRecord(n, n, None, f"line {n}: id must be a string or a whole number, got {rid!r}"))
                continue
            out.append(InputRecord(rid, n, rec))
    seen: dict[str, int] = {}
    for r in out:
        k = id_key(r.id)
        if k in seen:
            raise ConfigError(f"{path}: id {r.id!r} is on lines {seen[k]} and {r.line}; ids must be unique, since a resumed job "
                              "skips the ids already written (a line without an id gets its line number)")
        seen[k] = r.line
    return out


class OutputLog:
    """The output file, opened for appending whole records.

    done: ids (as `id_key`) of the records already in the file; failed: those of them that are
    error records. repaired: bytes of a torn last line that were cut off.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        created = not self.path.exists()
        try:  # never through a symlink: the records go to the file named, not to wherever it points
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise OrtRefineError(f"{self.path} is a symlink; give the output file itself") from None
            raise
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self.fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OrtRefineError(f"{self.path}: another batch job is writing it; wait for it, or write elsewhere") from None
            raise
        try:
            if created:
                _fsync_dir(self.path.parent)
            self.done, self.failed, self.repaired = self._recover()
        except BaseException:
            self.close()
            raise

    def _recover(self) -> tuple[set[str], set[str], int]:
        """Ids already written, those of them that failed, and the torn last line cut off. Every complete line is checked
        before anything is cut, and only a tail that looks like the start of a record of ours
        (an unfinished JSON object) is cut: a file `batch` did not write is refused untouched."""
        with open(self.fd, "rb", closefd=False) as f:
            f.seek(0)
            data = f.read()
        end = data.rfind(b"\n") + 1
        torn = len(data) - end
        done, failed = set(), set()
        for n, raw in enumerate(data[:end].splitlines(), start=1):
            if not raw.strip():
                continue
            rec = _record(raw)
            if rec is None:
                raise OrtRefineError(f"{self.path}: line {n} is not an output record; this file was not written by "
                                     "`ortrefine batch` — write to another file")
            done.add(id_key(rec["id"]))
            if "error" in rec:
                failed.add(id_key(rec["id"]))
        if torn:
            tail = data[end:]
            if not tail.startswith(b'{"id"') or _record(tail) is not None:  # append() writes the id first
                raise OrtRefineError(f"{self.path}: its last line is not an unfinished output record; this file was not "
                                     "written by `ortrefine batch` — write to another file")
            os.ftruncate(self.fd, end)
            os.fsync(self.fd)
        return done, failed, torn

    def append(self, record: dict[str, Any]) -> None:
        """One whole line, on disk before this returns."""
        data = (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        os.fsync(self.fd)
        self.done.add(id_key(record["id"]))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases the lock
            self.fd = -1

    def __enter__(self) -> "OutputLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _record(raw: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return rec if isinstance(rec, dict) and "id" in rec else None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_paths(input_path: str | Path, output_path: str | Path) -> None:
    if Path(output_path).exists() and Path(input_path).resolve() == Path(output_path).resolve():
        raise ConfigError(f"{output_path} is also the input; write the records to another file")


def pending(records: Iterable[InputRecord], done: set[str]) -> list[InputRecord]:
    return [r for r in records if id_key(r.id) not in done]


def failed_before(records: Iterable[InputRecord], failed: set[str]) -> int:
    """Records of IN that an earlier run wrote as error records (a rerun skips them)."""
    return sum(id_key(r.id) in failed for r in records)
