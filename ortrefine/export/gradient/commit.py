"""Adding the graph to the bundle: the manifest entry the runtime reads the graph's contract
from, and the order of renames that keeps the bundle usable if the commit is cut short."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ortrefine.runtime.gradient import EMBEDDINGS_FILE, GRADIENT_FILE, INPUT_NAMES, OUTPUT_NAMES


def _with_gradient_entry(manifest: dict[str, Any], new_files: list[str], opset: int | None, surgery: dict[str, Any],
                         shared: dict[str, Any], validation: dict[str, Any]) -> dict[str, Any]:
    """The bundle's manifest plus the `gradient` entry the runtime reads the graph's contract from."""
    out = dict(manifest)
    out["gradient"] = {
        "file": GRADIENT_FILE,
        "files": new_files,
        "embeddings": EMBEDDINGS_FILE,
        "opset": opset,
        "inputs": list(INPUT_NAMES),
        "outputs": list(OUTPUT_NAMES),
        "label_convention": "labels[t] = ids[t + 1]; loss_mask[t] weights that term",
        "precision": "fp32",
        "surgery": surgery,
        # weights identical (name, layout, bytes) to the main graph's: {name: offset/shape/dtype in gradient.onnx_data}
        "shared_initializers": shared,
        "validation": validation,
    }
    return out


def _commit(bundle: Path, staged: Path, new_files: list[str], manifest: dict[str, Any], old_manifest: dict[str, Any]) -> dict[str, Any]:
    """Move the staged files into the bundle, then replace ortrefine.json in one rename.

    The manifest is written in the staging folder (with the bundle's other files hashed where
    they are) and renamed last: until that rename the bundle's
    manifest does not mention the new graph, so an interrupted commit leaves a usable bundle.
    When files are replaced (--overwrite), a manifest without the old graph goes in first, so
    no manifest ever lists a file with another file's size.
    """
    from ortrefine.bundle import describe_files, write_manifest
    from ortrefine.runtime.bundle import MANIFEST

    # only what the old manifest listed: a file the user dropped into the folder is not adopted
    listed = old_manifest.get("files", {})
    others = {k: v for k, v in describe_files(bundle).items() if k in listed and k not in new_files and not (staged / k).exists()}
    written = write_manifest(staged, manifest, other_files=others)
    if any(name in old_manifest.get("files", {}) for name in new_files):
        interim = {k: v for k, v in old_manifest.items() if k != "gradient"}
        interim["files"] = {k: v for k, v in old_manifest.get("files", {}).items() if k not in new_files}
        (staged / "interim.json").write_text(json.dumps(interim, indent=2, sort_keys=True) + "\n")
        os.replace(staged / "interim.json", bundle / MANIFEST)
    for name in new_files:
        os.replace(staged / name, bundle / name)
    os.replace(staged / MANIFEST, bundle / MANIFEST)
    return written

