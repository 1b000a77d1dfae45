"""The bundle format: file names, the manifest's shape, and which names a manifest may use.

A bundle is read by code that may run on a user's box next to files the user cares about, and a
bundle can come from anyone. So a manifest is checked before any file it names is opened: every
name must be one plain file name inside the bundle folder (no separators, no `..`, not hidden),
and the entry it names must be a regular file (not a symlink, device or folder).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

from ortrefine.errors import BundleError

MANIFEST = "ortrefine.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
FORMAT_VERSION = 1
REQUIRED_FILES = (MODEL_FILE, TOKENIZER_FILE)

_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_name(folder: Path, name: Any) -> str:
    """A manifest file name, refused unless it is one plain name inside `folder`."""
    if not isinstance(name, str) or not name:
        raise BundleError(f"{folder}: manifest lists a file name that is not a string; re-export the bundle")
    if name in (".", "..") or "/" in name or "\\" in name or "\0" in name or name.startswith(".") or os.path.isabs(name):
        raise BundleError(f"{folder}: manifest names {name!r}, which is not a plain file inside the bundle; refusing to open it")
    return name


def regular_file(folder: Path, name: str) -> os.stat_result | None:
    """lstat of folder/name if it is a regular file; None if absent; BundleError for anything else."""
    try:
        st = os.lstat(folder / name)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise BundleError(f"{folder}: {name} is {kind}; a bundle holds only regular files (re-export it)")
    return st


def _want(cond: bool, folder: Path, what: str) -> None:
    if not cond:
        raise BundleError(f"{folder}: manifest {what}; re-export the bundle")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_manifest(folder: Path, manifest: Any) -> dict[str, Any]:
    """Check the keys the runtime relies on have the right shape; return the manifest."""
    _want(isinstance(manifest, dict), folder, "is not a JSON object")
    files = manifest.get("files", {})
    _want(isinstance(files, dict), folder, "'files' is not an object")
    for name, info in files.items():
        check_name(folder, name)
        _want(isinstance(info, dict) and _is_int(info.get("bytes")) and info["bytes"] >= 0, folder,
              f"entry for {name!r} has no byte count")
        _want(isinstance(info.get("sha256"), str) and bool(_SHA256.fullmatch(info["sha256"])), folder,
              f"entry for {name!r} has no valid sha256")
    special = manifest.get("special_tokens", {})
    _want(isinstance(special, dict), folder, "'special_tokens' is not an object")
    eos = special.get("eos_ids", [])
    _want(isinstance(eos, list) and all(_is_int(i) and i >= 0 for i in eos), folder, "'special_tokens.eos_ids' is not a list of token ids")
    for key in ("bos_id", "pad_id"):
        v = special.get(key)
        _want(v is None or (_is_int(v) and v >= 0), folder, f"'special_tokens.{key}' is not a token id")
    ctx = manifest.get("context_length")
    _want(ctx is None or (_is_int(ctx) and ctx > 0), folder, "'context_length' is not a positive integer")
    for key in ("precision", "task", "name"):
        v = manifest.get(key)
        _want(v is None or isinstance(v, str), folder, f"'{key}' is not a string")
    for key in ("source", "parent"):
        v = manifest.get(key)
        _want(v is None or isinstance(v, (str, dict)), folder, f"'{key}' is neither a string nor an object")
    for key in ("graph", "gradient", "versions", "validation"):
        v = manifest.get(key)
        _want(v is None or isinstance(v, dict), folder, f"'{key}' is not an object")
    return manifest
