"""ortrefine: export small causal LMs to ONNX and refine their outputs at inference time.

`import ortrefine` loads only the torch-free runtime; export lives in `ortrefine.export`.
"""

from ortrefine.errors import OrtRefineError
from ortrefine.runtime import GenerationConfig, GenerationResult, LM, load, open_bundle
from ortrefine.runtime.refine import RefineConfig, RefineResult, refine

__version__ = "0.1.0"
__all__ = [
    "OrtRefineError", "GenerationConfig", "GenerationResult", "LM", "load", "open_bundle",
    "RefineConfig", "RefineResult", "refine", "__version__",
]
