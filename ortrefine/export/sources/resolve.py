"""What a user's source string means. Catalog entries hold source strings too, so resolving them
here, in one order (catalog name first, then paths, then hub ids), lets an entry name any of the
other forms and gives export and distill the same reading of a name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ortrefine.errors import ExportError, UnknownNameError
from ortrefine.export.sources.pypi_gguf import _pypi_gguf, _pypi_gguf_parts


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
    if source.startswith("pypi-gguf-parts:"):
        entry_hint = next((e.install_hint for e in catalog.values() if e.source == source), None)
        folder, filename = _pypi_gguf_parts(source.split(":", 1)[1], entry_hint)
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

