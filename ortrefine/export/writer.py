"""Writing bundles atomically: stage in a hidden sibling folder, rename into place at the end.

An interrupted export or quantize leaves no folder at the target path (at worst a hidden
`.NAME.tmp-*` sibling after a hard kill, which the next run does not mistake for a bundle).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from ortrefine.errors import ExportError
from ortrefine.runtime.bundle import MANIFEST, describe_files


@contextmanager
def staging_dir(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty folder; on success it becomes `final`, on any exception it is removed."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise ExportError(f"{final} already exists; pass --overwrite or choose another output folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a bundle is an ordinary folder
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("ortrefine", "onnxruntime", "onnxruntime-gpu", "onnx", "torch", "transformers", "optimum", "optimum-onnx", "numpy", "tokenizers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def write_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add versions, timestamp and per-file size/sha256, then write ortrefine.json last."""
    manifest = dict(manifest)
    manifest.setdefault("format", 1)
    manifest["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest["versions"] = library_versions()
    manifest["files"] = describe_files(folder)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
