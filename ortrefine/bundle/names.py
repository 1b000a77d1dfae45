"""Names of the hidden helpers beside a target (staging folders, lock, swap journal) and path checks.

Helper names add a few characters to the target's, so long names are hashed to stay within the
file system's limit.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from ortrefine.errors import ExportError

STAGING_MARK = ".ortrefine-staging"
# staging, lock and journal names add a few characters to the target's: long names are hashed
_LONG_NAME = 180


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



def regular_or_none(path: Path) -> os.stat_result | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None



def _plain(name: str) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..")
