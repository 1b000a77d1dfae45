"""A model bundle on disk: one folder with everything the runtime needs.

Layout: model.onnx [+ model.onnx_data], tokenizer.json, config.json, generation_config.json,
tokenizer_config.json / chat_template.jinja, and the ortrefine.json manifest (source, settings,
versions, special-token ids, context length, size and sha256 of every file).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ortrefine.errors import BundleError

MANIFEST = "ortrefine.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def describe_files(folder: Path) -> dict[str, dict[str, Any]]:
    """size + sha256 of every file, for the manifest (the manifest itself excluded)."""
    return {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path.parent}: missing {path.name}; re-export the bundle") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e}); re-export the bundle") from None


def _check_files(path: Path, manifest: dict[str, Any], full_hash: bool) -> None:
    """Sizes always (catches truncation cheaply); sha256 only when asked (reads every byte)."""
    files = manifest.get("files", {})
    for required in (MODEL_FILE, TOKENIZER_FILE):
        if required not in files and not (path / required).exists():
            raise BundleError(f"{path}: missing {required}; re-export the bundle")
    for name, info in files.items():
        f = path / name
        if not f.exists():
            raise BundleError(f"{path}: missing {name}; re-export the bundle")
        if f.stat().st_size != info["bytes"]:
            raise BundleError(
                f"{path}: {name} is {f.stat().st_size} bytes, manifest says {info['bytes']} "
                "(truncated or modified); re-export the bundle"
            )
        if full_hash and sha256_file(f) != info["sha256"]:
            raise BundleError(f"{path}: {name} fails its sha256 check; re-export the bundle")


def _chat_template(path: Path) -> str | None:
    jinja = path / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text()
    tc = path / "tokenizer_config.json"
    if tc.exists():
        template = json.loads(tc.read_text()).get("chat_template")
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
    manifest = _read_json(path / MANIFEST)
    _check_files(path, manifest, full_hash=verify)
    config = _read_json(path / "config.json")
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
