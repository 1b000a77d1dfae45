"""Move a session's weights onto transparent huge pages (Linux), after onnxruntime has placed them.

Why: decoding reads every weight once per token, so the weights stream through the TLB. On 4 KiB
pages that costs a page walk per 4 KiB, and on a virtual machine a two-level walk. numpy already
puts its large arrays on huge pages (madvise), so a bandwidth measured with numpy is a huge-page
figure, but onnxruntime copies (prepacks) the weights into malloc'd buffers that, under the usual
THP mode `madvise`, stay on 4 KiB pages. After the session is built, the anonymous memory that
appeared while it was built is collapsed with MADV_COLLAPSE (Linux 6.1+), which copies it onto huge
pages in place (addresses, and so onnxruntime, do not change), then marked MADV_HUGEPAGE.

Opt-in (`load(hugepages=True)`, `--hugepages`): on the 2-core EPYC VM fp32 decode was 1.05× faster
(1.06× / 1.04× in the two load orders of benchmarks/probes/ab_decode.py; int4 1.03× / 1.05× in one
process), but the collapse itself took 0.15 s
(int4) to 1.2 s (fp32, 504 MB) at load, which a one-shot `generate` does not win back
(benchmarks/RESULTS.md). Anything unsupported (not Linux, a kernel without MADV_COLLAPSE, THP
off, a refused range) leaves that memory as it was, logged, never an error: a range is marked
MADV_HUGEPAGE only once its collapse succeeded, so a refusal does not hand it to khugepaged later.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)

DEFAULT_HUGE = 2 << 20  # x86-64, and arm64 with 4 KiB base pages
PMD_SIZE = "/sys/kernel/mm/transparent_hugepage/hpage_pmd_size"
MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"

Region = tuple[int, int]  # [start, end) of an anonymous read-write mapping


@dataclass
class CollapseReport:
    """What `collapse` did: bytes asked for and bytes that ended up on huge pages."""

    requested: int = 0
    collapsed: int = 0
    failed: int = 0  # ranges the kernel refused (e.g. no free huge pages)
    reason: str = ""  # why nothing was tried, when nothing was


def enabled() -> str:
    """'' when huge pages may be used here, else why not."""
    if not sys.platform.startswith("linux"):
        return "not Linux"
    try:
        with open(THP_SETTING) as f:
            mode = f.read()
    except OSError:
        return "no transparent huge pages in this kernel"
    if "[never]" in mode:
        return "transparent huge pages are off ([never])"
    return ""


def anonymous_regions() -> list[Region]:
    """Anonymous read-write mappings (and the brk heap) of this process, from /proc/self/maps."""
    out = []
    try:
        with open("/proc/self/maps") as f:
            lines = f.readlines()
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        if len(fields) < 5 or not fields[1].startswith("rw"):
            continue
        if len(fields) > 5 and fields[5] != "[heap]":
            continue  # files, stacks, vdso: not where onnxruntime keeps weights
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        out.append((lo, hi))
    return out


def grown(before: list[Region], after: list[Region]) -> list[Region]:
    """Parts of `after` not covered by `before`: the memory that appeared in between."""
    out = []
    for lo, hi in after:
        pieces = [(lo, hi)]
        for blo, bhi in before:
            nxt = []
            for plo, phi in pieces:
                if bhi <= plo or blo >= phi:
                    nxt.append((plo, phi))
                    continue
                if plo < blo:
                    nxt.append((plo, blo))
                if bhi < phi:
                    nxt.append((bhi, phi))
            pieces = nxt
        out.extend(pieces)
    return out


def huge_page_size() -> int:
    """The THP size of this kernel (2 MiB on x86-64; 32 / 512 MiB on arm64 with 16 / 64 KiB pages)."""
    try:
        with open(PMD_SIZE) as f:
            return int(f.read().strip()) or DEFAULT_HUGE
    except (OSError, ValueError):
        return DEFAULT_HUGE


def huge_aligned(regions: list[Region], huge: int = DEFAULT_HUGE) -> list[Region]:
    """Each region shrunk to whole huge pages (MADV_COLLAPSE works on those only); empty ones dropped."""
    out = []
    for lo, hi in regions:
        a, b = (lo + huge - 1) & ~(huge - 1), hi & ~(huge - 1)
        if b > a:
            out.append((a, b))
    return out


def _libc():
    """libc through ctypes (imported here: `import ortrefine` should not pay for it)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)  # glibc; find_library runs ldconfig, so only as a fallback
    except OSError:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so", use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    return libc


def collapse(regions: list[Region]) -> CollapseReport:
    """MADV_COLLAPSE on each huge-page-aligned range, then MADV_HUGEPAGE on those that collapsed
    (so the kernel keeps them huge); failures are counted, never raised."""
    report = CollapseReport()
    ranges = huge_aligned(regions, huge_page_size())
    if not ranges:
        report.reason = "no whole huge page in the new memory"
        return report
    try:
        libc = _libc()
    except Exception as e:  # no ctypes, no libc, no madvise symbol: leave the memory alone
        report.reason = f"cannot call madvise ({type(e).__name__}: {e})"
        return report
    for a, b in ranges:
        report.requested += b - a
        if libc.madvise(a, b - a, MADV_COLLAPSE) == 0:
            report.collapsed += b - a
            libc.madvise(a, b - a, MADV_HUGEPAGE)
        else:  # a partial collapse is counted as none (the report only)
            report.failed += 1
            log.debug("MADV_COLLAPSE [%#x, %#x) refused", a, b)
    return report


class CollapseNewMemory:
    """`with CollapseNewMemory(): build()` puts the anonymous memory that `build` left behind on huge pages."""

    def __init__(self) -> None:
        self.report = CollapseReport()
        self.skip = enabled()
        self.before: list[Region] = []

    def __enter__(self) -> "CollapseNewMemory":
        if not self.skip:
            self.before = anonymous_regions()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            return
        if self.skip:
            self.report.reason = self.skip
            return
        self.report = collapse(grown(self.before, anonymous_regions()))
        log.info("huge pages: %.0f of %.0f MB collapsed (%d ranges refused)",
                 self.report.collapsed / 2**20, self.report.requested / 2**20, self.report.failed)


def huge_bytes(lo: int, hi: int) -> int:
    """AnonHugePages (bytes) of the mappings overlapping [lo, hi): how much of it is on huge pages."""
    total, overlap = 0, False
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split(None, 1)[0]
                if "-" in head and ":" not in head:
                    mlo, mhi = (int(x, 16) for x in head.split("-"))
                    overlap = mlo < hi and lo < mhi
                elif overlap and head == "AnonHugePages:":
                    total += int(line.split()[1]) * 1024
    except OSError:
        return 0
    return total
