"""Is the first session a process builds slower than the next one? (RESULTS.md, 2026-11-29 15:40 UTC)

Builds two sessions of one bundle in this process, optionally after touching and keeping a plain
buffer first, and prints each session's median decode speed (sessions taking turns).

    python benchmarks/probes/first_session.py models/smollm2-135m-int8 --ballast none|mmap|heap [--threads 1]

none: nothing first. mmap: a 300 MB anonymous mapping on 4 KiB pages, touched and kept. heap:
300 MB in 64 KiB malloc'd chunks (below glibc's mmap threshold, so from the brk heap), touched and
kept. On the 2-core VM (1 thread): none 64.0 / 69.9 and
60.3 / 67.1 tok/s; mmap 69.5 / 69.8 and 67.3 / 69.1.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import statistics

import numpy as np

import ortrefine
from ortrefine.bench import decode_fixed


def touch_ballast(kind: str, megabytes: int = 300) -> object:
    """Memory taken before any session; the caller keeps the returned object alive."""
    if kind == "mmap":
        m = mmap.mmap(-1, megabytes << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        np.frombuffer(m, dtype=np.uint8)[::4096] = 1  # one byte per page: every page faulted in
        return m
    if kind == "heap":
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype = ctypes.c_void_p
        chunks = [libc.malloc(64 << 10) for _ in range(megabytes * 16)]
        for c in chunks:
            ctypes.memset(c, 1, 64 << 10)
        return chunks
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--ballast", choices=["none", "mmap", "heap"], default="none")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    kept = touch_ballast(args.ballast)  # noqa: F841
    lms = [ortrefine.load(args.bundle, provider="cpu", threads=args.threads) for _ in range(2)]
    prompt = lms[0].tokenizer.encode_plain("The quick brown fox jumps over the lazy dog because")
    for lm in lms:
        decode_fixed(lm, prompt, 8)
    speed: list[list[float]] = [[] for _ in lms]
    for _ in range(args.rounds):
        for i, lm in enumerate(lms):
            speed[i].append(decode_fixed(lm, prompt, 64).tokens_per_second)
    print(f"ballast {args.ballast}: first session {statistics.median(speed[0]):.1f} tok/s, "
          f"second {statistics.median(speed[1]):.1f} tok/s")


if __name__ == "__main__":
    main()
