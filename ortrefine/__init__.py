"""ortrefine: export small causal LMs to ONNX and refine their outputs at inference time.

`import ortrefine` loads only the torch-free runtime; export lives in `ortrefine.export`. The
names below are resolved on first use, so that the command-line entry point can install its
signal handlers before anything heavy (numpy, onnxruntime) is imported.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "OrtRefineError": "ortrefine.errors",
    "GenerationConfig": "ortrefine.runtime", "GenerationResult": "ortrefine.runtime", "LM": "ortrefine.runtime",
    "load": "ortrefine.runtime", "open_bundle": "ortrefine.runtime",
    "RefineConfig": "ortrefine.runtime.refine", "RefineResult": "ortrefine.runtime.refine", "refine": "ortrefine.runtime.refine",
}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ortrefine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
