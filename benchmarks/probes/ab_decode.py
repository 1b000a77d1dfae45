"""A/B decode speed of bundles, many short alternating rounds (for graph variants whose difference
is smaller than bench_decode's run-to-run spread): per round each bundle decodes --tokens greedy
tokens once, in rotating order; prints per-bundle median tok/s and the median of the per-round
ratios to the first bundle (a ratio within one round shares that round's load).

    python benchmarks/probes/ab_decode.py models/A models/B [--rounds 15] [--tokens 64]
"""

from __future__ import annotations

import argparse
import statistics

import ortrefine
from ortrefine.cli.bench_cmd import decode_fixed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    lms = [ortrefine.load(b, provider="cpu") for b in args.bundles]
    prompt = lms[0].tokenizer.encode_plain("The quick brown fox jumps over the lazy dog because")
    for lm in lms:
        decode_fixed(lm, prompt, 8)
    speed: list[list[float]] = [[] for _ in lms]
    for r in range(args.rounds):
        order = list(range(len(lms)))
        order = order[r % len(lms):] + order[: r % len(lms)]
        for i in order:
            run = decode_fixed(lms[i], prompt, args.tokens)
            speed[i].append(run.tokens_per_second)
    for b, s in zip(args.bundles, speed):
        ratios = [x / y for x, y in zip(s, speed[0])]
        print(f"{b}: {statistics.median(s):.1f} tok/s ({min(s):.1f}–{max(s):.1f}); per-round ratio to the first "
              f"{statistics.median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f})")


if __name__ == "__main__":
    main()
