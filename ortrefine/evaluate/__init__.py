"""Evaluation of decoding and refinement by judges other than J (torch-free).

`run_eval` decodes a prompt set with several systems, has judge bundles score every output
under their own tokenizers, flags degenerate text and writes report.json / .md / .png
(`write_report`). Names resolve on first use so that importing the package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "EvalConfig": "ortrefine.evaluate.run", "run_eval": "ortrefine.evaluate.run",
    "EvalItem": "ortrefine.evaluate.data", "System": "ortrefine.evaluate.data", "DEFAULT_SYSTEMS": "ortrefine.evaluate.data",
    "read_items": "ortrefine.evaluate.data", "read_systems": "ortrefine.evaluate.data",
    "JudgeScore": "ortrefine.evaluate.judge", "judge_texts": "ortrefine.evaluate.judge",
    "text_report": "ortrefine.evaluate.metrics", "chrf": "ortrefine.evaluate.metrics",
    "bootstrap_mean": "ortrefine.evaluate.stats", "paired": "ortrefine.evaluate.stats",
    "write_report": "ortrefine.evaluate.report",
}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ortrefine.evaluate' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
