"""Writing bundles so that nothing a user had is ever lost.

A bundle is built in a hidden staging folder beside its target and only renamed into place once
complete. The rules, in the order they are applied:

- One writer per target: a lock (`flock` on a hidden `.NAME.lock` beside it) is held from the
  first check to the final rename; a second writer fails at once, naming the path. The kernel
  drops the lock when its holder dies, so a killed run never blocks the next one. A lock file is
  opened without following symlinks, and only one this run created (or an empty one a killed
  run left) is ever written or removed.
- Without `overwrite`, an existing target is never replaced, even one that appeared while the run
  was working (the final rename refuses to replace anything).
- With `overwrite`, only an empty folder or an ortrefine bundle (its manifest lists every entry in
  it) is replaced, never one of the protected paths (a command's own source), their ancestors or
  anything inside them.
- Replacement is a swap written down first: a journal `.NAME.swap` beside the target names the
  folder the old bundle moves to; then old → that folder, staged → NAME, the old one deleted, the
  journal removed. SIGINT/SIGTERM are deferred during the swap. A swap cut short by a hard kill is
  finished by the next writer from the journal (the old bundle is put back if the new one never
  went in); nothing is ever recognised by its name alone.
- Staging folders carry a marker naming their writer and target; the next writer into the same
  place removes the ones whose writer is gone (kill -9), and `find_stale` reports them for `doctor`.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

from ortrefine.bundle.format import FORMAT_VERSION, MANIFEST
from ortrefine.bundle.read import describe_files
from ortrefine.errors import ExportError

STAGING_MARK = ".ortrefine-staging"
# staging, lock and journal names add a few characters to the target's: long names are hashed
_LONG_NAME = 180
# what a failed or interrupted run removed, for the one line the CLI prints
REMOVED: list[Path] = []


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("ortrefine", "onnxruntime", "onnxruntime-gpu", "onnx", "torch", "transformers", "optimum", "optimum-onnx", "numpy", "tokenizers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def write_manifest(folder: Path, manifest: dict[str, Any], other_files: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Add versions, timestamp and per-file size/sha256, then write ortrefine.json last.
    `other_files`: descriptions of files that will sit beside `folder`'s in the bundle (a graph
    added to an existing bundle is staged apart from the files it joins)."""
    manifest = dict(manifest)
    manifest.setdefault("format", FORMAT_VERSION)
    manifest["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest["versions"] = library_versions()
    manifest["files"] = {**(other_files or {}), **describe_files(folder, skip=(STAGING_MARK,))}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


# ---------------------------------------------------------------------------------------------
# names and what may be replaced


def _stem(final: Path) -> str:
    """The part of the hidden helper names that stands for the target."""
    name = final.name
    return name if len(name.encode()) <= _LONG_NAME else "ortrefine-" + hashlib.sha256(name.encode()).hexdigest()[:16]


def lock_path(final: Path) -> Path:
    return final.parent / f".{_stem(final)}.lock"


def journal_path(final: Path) -> Path:
    return final.parent / f".{_stem(final)}.swap"


def absolute(final: str | os.PathLike[str]) -> Path:
    """The target as an absolute, normalised path (`.` and `a/..` have no name of their own)."""
    text = os.fspath(final)
    if not text:
        raise ExportError("the output path is empty; give a folder name")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ExportError(f"the output path {text.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8; choose a UTF-8 name") from None
    return Path(os.path.abspath(text))


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def foreign_entries(folder: Path) -> list[str] | None:
    """Entries of `folder` its manifest does not account for; None if it is not a bundle at all."""
    try:
        if regular_or_none(folder / MANIFEST) is None:
            return None
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None
    listed = set(manifest["files"]) | {MANIFEST}
    out = []
    for entry in folder.iterdir():
        if entry.name not in listed or entry.is_symlink() or not entry.is_file():
            out.append(entry.name)
    return sorted(out)


def regular_or_none(path: Path) -> os.stat_result | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def check_target(final: Path, overwrite: bool, protect: Sequence[Path] = ()) -> None:
    """Refuse a target that must not be written (see the module docstring); ExportError names why."""
    target = absolute(final)
    resolved = target.resolve()
    cwd = Path.cwd().resolve()
    if _is_within(cwd, resolved):
        raise ExportError(f"{final} is the current folder or one of its parents; choose another output folder")
    for p in protect:
        p = Path(p).resolve()
        if _is_within(p, resolved) or _is_within(resolved, p):
            raise ExportError(f"{final} is, holds or lies inside the source {p}; choose another output folder")
    if not os.path.lexists(target):
        return
    if not overwrite:
        raise ExportError(f"{final} already exists; pass --overwrite or choose another output folder")
    if target.is_symlink() or not target.is_dir():
        raise ExportError(f"{final} exists and is not a bundle folder; --overwrite replaces only bundles ortrefine wrote: move it or choose another output")
    if not any(target.iterdir()):
        return  # an empty folder: nothing to lose
    foreign = foreign_entries(target)
    if foreign is None:
        raise ExportError(f"{final} is not an ortrefine bundle (no valid {MANIFEST}); --overwrite replaces only bundles ortrefine wrote: choose another output folder")
    if foreign:
        shown = ", ".join(foreign[:3]) + (" …" if len(foreign) > 3 else "")
        raise ExportError(f"{final} holds files ortrefine did not write ({shown}); --overwrite will not delete them: move them or choose another output folder")


# ---------------------------------------------------------------------------------------------
# lock


class _Lock:
    """flock on the target's lock file. Only a file this run created, or an empty one (a killed
    run's), is written or removed: a file of that name the user keeps is left as it was."""

    def __init__(self, final: Path):
        self.path = lock_path(final)
        self.fd: int | None = None
        self.ours = False

    def _open(self) -> tuple[int, bool]:
        flags = os.O_RDWR | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        try:
            return os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            pass
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            return self._open()
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise ExportError(f"{self.path} is a symlink, not an ortrefine lock; remove it or choose another output folder") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ExportError(f"{self.path} is not an ortrefine lock file; remove it or choose another output folder")
        return fd, False

    def acquire(self, final: Path) -> None:
        import fcntl

        while True:
            fd, created = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                os.close(fd)
                raise ExportError(f"another ortrefine run ({holder or 'unknown pid'}) is writing {final}; wait for it or choose another output folder") from None
            try:  # the previous holder may have unlinked the file between our open and flock
                same = os.fstat(fd).st_ino == os.lstat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            size = os.fstat(fd).st_size
            self.ours = created or size == 0 or os.pread(fd, 4, 0) == b"pid "
            if not self.ours:
                os.close(fd)
                raise ExportError(f"{self.path} exists and was not written by ortrefine; move it away or choose another output folder")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
            self.fd = fd
            return

    def release(self) -> None:
        if self.fd is not None:
            try:
                if os.fstat(self.fd).st_ino == os.lstat(self.path).st_ino:
                    os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self.fd)
            self.fd = None


def _lock_free(lock_file: Path) -> bool:
    import fcntl

    try:
        fd = os.open(lock_file, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# leftovers of killed runs


def _marker(folder: Path) -> dict[str, Any] | None:
    """The staging marker of `folder` if it is a staging folder ortrefine made, else None."""
    if folder.is_symlink() or not folder.is_dir() or regular_or_none(folder / STAGING_MARK) is None:
        return None
    try:
        data = json.loads((folder / STAGING_MARK).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(data, dict) and isinstance(data.get("target"), str) and _plain(data["target"])
    return data if ok else None


def _plain(name: str) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..")


def _journal(path: Path) -> dict[str, Any] | None:
    if regular_or_none(path) is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = (isinstance(data, dict) and all(isinstance(data.get(k), str) and _plain(data[k]) for k in ("old", "staging", "target"))
          and data["old"].startswith(".") and data["staging"].startswith("."))
    return data if ok else None


@dataclass
class Stale:
    """A leftover of a killed run: a staging folder (`staging`) or an unfinished swap (`swap`: its journal)."""

    path: Path
    kind: str
    target: Path


def find_stale(root: Path, name: str | None = None, lock_held: bool = False) -> list[Stale]:
    """Leftovers in `root` (for one target `name`, or all) whose writer no longer runs.
    `lock_held`: the caller holds the target's lock, so no live writer can own any of them."""
    out: list[Stale] = []
    try:
        entries = sorted(Path(root).iterdir())
    except OSError:
        return out
    for entry in entries:
        if not entry.name.startswith("."):
            continue
        if ".tmp-" in entry.name and (m := _marker(entry)) is not None:
            kind, target = "staging", entry.parent / m["target"]
        elif entry.name.endswith(".swap") and (j := _journal(entry)) is not None:
            kind, target = "swap", entry.parent / j["target"]
        else:
            continue
        if name is not None and target.name != name:
            continue
        if not lock_held and not _lock_free(lock_path(target)):
            continue
        out.append(Stale(entry, kind, target))
    return out


def clean_stale(final: Path) -> list[Stale]:
    """Finish swaps a hard kill cut short (journal first), then remove dead writers' staging folders."""
    found = find_stale(final.parent, final.name, lock_held=True)
    for s in sorted(found, key=lambda s: s.kind != "swap"):
        if s.kind == "swap":
            j = _journal(s.path) or {}
            old, staged = final.parent / j.get("old", "-"), final.parent / j.get("staging", "-")
            if old.is_dir() and not old.is_symlink():
                if not os.path.lexists(final):
                    os.rename(old, final)  # the new bundle never went in: the old one is put back
                else:
                    shutil.rmtree(old, ignore_errors=True)
            if staged.is_dir() and not staged.is_symlink() and staged != final:
                shutil.rmtree(staged, ignore_errors=True)  # named by our own journal: ours, marker or not
            os.unlink(s.path)
        elif s.path.exists():
            shutil.rmtree(s.path, ignore_errors=True)
    return found


# ---------------------------------------------------------------------------------------------
# rename without replacing, interrupts deferred


_RENAME_NOREPLACE = 1
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM, errno.EIO, errno.ENAMETOOLONG)


def rename_noreplace(src: Path, dst: Path) -> None:
    """rename(2) that fails with FileExistsError instead of replacing `dst` (renameat2 where the
    kernel has it; elsewhere a check just before the rename, made safe among ortrefine writers by the lock)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        AT_FDCWD = -100
        if renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), str(dst))
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err), str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """SIGINT/SIGTERM arriving inside the block take effect right after it.

    Masking the signals would not do: a process-directed signal goes to any thread that does not
    mask it (onnxruntime's and torch's), and Python then runs its handler in the main thread at
    the next bytecode. So the handlers themselves are swapped for a recorder.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.getsignal(s) for s in sigs}
    for s in sigs:
        signal.signal(s, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if pending:
            handler = old[pending[0]]
            if callable(handler):
                handler(pending[0], None)
            elif handler == signal.SIG_DFL:
                if pending[0] == signal.SIGINT:
                    raise KeyboardInterrupt
                os.kill(os.getpid(), pending[0])


# ---------------------------------------------------------------------------------------------
# the claim and the staged folder


@dataclass
class OutputClaim:
    """The right to write one target, held from the first check to the final rename."""

    final: Path
    overwrite: bool
    protect: tuple[Path, ...] = ()
    removed_stale: list[Stale] = field(default_factory=list)

    def new_staging(self) -> Path:
        """An empty, marked staging folder beside the target."""
        try:
            tmp = self.final.parent / f".{_stem(self.final)}.tmp-{secrets.token_hex(4)}"
            os.mkdir(tmp, 0o755)
            (tmp / STAGING_MARK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "target": self.final.name}))
        except OSError as e:
            raise ExportError(f"cannot write into {self.final.parent}: {e.strerror}; choose another output folder") from None
        return tmp

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """Yield an empty folder; on success it becomes the target, on any exception it is removed."""
        tmp = self.new_staging()
        try:
            try:
                yield tmp
                if not self.overwrite and os.path.lexists(self.final):
                    raise ExportError(f"{self.final} appeared while this run was working; it was left as it is and nothing was written")
                check_target(self.final, self.overwrite, self.protect)  # the target may have changed while we worked
                self._swap_in(tmp)
            except OSError as e:
                if e.errno in _DISK_ERRORS:
                    raise ExportError(f"writing {self.final} failed: {e.strerror}; nothing was written") from None
                raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
                REMOVED.append(tmp)

    def _swap_in(self, tmp: Path) -> None:
        with interrupts_deferred():
            if not os.path.lexists(self.final):
                (tmp / STAGING_MARK).unlink()
                try:
                    rename_noreplace(tmp, self.final)
                except FileExistsError:
                    raise ExportError(f"{self.final} appeared while this run was working; it was left as it is and nothing was written") from None
                return
            old = self.final.parent / f".{_stem(self.final)}.old-{secrets.token_hex(4)}"
            journal = journal_path(self.final)
            _write_new(journal, json.dumps({"target": self.final.name, "old": old.name, "staging": tmp.name}))
            os.rename(self.final, old)
            (tmp / STAGING_MARK).unlink()
            try:
                rename_noreplace(tmp, self.final)
            except BaseException:
                os.rename(old, self.final)
                os.unlink(journal)
                raise
            shutil.rmtree(old, ignore_errors=True)
            os.unlink(journal)


def _write_new(path: Path, text: str) -> None:
    """Create `path` (never through a symlink, never over an existing file) with `text`, synced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def claim_output(final: Path, overwrite: bool = False, protect: Sequence[Path] = ()) -> Iterator[OutputClaim]:
    """Lock the target, refuse it if it must not be written, finish or clear dead writers' leftovers."""
    final = absolute(final)
    check_target(final, overwrite, protect)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create {final.parent}: {e.strerror}; choose another output folder") from None
    lock = _Lock(final)
    try:
        lock.acquire(final)
    except OSError as e:
        raise ExportError(f"cannot write into {final.parent}: {e.strerror}; choose another output folder") from None
    try:
        claim = OutputClaim(final, overwrite, tuple(Path(p) for p in protect))
        claim.removed_stale = clean_stale(final)
        check_target(final, overwrite, protect)
        yield claim
    finally:
        lock.release()


@contextmanager
def lock_target(bundle: Path) -> Iterator[OutputClaim]:
    """The write lock of an existing bundle, for a command that adds files to it in place."""
    bundle = absolute(bundle)
    lock = _Lock(bundle)
    try:
        lock.acquire(bundle)
    except OSError as e:
        raise ExportError(f"cannot lock {bundle}: {e.strerror}; check the folder's permissions") from None
    try:
        claim = OutputClaim(bundle, True)
        claim.removed_stale = clean_stale(bundle)
        yield claim
    finally:
        lock.release()


@contextmanager
def staging_dir(final: Path, overwrite: bool = False, protect: Sequence[Path] = ()) -> Iterator[Path]:
    """claim_output + staging in one: yield an empty folder that becomes `final` on success."""
    with claim_output(final, overwrite, protect) as claim, claim.staging() as tmp:
        yield tmp
