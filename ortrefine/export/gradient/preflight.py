"""Refusals that must come before the slow checkpoint load and trace: a bundle that records no
source, files that are not ours to replace, missing extras, a checkpoint that is no longer the
bundle's model."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from ortrefine.errors import ExportError
from ortrefine.runtime.gradient import EMBEDDINGS_FILE, GRADIENT_DATA, GRADIENT_FILE


def bundle_source(path: Path, manifest: dict[str, Any]) -> Any:
    """The checkpoint the bundle was exported from, as recorded in its manifest."""
    from ortrefine.export.sources import Source

    fix = f"re-export the bundle from its checkpoint (`ortrefine export SOURCE {path}`), then run `ortrefine export-gradient {path}`"
    raw = manifest.get("source")
    if not isinstance(raw, dict) or not raw.get("kind") or not raw.get("location"):
        raise ExportError(f"{path} records no source checkpoint in its manifest, so there is nothing to differentiate; {fix}")
    try:
        return Source(**raw)
    except TypeError as e:
        raise ExportError(f"{path}: the manifest's source entry is not understood ({e}); {fix}") from None


def _refuse_to_clobber(path: Path, manifest: dict[str, Any], overwrite: bool) -> None:
    """Checked before the checkpoint loads, so a refusal costs nothing; only files the manifest
    lists are ours to replace."""
    if "gradient" in manifest and not overwrite:
        raise ExportError(f"{path} already has a gradient graph; pass --overwrite to replace it")
    foreign = [n for n in (GRADIENT_DATA, GRADIENT_FILE, EMBEDDINGS_FILE)
               if os.path.lexists(path / n) and n not in manifest.get("files", {})]
    if foreign:  # a file the manifest does not list is not ours to replace
        raise ExportError(f"{path} holds {', '.join(foreign)}, which ortrefine did not write; move it away and rerun")


def _require_gradient_extras() -> None:
    """Checked before the checkpoint loads: torch's exporter needs onnxscript only at export time,
    after the slow load and trace."""
    from ortrefine.export.sources import require_export_extra

    require_export_extra()
    if importlib.util.find_spec("onnxscript") is None:
        from ortrefine.errors import MissingExtraError

        raise MissingExtraError("the gradient export needs onnxscript (torch's ONNX exporter uses it): pip install onnxscript")


def _check_same_model(path: Path, bundle_config: dict[str, Any], model: Any) -> None:
    """The loaded checkpoint must have the bundle's shape (a moved or replaced source fails here)."""
    cfg = model.config
    pairs = {
        "vocab_size": (bundle_config.get("vocab_size"), getattr(cfg, "vocab_size", None)),
        "hidden_size": (bundle_config.get("hidden_size", bundle_config.get("n_embd")), getattr(cfg, "hidden_size", getattr(cfg, "n_embd", None))),
        "model_type": (bundle_config.get("model_type"), getattr(cfg, "model_type", None)),
    }
    bad = {k: v for k, v in pairs.items() if v[0] is not None and v[0] != v[1]}
    if bad:
        raise ExportError(
            f"the source checkpoint no longer matches {path} (bundle vs checkpoint: {bad}); re-export the bundle first"
        )

