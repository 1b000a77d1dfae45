"""The model catalog (catalog.toml, shipped inside the package): named presets and where their bundles live.

Torch-free: the CLI's `models` and `generate --model NAME` use it on edge boxes.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ortrefine.errors import ConfigError, UnknownNameError

_PACKAGED = Path(__file__).resolve().with_name("catalog.toml")


def catalog_path() -> Path:
    """ORTREFINE_CATALOG overrides the catalog shipped with the package (a wheel install has no source tree)."""
    return Path(os.environ.get("ORTREFINE_CATALOG", _PACKAGED))


def models_dir() -> Path:
    """Where bundles go by default: ORTREFINE_MODELS, else a per-user data folder
    ($XDG_DATA_HOME/ortrefine/models, ~/.local/share/ortrefine/models), so that a catalog name
    means the same bundle from any directory and from a wheel install."""
    env = os.environ.get("ORTREFINE_MODELS")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ortrefine" / "models"


LEGACY_MODELS = Path("models")  # where bundles went before the per-user folder: still found by name


@dataclass(frozen=True)
class CatalogEntry:
    """One preset.

    name: catalog key, also the default bundle folder name.
    source: what the exporter loads (see export.sources for the forms).
    description: one line for `ortrefine models`.
    install_hint: command that makes the source available when it is missing.
    hub_id: the upstream hub id, recorded in the manifest for provenance.
    chat: whether the model is an instruct model with a chat template.
    validate_atol: max |Δlogits| tolerated between ONNX and torch at export.
    """

    name: str
    source: str
    description: str = ""
    install_hint: str | None = None
    hub_id: str | None = None
    chat: bool = False
    validate_atol: float = 1e-3

    def default_bundle(self) -> Path:
        return models_dir() / self.name


def load_catalog(path: Path | None = None) -> dict[str, CatalogEntry]:
    """The catalog's entries; a missing or malformed file (ORTREFINE_CATALOG can point anywhere) is one line."""
    path = path or catalog_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read the model catalog {path} ({e}); fix it or unset ORTREFINE_CATALOG") from None
    entries = {}
    for name, fields in data.items():
        try:
            if not isinstance(fields, dict):
                raise TypeError("not a table")
            entries[name] = CatalogEntry(name=name, **fields)
        except TypeError as e:
            raise ConfigError(f"{path}: catalog entry [{name}] is malformed ({e}); fix it or unset ORTREFINE_CATALOG") from None
    return entries


def get_entry(name: str) -> CatalogEntry:
    entries = load_catalog()
    if name not in entries:
        known = ", ".join(sorted(entries))
        raise UnknownNameError(f"unknown catalog model {name!r}; known: {known} (see `ortrefine models`)")
    return entries[name]


def resolve_bundle_path(model: str | os.PathLike[str]) -> Path:
    """A bundle folder, or a catalog name standing for models/<name>."""
    path = Path(model)
    if path.exists() or os.sep in str(model) or str(model).startswith("."):
        return path
    entries = load_catalog()
    if str(model) in entries:
        default = entries[str(model)].default_bundle()
        legacy = LEGACY_MODELS / str(model)
        if not (default / "ortrefine.json").exists() and (legacy / "ortrefine.json").exists() and "ORTREFINE_MODELS" not in os.environ:
            return legacy
        return default
    return path
