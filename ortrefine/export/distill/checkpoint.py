"""Training checkpoints: everything a resumed run needs to continue the same curve (student,
AdamW moments, RNG states, step, loss history) in one safetensors file.

One file, so that one rename replaces the whole checkpoint and an interrupt never leaves half
of one. Tensors are safetensors and the rest JSON in its header, never a pickle: loading a
pickle someone copied over would run whatever code it names.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np

from ortrefine.errors import ConfigError

from .workdir import _save_atomic

STATE_FORMAT = "ortrefine-distill-state/1"


def _plain(value: Any) -> Any:
    """JSON-ready copy of optimizer hyper-parameters (tuples become lists)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint")


def _save_state(path: Path, student: Any, opt: Any, scalars: dict[str, Any]) -> None:
    """Student weights, AdamW moments (keyed by param index) and torch's RNG state as tensors;
    the rest as JSON in the same file's header, so one rename replaces the whole checkpoint."""
    import torch
    from safetensors.torch import save_file

    # clone: tied weights share storage, which safetensors refuses to write twice
    tensors = {f"student.{k}": v.detach().clone().contiguous() for k, v in student.state_dict().items()}
    osd = opt.state_dict()
    per_param: dict[str, dict[str, Any]] = {}
    for idx, entries in osd["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{int(idx)}.{name}"] = value.detach().clone().contiguous()
            else:
                per_param.setdefault(str(int(idx)), {})[name] = _plain(value)
    tensors["rng.torch"] = torch.get_rng_state()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        **scalars,
        "optimizer": {"param_groups": _plain(osd["param_groups"]), "state": per_param},
        "rng": {"numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
                "python": [version, list(internal), gauss_next]},
    }
    metadata = {"format": STATE_FORMAT, "state": json.dumps(state)}
    _save_atomic(lambda tmp: save_file(tensors, str(tmp), metadata=metadata), path)


def _load_state(path: Path, student: Any, opt: Any) -> dict[str, Any]:
    """Restore student, optimizer and RNG states in place; return the scalar state."""
    import torch
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != STATE_FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {STATE_FORMAT!r}")
            state = json.loads(meta["state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        weights = {k[len("student."):]: v for k, v in tensors.items() if k.startswith("student.")}
        moments: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("optimizer."):
                idx, name = k[len("optimizer."):].split(".", 1)
                moments.setdefault(int(idx), {})[name] = v
        for idx, entries in state["optimizer"]["state"].items():
            moments.setdefault(int(idx), {}).update(entries)
        groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
                  for g in state["optimizer"]["param_groups"]]
        student.load_state_dict(weights, strict=True)
        opt.load_state_dict({"state": moments, "param_groups": groups})
        kind, keys, pos, has_gauss, gauss = state["rng"]["numpy"]
        version, internal, gauss_next = state["rng"]["python"]
        torch.set_rng_state(tensors["rng.torch"])
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        random.setstate((version, tuple(internal), gauss_next))
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ConfigError(f"the checkpoint {path} cannot be restored ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                          "pass --overwrite without --resume to start over") from None
    return state
