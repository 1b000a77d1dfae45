"""`ortrefine batch`: JSONL files of prompts through one loaded model, resumable by id; on Ray
Data for more than one machine (`run_ray`, the `ray` extra).

    from ortrefine.batch import BatchConfig, run_batch
    run_batch("in.jsonl", "out.jsonl", BatchConfig(task="generate", model="models/smollm2-135m"))
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"BatchConfig": "ortrefine.batch.config", "BatchSummary": "ortrefine.batch.job", "Predictor": "ortrefine.batch.job",
         "run_batch": "ortrefine.batch.job", "run_ray": "ortrefine.batch.ray_job"}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ortrefine.batch' has no attribute {name!r}")
