"""Loading a resolved source into torch, kept apart from resolving it so that checking a source
string needs none of the export extra."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ortrefine.errors import ExportError, MissingExtraError
from ortrefine.export.sources.tokenizer_repair import repair_gguf_tokenizer

if TYPE_CHECKING:
    from ortrefine.export.sources.resolve import Source


def require_export_extra() -> None:
    """Called before any slow step, so that a runtime-only install is told the pip command that
    fixes it instead of failing on an ImportError halfway through."""
    missing = [m for m in ("torch", "transformers", "optimum.exporters.onnx") if importlib.util.find_spec(m.split(".")[0]) is None]
    if missing:
        raise MissingExtraError(
            f"exporting needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed; install the export extra: pip install -e '.[export]'"
        )


def load_source(src: Source) -> tuple[Any, Any]:
    """(torch model in eval mode, HF tokenizer), loaded in fp32 with eager-compatible attention."""
    require_export_extra()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if src.kind == "tiny":
        from ortrefine.export.tiny import build_tiny

        return build_tiny(src.location)
    kwargs: dict[str, Any] = {}
    if src.kind == "gguf":
        kwargs["gguf_file"] = src.gguf_file
    if src.revision:
        kwargs["revision"] = src.revision
    try:
        tokenizer = AutoTokenizer.from_pretrained(src.location, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(src.location, torch_dtype=torch.float32, **kwargs)
    except OSError as e:
        first = str(e).strip().splitlines()[0]
        raise ExportError(f"cannot load {src.location}: {first}") from None
    if src.kind == "gguf":
        repair_gguf_tokenizer(Path(src.location) / str(src.gguf_file), tokenizer)
    return model.eval(), tokenizer

