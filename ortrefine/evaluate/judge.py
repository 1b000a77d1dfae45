"""The evaluation's side of judging: which bundle a judge is (to tell whether it is inside J).

The scoring itself (`judge_texts`, one path for eval, compare and the `judge` objective term)
lives in `ortrefine.runtime.judging`, so that the runtime's term need not import this layer;
its names are re-exported here.
"""

from __future__ import annotations

from pathlib import Path

from ortrefine.runtime.judging import CHAT_SEPARATOR, JudgeScore, judge_context, judge_texts, split_ids

__all__ = ["CHAT_SEPARATOR", "JudgeScore", "bundle_identity", "judge_context", "judge_texts", "split_ids"]


def bundle_identity(path: str | Path) -> tuple[str, ...]:
    """What makes two bundle folders the same model: the sha256 of the graph and its weights as
    the manifest records them (a copied bundle is the same judge), else the resolved path."""
    from ortrefine.bundle.read import read_manifest
    from ortrefine.catalog import resolve_bundle_path

    folder = resolve_bundle_path(path).resolve()
    try:
        files = read_manifest(folder).get("files", {})
    except Exception:  # noqa: BLE001 - an unreadable manifest fails later, when the bundle is opened
        files = {}
    digests = tuple(sorted(f"{name}:{info.get('sha256')}" for name, info in files.items()
                           if name.startswith("model.onnx") and isinstance(info, dict) and info.get("sha256")))
    return digests or (str(folder),)
