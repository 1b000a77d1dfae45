"""Quantized bundles side by side with their fp32 parent, in one process.

For each bundle: size on disk, the quality-gate figures its manifest recorded, and greedy decode
speed (a fixed number of new tokens from a short prompt, no early stop; one warm-up, then the
bundles take turns for --reps rounds and the median is reported). Then the batch dependence of
scoring: each of 8 candidate continuations scored alone and inside the batch of all 8, max |Δ log-prob|.

    python benchmarks/quantize_speed.py                       # the default model and its variants
    python benchmarks/quantize_speed.py models/a models/a-int4 --tokens 32 --no-append

The first bundle is the reference (fp32). Appends a dated table to benchmarks/RESULTS.md unless
--no-append. Runs on onnxruntime alone (no torch in the process, so no thread-pool fight).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import ortrefine
from ortrefine.export.writer import library_versions
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ["smollm2-135m", "smollm2-135m-int8", "smollm2-135m-int4", "smollm2-135m-int8-dynamic", "smollm2-135m-int4-emb"]
PROMPT = "The history of the printing press begins in"
CANDIDATES = [
    " a small workshop in Mainz, where Johannes Gutenberg",
    " China, many centuries before anyone in Europe",
    " the fifteenth century, when paper became cheap enough",
    " an unexpected place: the wine presses of the Rhine",
    " with the need to copy books faster than monks could",
    " ancient Mesopotamia, where seals were rolled over clay",
    " Korea, where metal type was cast in the year 1377",
    " a story of merchants, priests, printers and readers",
]


def decode_fixed(lm: ortrefine.LM, prompt_ids: list[int], n: int) -> list[int]:
    """Greedy decode of exactly n tokens (no eos stop, so every bundle does the same work)."""
    out = lm.prefill(prompt_ids)                      # logits: (1, P, vocab)
    ids = [int(out.logits[0, -1].argmax())]
    kv = out.kv
    for _ in range(n - 1):
        out = lm.forward(np.array([[ids[-1]]], dtype=np.int64), kv)  # one new token on the cache
        kv = out.kv
        ids.append(int(out.logits[0, -1].argmax()))
    return ids


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def batch_delta(lm: ortrefine.LM, prompt_ids: list[int], cands: list[list[int]]) -> float:
    """max over candidates and tokens of |log p alone − log p inside the batch of all candidates|."""
    together = lm.score(prompt_ids, cands).token_logprobs
    return max(float(np.abs(lm.score(prompt_ids, [c]).token_logprobs[0] - together[k]).max()) for k, c in enumerate(cands))


def resolve(name: str) -> Path:
    p = Path(name)
    return p if p.exists() else ROOT / "models" / name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", nargs="*", default=DEFAULT)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()

    load = os.getloadavg()[0]
    paths = [resolve(b) for b in args.bundles]
    lms = [ortrefine.load(p, provider="cpu", threads=args.threads) for p in paths]
    prompt = lms[0].encode_prompt(PROMPT)
    cands = [lms[0].tokenizer.encode_plain(c) for c in CANDIDATES]

    reference = decode_fixed(lms[0], prompt, args.tokens)
    outputs = [decode_fixed(lm, prompt, args.tokens) for lm in lms]  # warm-up, and the ids compared
    times: list[list[float]] = [[] for _ in lms]
    for _ in range(args.reps):
        for i, lm in enumerate(lms):  # take turns, so drifting machine load hits every bundle alike
            t0 = time.perf_counter()
            decode_fixed(lm, prompt, args.tokens)
            times[i].append(time.perf_counter() - t0)

    rows = []
    for path, lm, out, ts in zip(paths, lms, outputs, times):
        man = lm.bundle.manifest
        gate = man.get("quality_gate") or {}
        size = sum(f["bytes"] for f in man.get("files", {}).values())
        tps = [args.tokens / t for t in ts]
        if gate.get("skipped") or not gate:
            figures = "—" if not gate else f"skipped: {gate['skipped']}"
            ppl = kl = top1 = verdict = "—"
        else:
            ppl = f"{gate['parent_ppl']:.2f} → {gate['quantized_ppl']:.2f}"
            kl, top1 = f"{gate['mean_kl']:.4f}", f"{100 * gate['top1_agreement']:.1f}%"
            verdict = "pass" if gate["passed"] else ("FAIL (forced)" if gate.get("forced") else "FAIL")
        rows.append(f"| {path.name} | {man.get('precision', 'fp32')} | {size / 1e6:.1f} | {ppl} | {kl} | {top1} | {verdict} | "
                    f"{statistics.median(tps):.1f} ({min(tps):.1f}–{max(tps):.1f}) | {common_prefix(out, reference)}/{args.tokens} |")

    batch_rows = []
    for path, lm in zip(paths, lms):
        inv = lm.bundle.manifest.get("batch_invariant", True)
        batch_rows.append(f"| {path.name} | {batch_delta(lm, prompt, cands):.3g} | {str(inv).lower()} |")

    versions = library_versions()
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join([
        f"## quantize_speed — {stamp}",
        "",
        f"CPU: {cpu_model()} ({os.cpu_count()} cores, load average {load:.1f} at start, shared machine), "
        f"threads {args.threads or 'default'}; "
        + ", ".join(f"{k} {versions[k]}" for k in ("onnxruntime", "onnx", "numpy", "ortrefine") if k in versions)
        + f"; Python {platform.python_version()}",
        "Command: `" + " ".join(["python", "benchmarks/quantize_speed.py", *sys.argv[1:]]) + "`",
        "",
        f"Greedy decode of {args.tokens} tokens from a {len(prompt)}-token prompt, no eos stop; tok/s median of "
        f"{args.reps} (min–max) after a warm-up, bundles taking turns. Gate figures as recorded in each manifest "
        "(built-in English texts, ppl parent → quantized, mean KL(parent ‖ quantized) nats/token, top-1 agreement).",
        "",
        "| bundle | precision | MB | ppl | KL | top-1 | gate | tok/s | greedy = fp32 (leading tokens) |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Batch dependence: {len(cands)} candidate continuations scored alone and inside one batch of all "
        f"{len(cands)} (`LM.score`), max |Δ log-prob| over every token.",
        "",
        "| bundle | max abs Δ log-prob | manifest batch_invariant |",
        "|---|---|---|",
        *batch_rows,
        "",
    ])
    print(text)
    if not args.no_append:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        new = not args.results.exists()
        with open(args.results, "a") as f:
            if new:
                f.write("# Benchmark results\n\nAppended by the scripts in this folder; newest last.\n\n")
            f.write(text + "\n")


if __name__ == "__main__":
    main()
