"""Terms that score the output with another bundle (contrastive, judge) open it once per process:
a bundle takes a second or more to open, and the objective is rebuilt for every refine()."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ortrefine.errors import ConfigError

_OPEN: dict[str, Any] = {}
_LOCK = threading.Lock()


def load_bundle(path: str) -> Any:
    """The LM at `path` (a bundle folder or a catalog name), loaded on first use and shared after."""
    from ortrefine.runtime.session import load

    folder = Path(path).expanduser()
    key = str(folder.resolve()) if folder.is_dir() else path
    with _LOCK:
        if key not in _OPEN:
            _OPEN[key] = load(str(folder) if folder.is_dir() else path, provider="cpu")
        return _OPEN[key]


def check_folder(term: str, path: str) -> None:
    """A path-like name (it has a slash) must be a folder; a bare name may be a catalog entry."""
    if not Path(path).expanduser().is_dir() and "/" in path:
        raise ConfigError(f"objective {term!r}: no bundle folder at {path}")


def rows_per_pass(lm: Any, default: int) -> int:
    """1 for a batch-dependent bundle (dynamic int8: a row's scores move with its batch-mates, so a
    cached value would depend on which candidates it was first scored with), else `default`."""
    return default if lm.bundle.manifest.get("batch_invariant", True) else 1
