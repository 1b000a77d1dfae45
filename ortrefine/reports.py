"""Report folders (`compare --out`, `eval --out`): write only what is the tool's to write.

The rule: anything ortrefine did not write is not its to delete or overwrite.

- A report folder is claimed only when it is new, empty, or carries the marker file
  `.ortrefine-report` that an earlier run wrote there; the marker lists every file ortrefine wrote
  (with its sha256), so a file the user added or edited since is never replaced.
- Each file is written to a temp file created with O_CREAT|O_EXCL|O_NOFOLLOW in the same folder
  and renamed over its name (os.replace replaces a symlink itself, it never follows one); a new
  name is renamed in without replacing anything that appeared meanwhile.
- A target name that is a symlink or not a regular file is refused, never written through.

Torch- and matplotlib-free: a plot is written by handing `write` a callback that saves into the
temp file (`fig.savefig(f, format="png")`).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
from pathlib import Path
from typing import IO, Callable, Sequence

from ortrefine.errors import ExportError

MARKER = ".ortrefine-report"
WRITTEN_BY = "ortrefine"
_FIX = "move them or choose another --out"


def _shown(names: Sequence[str]) -> str:
    names = sorted(names)
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _digest_regular(path: Path) -> str | None:
    """sha256 of `path` if it is a regular file (not a symlink), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        h = hashlib.sha256()
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
        return h.hexdigest()


def _read_marker(folder: Path) -> dict[str, str] | None:
    """{name: sha256} of the files an earlier run wrote, or None when the folder carries no valid marker."""
    raw = None
    try:
        fd = os.open(folder / MARKER, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raw = f.read(1 << 20)
    try:
        data = json.loads(raw.decode("utf-8")) if raw is not None else None
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("written_by") != WRITTEN_BY or not isinstance(data.get("files"), dict):
        return None
    files = data["files"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        return None
    return dict(files)


def _inspect(folder: Path, names: Sequence[str]) -> dict[str, str] | None:
    """Check that `names` may be written into `folder`. None: the folder does not exist yet;
    else {name: sha256} of the files in it that are ortrefine's (listed in the marker, unchanged).
    Raises ExportError naming what is in the way."""
    if MARKER in names:
        raise ValueError(f"{MARKER} is the marker's own name")
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise ExportError(f"{folder} lies under a file, not a folder; choose another --out") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ExportError(f"{folder} exists and is not a folder; choose another --out")
    entries = os.listdir(folder)
    if not entries:
        return {}
    listed = _read_marker(folder)
    if listed is None:
        raise ExportError(f"{folder} holds files ortrefine did not write ({_shown(entries)}); reports go only into a new or "
                          f"empty folder or one ortrefine wrote a report into: {_FIX}")
    ours = {name: h for name, h in listed.items() if "/" not in name and _digest_regular(folder / name) == h}
    in_way = []
    for name in names:
        target = folder / name
        try:
            mode = os.lstat(target).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(mode):
            in_way.append(f"{name} (a symbolic link)")
        elif not stat.S_ISREG(mode):
            in_way.append(f"{name} (not a regular file)")
        elif name not in ours:
            in_way.append(name)
    if in_way:
        raise ExportError(f"{folder}: {_shown(in_way)} not written by ortrefine (or changed since it wrote them), so never "
                          f"overwritten: {_FIX}")
    return ours


def check_report_folder(folder: str | Path, names: Sequence[str]) -> None:
    """Raise ExportError now if `names` could not be written into `folder`; writes nothing
    (a command calls it before its long run, `claim_report_folder` checks again)."""
    _inspect(Path(folder), names)


def _write_via_temp(folder: Path, name: str, fill: Callable[[IO[bytes]], object], replace: bool) -> str:
    """fill(f) into a fresh temp file beside `name`, then rename it to `name`: over it (`replace`,
    which swaps a symlink itself rather than following it) or only if the name is still free.
    Returns the sha256 of what was written."""
    tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        with os.fdopen(fd, "w+b") as f:
            fill(f)
            f.flush()
            f.seek(0)
            digest = hashlib.sha256(f.read()).hexdigest()
        if replace:
            os.replace(tmp, folder / name)
        else:
            from ortrefine.bundle.write import rename_noreplace

            try:
                rename_noreplace(tmp, folder / name)
            except FileExistsError:
                raise ExportError(f"{folder / name} appeared while ortrefine was writing the report and was left as it is; "
                                  f"{_FIX}") from None
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return digest


def write_file(path: str | Path, fill: Callable[[IO[bytes]], object]) -> Path:
    """Write one file the caller named outright (no marker): via a temp file and a rename,
    refusing a path that is a symlink or not a regular file."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and (stat.S_ISLNK(mode) or not stat.S_ISREG(mode)):
        what = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
        raise ExportError(f"{path} is {what}; ortrefine does not write through it or replace it: move it or choose another path")
    _write_via_temp(path.parent, path.name, fill, replace=mode is not None)
    return path


class ReportFolder:
    """A claimed report folder; `write` / `write_text` put one file in it (see the module docstring)."""

    def __init__(self, path: Path, names: Sequence[str], ours: dict[str, str]):
        self.path = path
        self.names = tuple(names)
        self._ours = dict(ours)  # name -> sha256 of the files ortrefine wrote and nobody changed since

    def _save_marker(self) -> None:
        text = json.dumps({"written_by": WRITTEN_BY, "files": dict(sorted(self._ours.items()))}, indent=1) + "\n"
        _write_via_temp(self.path, MARKER, lambda f: f.write(text.encode("utf-8")), replace=True)

    def write(self, name: str, fill: Callable[[IO[bytes]], object]) -> Path:
        """fill(f) writes the file's bytes into f (a temp file beside it); returns its path."""
        if name not in self.names:
            raise ValueError(f"{name} was not claimed in {self.path}")
        ours = _inspect(self.path, [name]) or {}  # again: the folder may have changed while the run worked
        replace = name in ours and name in self._ours
        if os.path.lexists(self.path / name) and not replace:
            raise ExportError(f"{self.path}: {name} not written by ortrefine (or changed since it wrote it), so never overwritten: {_FIX}")
        self._ours = {k: v for k, v in self._ours.items() if ours.get(k) == v}
        self._ours[name] = _write_via_temp(self.path, name, fill, replace)
        self._save_marker()
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        data = text.encode("utf-8")
        return self.write(name, lambda f: f.write(data))

    def discard(self, name: str) -> None:
        """Remove an earlier run's `name` (this run writes none), only if ortrefine wrote it and it is unchanged."""
        if name in self._ours and _digest_regular(self.path / name) == self._ours[name]:
            os.unlink(self.path / name)
            del self._ours[name]
            self._save_marker()


def claim_report_folder(folder: str | Path, names: Sequence[str]) -> ReportFolder:
    """Create `folder` or accept it (new, empty, or marked as ortrefine's with none of `names`
    in the way) and mark it; ExportError (one line, naming what is in the way) otherwise."""
    folder = Path(folder)
    ours = _inspect(folder, names)
    if ours is None:
        try:
            folder.mkdir(parents=True)
        except FileExistsError:  # made meanwhile: judge it as it is now
            ours = _inspect(folder, names)
        else:
            ours = {}
    claim = ReportFolder(folder, names, ours or {})
    claim._save_marker()
    return claim
