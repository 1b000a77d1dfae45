"""Opening a bundle: the manifest is parsed and checked before any file it names is opened."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ortrefine.bundle.format import (
    MANIFEST, MODEL_FILE, REQUIRED_FILES, check_name, regular_file, validate_manifest,
)
from ortrefine.errors import BundleError


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def describe_files(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """size + sha256 of every regular file, for the manifest (the manifest itself excluded)."""
    return {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.is_symlink() and p.name != MANIFEST and p.name not in skip
    }


@dataclass(frozen=True)
class Bundle:
    """A bundle opened and checked (files present, sizes as recorded).

    path: the folder.
    manifest: parsed ortrefine.json.
    config: parsed config.json (the HF model config).
    eos_ids: token ids that end an output (generation_config first: the tokenizer's eos can be
        wrong, e.g. SmolLM2's tokenizer says id 1 where generation stops at id 2).
    bos_id / pad_id: as recorded; pad falls back to the first eos.
    context_length: max positions the model was trained for.
    chat_template: Jinja source, or None when the model has none.
    """

    path: Path
    manifest: dict[str, Any]
    config: dict[str, Any]
    eos_ids: tuple[int, ...]
    bos_id: int | None
    pad_id: int
    context_length: int
    chat_template: str | None = field(default=None, repr=False)

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def precision(self) -> str:
        return str(self.manifest.get("precision", "fp32"))

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())


def read_json(path: Path, what: str = "JSON object") -> dict[str, Any]:
    """A JSON object from a bundle file; one-line BundleError for anything else."""
    folder = path.parent
    regular_file(folder, path.name)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{folder}: missing {path.name}; re-export the bundle") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise BundleError(f"{path}: not valid JSON ({e}); re-export the bundle") from None
    except OSError as e:
        raise BundleError(f"{path}: unreadable ({e.strerror}); check its permissions or re-export the bundle") from None
    if not isinstance(value, dict):
        raise BundleError(f"{path}: not a {what}; re-export the bundle")
    return value


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the bundle at `path`, its shape and file names checked."""
    return validate_manifest(path, read_json(path / MANIFEST, "manifest object"))


def check_files(path: Path, manifest: dict[str, Any], full_hash: bool) -> None:
    """Sizes always (catches truncation cheaply); sha256 only when asked (reads every byte)."""
    files = manifest.get("files", {})
    for required in REQUIRED_FILES:
        if required not in files and regular_file(path, required) is None:
            raise BundleError(f"{path}: missing {required}; re-export the bundle")
    for name, info in files.items():
        st = regular_file(path, check_name(path, name))
        if st is None:
            raise BundleError(f"{path}: missing {name}; re-export the bundle")
        if st.st_size != info["bytes"]:
            raise BundleError(
                f"{path}: {name} is {st.st_size} bytes, manifest says {info['bytes']} "
                "(truncated or modified); re-export the bundle"
            )
        if full_hash and sha256_file(path / name) != info["sha256"]:
            raise BundleError(f"{path}: {name} fails its sha256 check (corrupt or modified); re-export the bundle")


def _chat_template(path: Path) -> str | None:
    if regular_file(path, "chat_template.jinja") is not None:
        try:
            return (path / "chat_template.jinja").read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as e:
            raise BundleError(f"{path}/chat_template.jinja: unreadable ({e}); re-export the bundle") from None
    if regular_file(path, "tokenizer_config.json") is not None:
        template = read_json(path / "tokenizer_config.json").get("chat_template")
        if isinstance(template, str):
            return template
    return None


def open_bundle(path: str | Path, verify: bool = False) -> Bundle:
    """Open a bundle folder; raise BundleError with the fix when it is unusable."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(
            f"no bundle at {path}: export one with `ortrefine export <model> {path}` "
            "(or `ortrefine models` to list catalog names)"
        )
    manifest = read_manifest(path)
    check_files(path, manifest, full_hash=verify)
    config = read_json(path / "config.json", "model config object")
    special = manifest.get("special_tokens", {})
    eos_ids = tuple(int(i) for i in special.get("eos_ids", []))
    if not eos_ids:
        raise BundleError(f"{path}: manifest records no eos token id; re-export the bundle")
    pad = special.get("pad_id")
    return Bundle(
        path=path,
        manifest=manifest,
        config=config,
        eos_ids=eos_ids,
        bos_id=special.get("bos_id"),
        pad_id=int(pad) if pad is not None else eos_ids[0],
        context_length=int(manifest.get("context_length") or 2048),
        chat_template=_chat_template(path),
    )
