"""A/B decode speed of bundles, many short alternating rounds (for graph variants whose difference
is smaller than bench_decode's run-to-run spread): per round each bundle decodes --tokens greedy
tokens once, in rotating order; prints per-bundle median tok/s and the median of the per-round
ratios to the first bundle (a ratio within one round shares that round's load).

    python benchmarks/probes/ab_decode.py models/A models/B [--rounds 15] [--tokens 64]
    python benchmarks/probes/ab_decode.py models/A models/A+pin models/A+hugepages   # session options

Load order biases such probes: of several sessions one process builds, the first decoded 5–15 %
slower than later ones of the same bundle (RESULTS.md, 2026-11-29 15:40 UTC), so until then this
probe favoured whichever bundle was listed second. Now it runs twice, in two processes, building
the sessions in the given and in the reversed order (each after a kept ballast session), and
reports the geometric mean of the two ratios, in which the order's share cancels exactly for two
bundles (with three or more the middle ones keep their place: compare two at a time when it
matters). Check a probe by listing one bundle twice: the ratio should be ~1.00.
(--order given|reversed: one process only. A path containing "+" cannot be given.)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys


def load(spec: str):
    """A bundle path, optionally with session options: PATH+pin, PATH+hugepages, PATH+pin+hugepages."""
    import ortrefine

    path, *opts = spec.split("+")
    return ortrefine.load(path, provider="cpu", pin_threads="pin" in opts, hugepages="hugepages" in opts)


def measure(bundles: list[str], rounds: int, tokens: int, reverse: bool) -> dict[str, list[float]]:
    """tok/s per round of each bundle (keys: 'i:path'), sessions built in the given or reversed order."""
    from ortrefine.bench import decode_fixed

    order = list(range(len(bundles)))[:: -1 if reverse else 1]
    ballast = load(bundles[order[0]].split("+")[0])  # noqa: F841  kept alive: no measured session is the first
    lms = {i: load(bundles[i]) for i in order}
    prompt = lms[0].tokenizer.encode_plain("The quick brown fox jumps over the lazy dog because")
    for lm in lms.values():
        decode_fixed(lm, prompt, 8)
    speed: dict[int, list[float]] = {i: [] for i in order}
    for r in range(rounds):
        turn = order[r % len(order):] + order[: r % len(order)]
        for i in turn:
            speed[i].append(decode_fixed(lms[i], prompt, tokens).tokens_per_second)
    return {f"{i}:{bundles[i]}": speed[i] for i in range(len(bundles))}


def ratios(speed: dict[str, list[float]]) -> dict[str, float]:
    first = next(iter(speed.values()))
    return {k: statistics.median(x / y for x, y in zip(v, first)) for k, v in speed.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--order", choices=["given", "reversed"], default=None, help="one process, this load order (prints JSON)")
    args = ap.parse_args()
    if args.order:
        print(json.dumps(measure(args.bundles, args.rounds, args.tokens, args.order == "reversed")))
        return
    runs = {}
    for order in ("given", "reversed"):
        done = subprocess.run([sys.executable, __file__, *args.bundles, "--rounds", str(args.rounds), "--tokens", str(args.tokens),
                               "--order", order], capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"the {order}-order run failed:\n{done.stderr.strip()}")
        runs[order] = json.loads(done.stdout.strip().splitlines()[-1])
    r_given, r_rev = ratios(runs["given"]), ratios(runs["reversed"])
    for key in runs["given"]:
        tps = runs["given"][key] + runs["reversed"][key]
        both = math.sqrt(r_given[key] * r_rev[key])
        print(f"{key.split(':', 1)[1]}: {statistics.median(tps):.1f} tok/s ({min(tps):.1f}–{max(tps):.1f}); ratio to the first "
              f"{both:.3f} (built in the given order {r_given[key]:.3f}, reversed {r_rev[key]:.3f})")


if __name__ == "__main__":
    main()
