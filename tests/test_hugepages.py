"""Opt-in move of a session's weights onto transparent huge pages (`load(hugepages=True)`, `--hugepages`)."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

from ortrefine.runtime import hugepages as H

MB = 1 << 20


def test_grown_is_what_appeared_in_between():
    before = [(0, 10), (20, 30), (100, 200)]
    after = [(0, 12), (20, 30), (40, 50), (90, 210)]  # one grew, one is new, one grew at both ends
    assert H.grown(before, after) == [(10, 12), (40, 50), (90, 100), (200, 210)]
    assert H.grown(after, after) == []
    assert H.grown([(5, 6)], [(0, 10)]) == [(0, 5), (6, 10)]


def test_only_whole_huge_pages_are_asked_for():
    assert H.huge_aligned([(1, 5 * MB)]) == [(2 * MB, 4 * MB)]
    assert H.huge_aligned([(2 * MB + 1, 4 * MB - 1), (0, MB)]) == []  # no whole 2 MiB page inside
    assert H.huge_aligned([(1, 70 * MB)], huge=32 * MB) == [(32 * MB, 64 * MB)]  # arm64, 16 KiB pages


def test_huge_page_size_reads_the_kernel_or_falls_back(tmp_path, monkeypatch):
    f = tmp_path / "hpage_pmd_size"
    f.write_text("33554432\n")
    monkeypatch.setattr(H, "PMD_SIZE", str(f))
    assert H.huge_page_size() == 32 * MB
    monkeypatch.setattr(H, "PMD_SIZE", str(tmp_path / "missing"))
    assert H.huge_page_size() == 2 * MB


def test_no_libc_is_a_reason_not_an_error(monkeypatch):
    def broken():
        raise AttributeError("no madvise here")

    monkeypatch.setattr(H, "_libc", broken)
    report = H.collapse([(0, 8 * MB)])
    assert report.collapsed == 0 and "madvise" in report.reason


def test_off_where_the_kernel_has_transparent_huge_pages_off(tmp_path, monkeypatch):
    monkeypatch.setattr(H.sys, "platform", "linux")  # the setting file decides, on any host
    setting = tmp_path / "enabled"
    setting.write_text("always madvise [never]\n")
    monkeypatch.setattr(H, "THP_SETTING", str(setting))
    assert "never" in H.enabled()
    with H.CollapseNewMemory() as moved:
        keep = np.ones(8 * MB // 4, dtype=np.float32)
    assert moved.report.requested == 0 and "never" in moved.report.reason
    monkeypatch.setattr(H, "THP_SETTING", str(tmp_path / "missing"))
    assert H.enabled() and keep.size


def _mapped(nbytes: int) -> tuple[mmap.mmap, np.ndarray]:
    """A fresh anonymous mapping, touched (4 KiB pages: numpy's own allocator would madvise it)."""
    m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    a = np.frombuffer(m, dtype=np.float32)
    a[:] = np.arange(a.size, dtype=np.float32)
    return m, a


def test_collapse_moves_new_memory_and_keeps_its_contents():
    if H.enabled():
        pytest.skip(f"no transparent huge pages here: {H.enabled()}")
    with H.CollapseNewMemory() as moved:
        m, a = _mapped(16 * MB)
    lo = a.ctypes.data
    if moved.report.collapsed == 0:
        pytest.skip(f"the kernel refused MADV_COLLAPSE (Linux < 6.1, or no free huge pages): {moved.report}")
    assert moved.report.requested >= 12 * MB  # the new mapping was found (2 MiB-aligned part of it at least)
    assert H.huge_bytes(lo, lo + a.nbytes) >= 12 * MB
    np.testing.assert_array_equal(a, np.arange(a.size, dtype=np.float32))  # same addresses, same values
    del a
    m.close()


def test_load_with_hugepages_gives_the_same_logits(tiny_bundles):
    import ortrefine

    plain = ortrefine.load(tiny_bundles["llama"], provider="cpu")
    moved = ortrefine.load(tiny_bundles["llama"], provider="cpu", hugepages=True)
    assert plain.hugepages is None and isinstance(moved.hugepages, H.CollapseReport)
    ids = plain.encode_prompt("Once upon a time")
    np.testing.assert_array_equal(plain.prefill(ids).logits, moved.prefill(ids).logits)


def test_cli_flag_reaches_the_load(tiny_bundles, monkeypatch):
    from click.testing import CliRunner

    import ortrefine
    from ortrefine.cli.main import cli

    seen = []
    real = ortrefine.load
    monkeypatch.setattr(ortrefine, "load", lambda *a, **kw: seen.append(kw.get("hugepages")) or real(*a, **kw))
    m = str(tiny_bundles["llama"])
    for flags, want in ((["--hugepages"], True), ([], False)):
        r = CliRunner().invoke(cli, ["generate", "Once upon a time", "-m", m, "--max-new-tokens", "4", *flags])
        assert r.exit_code == 0, r.output
        assert seen[-1] is want
