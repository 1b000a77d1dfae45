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

import errno
import json
import os
import secrets
import shutil
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

from ortrefine.bundle.format import FORMAT_VERSION, MANIFEST
from ortrefine.bundle.fsops import _write_new, interrupts_deferred, rename_noreplace
from ortrefine.bundle.leftovers import Stale, clean_stale, find_stale
from ortrefine.bundle.lock import _Lock
from ortrefine.bundle.names import STAGING_MARK, _stem, absolute, journal_path, lock_path, regular_or_none
from ortrefine.bundle.read import describe_files
from ortrefine.errors import ExportError

__all__ = ["STAGING_MARK", "REMOVED", "OutputClaim", "Stale", "absolute", "check_target", "claim_output", "clean_stale",
           "find_stale", "interrupts_deferred", "library_versions", "lock_path", "lock_target", "rename_noreplace",
           "staging_dir", "write_manifest"]

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


_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM, errno.EIO, errno.ENAMETOOLONG)


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



@contextmanager
def _locked(final: Path, overwrite: bool, protect: Sequence[Path], cannot: str) -> Iterator[OutputClaim]:
    """Hold the target's lock, with dead writers' leftovers cleared; `cannot`: the error's opening words."""
    lock = _Lock(final)
    try:
        lock.acquire(final)
    except OSError as e:
        raise ExportError(f"{cannot}: {e.strerror}; check the folder's permissions or choose another output folder") from None
    try:
        claim = OutputClaim(final, overwrite, tuple(Path(p) for p in protect))
        claim.removed_stale = clean_stale(final)
        yield claim
    finally:
        lock.release()


@contextmanager
def claim_output(final: Path, overwrite: bool = False, protect: Sequence[Path] = ()) -> Iterator[OutputClaim]:
    """Lock the target, refuse it if it must not be written, finish or clear dead writers' leftovers."""
    final = absolute(final)
    check_target(final, overwrite, protect)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create {final.parent}: {e.strerror}; choose another output folder") from None
    with _locked(final, overwrite, protect, f"cannot write into {final.parent}") as claim:
        check_target(final, overwrite, protect)  # again under the lock: leftovers may have been put back
        yield claim


@contextmanager
def lock_target(bundle: Path) -> Iterator[OutputClaim]:
    """The write lock of an existing bundle, for a command that adds files to it in place."""
    bundle = absolute(bundle)
    with _locked(bundle, True, (), f"cannot lock {bundle}") as claim:
        yield claim


@contextmanager
def staging_dir(final: Path, overwrite: bool = False, protect: Sequence[Path] = ()) -> Iterator[Path]:
    """claim_output + staging in one: yield an empty folder that becomes `final` on success."""
    with claim_output(final, overwrite, protect) as claim, claim.staging() as tmp:
        yield tmp
