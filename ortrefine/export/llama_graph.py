"""The names the fused graph had when it was llama-only, kept for their importers.

The builder is decoder_graph.py, its installation over Optimum's graph fused_install.py, and the families it writes are in families.py; these names build
any supported family's graph. ``replace_with_fused`` looks ``build_llama_graph`` up in this module
at call time, so replacing it here (tests break the graph on purpose) reaches the export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ortrefine.export import decoder_graph, fused_install
from ortrefine.export.decoder_graph import (  # noqa: F401  (re-exported)
    IR_VERSION,
    KEEP_ALL,
    LOGITS_TO_KEEP,
    MASK_BIAS,
    MS,
    DecoderShape,
    rotary_caches,
)
from ortrefine.export.fused_install import FusedGraphInfo
from ortrefine.export.families import SUPPORTED  # noqa: F401  (re-exported)

LlamaShape = DecoderShape


def build_llama_graph(model: Any, opset: int = 17) -> Any:
    """The fused ModelProto of a supported causal LM (decoder_graph.build_decoder_graph)."""
    return decoder_graph.build_decoder_graph(model, opset)


def write_llama_graph(model: Any, path: Path) -> FusedGraphInfo:
    """Build (through this module's ``build_llama_graph``) and save the fused graph."""
    return fused_install.write_decoder_graph(model, path, lambda m: build_llama_graph(m))


def replace_with_fused(model: Any, model_path: Path, atol: float, greedy_tokens: int = 8) -> dict[str, Any]:
    """fused_install.replace_with_fused, building through this module's ``build_llama_graph``."""
    return fused_install.replace_with_fused(model, model_path, atol, greedy_tokens, build=lambda m: build_llama_graph(m))
