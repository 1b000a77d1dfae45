"""Where the student bundle goes, and when an existing folder there may be replaced: a finished
run swaps its output in as a whole, so only a folder that is provably a bundle may stand there."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ortrefine.errors import ConfigError, ExportError

from .config import DistillConfig


def output_path(cfg: DistillConfig, bundle_path: Path) -> Path:
    """The student's folder as an absolute, normalised path (`.` and `a/..` have no name of their
    own, and `<out>.ckpt` is named after it); ConfigError for the current folder or one holding it
    (a finished run replaces its output as a whole)."""
    raw = cfg.out if cfg.out is not None else Path(bundle_path).parent / f"{Path(bundle_path).name}-student"
    out = Path(os.path.abspath(os.fspath(raw)))
    try:
        cwd = os.getcwd()
    except OSError:  # the current folder was deleted: nothing to hold
        return out
    for target, here in ((str(out), cwd), (os.path.realpath(out), os.path.realpath(cwd))):
        if here == target or here.startswith(target.rstrip(os.sep) + os.sep):
            raise ConfigError(f"the student's output {raw} is the current folder or holds it, and the finished bundle replaces "
                              "its output folder as a whole; give a new folder, e.g. --out student, or run from elsewhere")
    return out


def _check_replaceable(out: Path) -> None:
    """--overwrite deletes `out` before the new bundle takes its place: only a bundle qualifies
    (every entry a plain file listed in its manifest), or an empty folder."""
    from ortrefine.runtime.bundle import MANIFEST

    fix = "--overwrite only replaces a bundle ortrefine wrote: move it away or choose another --out"
    if out.is_symlink() or not out.is_dir():
        raise ExportError(f"{out} is not a bundle folder; {fix}")
    entries = sorted(out.iterdir())
    if not entries:
        return
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        manifest = None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise ExportError(f"{out} has no readable {MANIFEST}: not a bundle; {fix}")
    foreign = [e.name for e in entries if e.name != MANIFEST and (e.name not in files or e.is_symlink() or not e.is_file())]
    if foreign:
        raise ExportError(f"{out / foreign[0]} is not a file of that bundle's {MANIFEST}; {fix}")


def _check_out(cfg: DistillConfig, out: Path) -> None:
    """Called at every point where the folder may have changed since the last look: planning,
    under the lock, and just before the swap."""
    if out.exists() or out.is_symlink():
        if not cfg.overwrite:
            raise ExportError(f"{out} already exists; pass --overwrite or choose another output folder")
        _check_replaceable(out)
