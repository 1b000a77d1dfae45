"""Writing bundles so that nothing a user had is ever lost.

A bundle is built in a hidden staging folder beside its target and only renamed into place once
complete. The rules, in the order they are applied:

- One writer per target: a lock (`flock` on `.NAME.lock` beside it) is held from the first check
  to the final rename; a second writer fails at once, naming the path. The kernel drops the lock
  when its holder dies, so a killed run never blocks the next one.
- Without `overwrite`, an existing target is never replaced, even one that appeared while the run
  was working (the final rename refuses to replace anything).
- With `overwrite`, only a folder that is an ortrefine bundle (its manifest lists every entry in
  it) is replaced, never one of the protected paths (a command's own source), their ancestors or
  anything inside them.
- Replacement is a swap: old → `.NAME.old-*`, staged → NAME, then the old one is deleted; signals
  are held off during the swap, and a swap cut short by a hard kill is finished by the next writer.
- Staging folders carry a marker naming their writer; the next writer into the same place
  removes the ones whose writer is gone (kill -9), and `find_stale` reports them for `doctor`.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import secrets
import shutil
import signal
import socket
import tempfile
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
# what may be replaced


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def foreign_entries(folder: Path) -> list[str] | None:
    """Entries of `folder` its manifest does not account for; None if it is not a bundle at all."""
    try:
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


def check_target(final: Path, overwrite: bool, protect: Sequence[Path] = ()) -> None:
    """Refuse a target that must not be written (see the module docstring); ExportError names why."""
    target = final.absolute()
    resolved = final.resolve()
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
    foreign = foreign_entries(target)
    if foreign is None:
        raise ExportError(f"{final} is not an ortrefine bundle (no valid {MANIFEST}); --overwrite replaces only bundles ortrefine wrote: choose another output folder")
    if foreign:
        shown = ", ".join(foreign[:3]) + (" …" if len(foreign) > 3 else "")
        raise ExportError(f"{final} holds files ortrefine did not write ({shown}); --overwrite will not delete them: move them or choose another output folder")


# ---------------------------------------------------------------------------------------------
# lock, stale staging, rename without replacing


class _Lock:
    """flock on `.NAME.lock` beside the target; the file is removed on release."""

    def __init__(self, final: Path):
        self.path = final.parent / f".{final.name}.lock"
        self.fd: int | None = None

    def acquire(self, final: Path) -> None:
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                os.close(fd)
                raise ExportError(f"another ortrefine run ({holder or 'unknown pid'}) is writing {final}; wait for it or choose another output folder") from None
            try:  # the previous holder may have unlinked the file between our open and flock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
                self.fd = fd
                return
            os.close(fd)

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self.fd)
            self.fd = None


def _lock_free(lock_file: Path) -> bool:
    import fcntl

    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _is_staging(folder: Path) -> bool:
    return folder.is_dir() and not folder.is_symlink() and (folder / STAGING_MARK).is_file()


@dataclass
class Stale:
    """A leftover of a killed run: a staging folder (`kind` staging) or a bundle moved aside mid-swap (`old`)."""

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
        n = entry.name
        for kind, tag in (("staging", ".tmp-"), ("old", ".old-")):
            if not n.startswith(".") or tag not in n:
                continue
            target_name = n[1:n.rindex(tag)]
            if name is not None and target_name != name:
                continue
            if not lock_held and not _lock_free(entry.parent / f".{target_name}.lock"):
                continue
            if kind == "staging" and _is_staging(entry):
                out.append(Stale(entry, kind, entry.parent / target_name))
            elif kind == "old" and entry.is_dir() and not entry.is_symlink() and foreign_entries(entry) == []:
                out.append(Stale(entry, kind, entry.parent / target_name))
    return out


def clean_stale(final: Path) -> list[Stale]:
    """Remove staging folders of dead writers into `final`; finish a swap a hard kill cut short."""
    found = find_stale(final.parent, final.name, lock_held=True)
    for s in found:
        if s.kind == "old" and not os.path.lexists(final):
            os.rename(s.path, final)  # the swap was cut before the new bundle went in: restore the old one
        else:
            shutil.rmtree(s.path, ignore_errors=True)
    return found


_RENAME_NOREPLACE = 1
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM, errno.EIO)


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
def _signals_held() -> Iterator[None]:
    """No SIGINT/SIGTERM between the renames of a swap (they are delivered right after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# ---------------------------------------------------------------------------------------------
# the claim and the staged folder


@dataclass
class OutputClaim:
    """The right to write one target, held from the first check to the final rename."""

    final: Path
    overwrite: bool
    protect: tuple[Path, ...] = ()
    removed_stale: list[Stale] = field(default_factory=list)

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """Yield an empty folder; on success it becomes the target, on any exception it is removed."""
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.tmp-", dir=self.final.parent))
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; a bundle is an ordinary folder
            (tmp / STAGING_MARK).write_text(f"pid {os.getpid()} on {socket.gethostname()}\n")
        except OSError as e:
            raise ExportError(f"cannot write into {self.final.parent}: {e.strerror}; choose another output folder") from None
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

    def _swap_in(self, tmp: Path) -> None:
        with _signals_held():
            (tmp / STAGING_MARK).unlink()
            if not os.path.lexists(self.final):
                try:
                    rename_noreplace(tmp, self.final)
                except FileExistsError:
                    raise ExportError(f"{self.final} appeared while this run was working; it was left as it is and nothing was written") from None
                return
            old = self.final.parent / f".{self.final.name}.old-{secrets.token_hex(4)}"
            os.rename(self.final, old)
            try:
                rename_noreplace(tmp, self.final)
            except OSError:
                os.rename(old, self.final)
                raise
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def claim_output(final: Path, overwrite: bool = False, protect: Sequence[Path] = ()) -> Iterator[OutputClaim]:
    """Lock the target, refuse it if it must not be written, clear dead writers' leftovers."""
    final = Path(final)
    check_target(final, overwrite, protect)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create {final.parent}: {e.strerror}; choose another output folder") from None
    lock = _Lock(final)
    try:
        lock.acquire(final)
    except PermissionError as e:
        raise ExportError(f"cannot write into {final.parent}: {e.strerror}; choose another output folder") from None
    try:
        claim = OutputClaim(final, overwrite, tuple(Path(p) for p in protect))
        claim.removed_stale = clean_stale(final)
        check_target(final, overwrite, protect)
        yield claim
    finally:
        lock.release()


@contextmanager
def staging_dir(final: Path, overwrite: bool = False, protect: Sequence[Path] = ()) -> Iterator[Path]:
    """claim_output + staging in one: yield an empty folder that becomes `final` on success."""
    with claim_output(final, overwrite, protect) as claim, claim.staging() as tmp:
        yield tmp
