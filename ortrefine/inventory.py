"""What is installed and exported: behind `ortrefine models` and `ortrefine doctor` (torch-free)."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from ortrefine.bundle import MANIFEST, find_stale, read_manifest
from ortrefine.catalog import load_catalog, models_dir
from ortrefine.errors import BundleError


def _bundle_row(path: Path, name: str, kind: str) -> dict[str, Any]:
    try:
        manifest = read_manifest(path)
    except BundleError:
        return {"name": name, "kind": kind, "path": str(path), "precision": "broken", "size_mb": 0.0, "parent": None}
    size = sum(f["bytes"] for f in manifest.get("files", {}).values())
    return {"name": name, "kind": kind, "path": str(path), "precision": manifest.get("precision", "fp32"),
            "size_mb": size / 1e6, "parent": manifest.get("parent")}


def list_models() -> list[dict[str, Any]]:
    """Catalog entries (exported or not), then any other bundle in the models folder."""
    rows, seen = [], set()
    for name, entry in load_catalog().items():
        path = entry.default_bundle()
        if (path / MANIFEST).exists():
            rows.append(_bundle_row(path, name, "catalog"))
            seen.add(path.resolve())
        else:
            rows.append({"name": name, "kind": "catalog", "path": None, "precision": None, "size_mb": None, "parent": None})
    root = models_dir()
    if root.is_dir():
        for path in sorted(root.iterdir()):
            if (path / MANIFEST).exists() and path.resolve() not in seen:
                rows.append(_bundle_row(path, path.name, "bundle"))
    return rows


def doctor_report(model: str | None = None, provider: str = "auto") -> dict[str, str]:
    import onnxruntime as ort

    from ortrefine.bundle import library_versions

    report = {"python": platform.python_version(), "platform": platform.platform()}
    report.update({f"version {k}": v for k, v in library_versions().items()})
    report["onnxruntime device"] = ort.get_device()
    report["available providers"] = ", ".join(ort.get_available_providers())
    stale = find_stale(models_dir())
    report["leftovers of killed runs"] = (", ".join(str(s.path) for s in stale) + " (removed by the next write to the same place)") if stale else "none"
    if model:
        import ortrefine

        lm = ortrefine.load(model, provider=provider)
        report["session provider"] = f"{lm.provider} (asked: {provider}; session providers: {', '.join(lm.session.get_providers())})"
        report["bundle graph"] = graph_summary(lm.bundle.manifest)
    return report


def graph_summary(manifest: dict) -> str:
    """Which export graph a bundle runs (fused graphs behave differently on CUDA: README)."""
    g = manifest.get("graph") or {}
    kind = (g.get("kind") or "optimum") + (" (slimmed)" if g.get("tool") == "onnxslim" else "")
    nodes = f", {g['nodes_after']} nodes" if "nodes_after" in g else ""
    return f"{kind}{nodes}, precision {manifest.get('precision', 'fp32')}"
