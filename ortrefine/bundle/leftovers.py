"""Leftovers of killed runs: marked staging folders and unfinished swaps (their journals).

Nothing is recognised by its name alone: a staging folder must carry ortrefine's marker, and an
old bundle moved aside is touched only when a journal of ortrefine's names it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ortrefine.bundle.lock import _lock_free
from ortrefine.bundle.names import STAGING_MARK, _plain, lock_path, regular_or_none


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
