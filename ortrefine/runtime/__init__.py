"""Edge side: onnxruntime + numpy + tokenizers only. Nothing here may import torch."""

from ortrefine.runtime.bundle import Bundle, open_bundle
from ortrefine.runtime.decoding import GenerationConfig, GenerationResult
from ortrefine.runtime.session import LM, KVCache, ScoreResult, load

__all__ = ["Bundle", "open_bundle", "GenerationConfig", "GenerationResult", "LM", "KVCache", "ScoreResult", "load"]
