"""The cache of teacher-sampled sequences in the work folder: sampling is the slow part of a
self-generated run, and --resume must train on the very sequences the first attempt drew.

Stored as safetensors (flat tokens plus lengths) with the settings key as JSON metadata, never
as a pickle: the folder is something users copy between machines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from .workdir import _save_atomic

DATA_FORMAT = "ortrefine-distill-data/1"


def _tensors(seqs: Sequence[Sequence[int]]) -> tuple[Any, Any]:
    import torch

    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    tokens = torch.tensor([t for s in seqs for t in s], dtype=torch.int64)
    return tokens, lengths


def _sequences(tokens: Any, lengths: Any) -> list[list[int]]:
    """The inverse of _tensors; a length mismatch means a damaged file, which is then resampled."""
    flat, out, at = tokens.tolist(), [], 0
    for n in lengths.tolist():
        out.append(flat[at : at + n])
        at += n
    if at != len(flat):
        raise ValueError("token count does not match the lengths")
    return out


def _save_data(path: Path, key: dict[str, Any], train: list[list[int]], heldout: list[list[int]]) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for name, seqs in (("train", train), ("heldout", heldout)):
        tensors[f"{name}.tokens"], tensors[f"{name}.lengths"] = _tensors(seqs)
    metadata = {"format": DATA_FORMAT, "key": json.dumps(key, sort_keys=True)}
    _save_atomic(lambda tmp: save_file(tensors, str(tmp), metadata=metadata), path)


def _load_data(path: Path, key: dict[str, Any]) -> tuple[list[list[int]], list[list[int]]] | None:
    """(train, heldout) cached for these settings; None (sample afresh) when absent, unreadable or stale."""
    from safetensors import SafetensorError, safe_open

    if path.is_symlink() or not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != DATA_FORMAT or json.loads(meta.get("key", "null")) != key:
                return None
            return (_sequences(f.get_tensor("train.tokens"), f.get_tensor("train.lengths")),
                    _sequences(f.get_tensor("heldout.tokens"), f.get_tensor("heldout.lengths")))
    except (SafetensorError, OSError, ValueError, KeyError):  # json.JSONDecodeError is a ValueError
        return None
