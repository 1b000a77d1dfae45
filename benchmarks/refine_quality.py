"""Refinement quality vs beam search on the dev prompts (issue 3's acceptance figures).

For every prompt of data/prompts-dev.jsonl (chat-kind prompts through the chat
template), 32 new tokens: greedy, beam-4, beam-8 and refine (default config unless overridden);
mean Δlog P over greedy, regressions, wall time per prompt and the ratio to beam-4's, and for
the keyword prompts the share of outputs containing every keyword before/after a
logprob + coverage refinement. Appends a dated section to benchmarks/RESULTS.md.

    python benchmarks/refine_quality.py [--model models/smollm2-135m] [--threads 1] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import sys
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import ortrefine
from ortrefine.runtime.objectives import Coverage, Context
from ortrefine.runtime.refine import RefineConfig, refine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEV_PROMPTS as PROMPTS, ROOT, cpu_model  # noqa: E402


def repeated_trigrams(ids: list[int]) -> int:
    grams = [tuple(ids[i : i + 3]) for i in range(len(ids) - 2)]
    return len(grams) - len(set(grams))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/smollm2-135m")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--config", default="{}", help="JSON overrides of RefineConfig")
    ap.add_argument("--out", default=None, help="also write per-prompt rows as JSON here")
    ap.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args()
    overrides = json.loads(args.config)
    lm = ortrefine.load(args.model, provider="cpu", threads=args.threads)
    prompts = [json.loads(line) for line in PROMPTS.read_text().splitlines() if line.strip()][: args.limit]
    rows = []
    lm.generate("warm up", max_new_tokens=4)
    for p in prompts:
        chat = p["kind"] != "continue"
        row = {"id": p["id"], "kind": p["kind"]}
        t = time.perf_counter()
        g = lm.generate(p["prompt"], max_new_tokens=32, chat=chat)
        row["greedy"] = {"logprob": g.logprob, "seconds": time.perf_counter() - t, "text": g.text, "rep3": repeated_trigrams(g.ids)}
        for nb in (4, 8):
            t = time.perf_counter()
            b = lm.generate(p["prompt"], strategy="beam", num_beams=nb, max_new_tokens=32, chat=chat)
            row[f"beam{nb}"] = {"logprob": b.logprob, "seconds": time.perf_counter() - t, "text": b.text, "rep3": repeated_trigrams(b.ids)}
        cfg = RefineConfig(max_new_tokens=32, chat=chat, **{"objectives": ["logprob"], **overrides})  # the logged figures are log P alone
        r = refine(lm, p["prompt"], cfg)
        row["refine"] = {"logprob": r.objective_after["logprob"], "before": r.objective_before["logprob"],
                         "seconds": r.cost.seconds, "forward_tokens": r.cost.forward_tokens + r.cost.initial_forward_tokens,
                         "edits": len(r.edits), "pruned": r.cost.pruned, "candidates": r.cost.candidates,
                         "tokens_skipped": r.cost.tokens_skipped, "text": r.final.text, "rep3": repeated_trigrams(r.final.ids),
                         "same_ids": r.final_retokenized["same_ids"]}
        if p.get("keywords"):
            kcfg = RefineConfig(max_new_tokens=32, chat=chat, objectives=["logprob", "coverage=2.0"], keywords=tuple(p["keywords"]), **overrides)
            kr = refine(lm, p["prompt"], kcfg)
            cov = Coverage(1.0, Context(p["prompt"], lm.tokenizer, lm.eos_ids, 32, keywords=tuple(p["keywords"])))
            row["coverage"] = {"before_all": all(cov.covered(kr.initial.text)), "after_all": all(cov.covered(kr.final.text)),
                               "logprob_before": kr.objective_before["logprob"], "logprob_after": kr.objective_after["logprob"],
                               "seconds": kr.cost.seconds, "text_before": kr.initial.text, "text_after": kr.final.text}
        rows.append(row)
        print(p["id"], f"greedy {g.logprob:.2f} beam4 {row['beam4']['logprob'] - g.logprob:+.2f} "
              f"beam8 {row['beam8']['logprob'] - g.logprob:+.2f} refine {row['refine']['logprob'] - g.logprob:+.2f} "
              f"({row['refine']['seconds']:.1f}s vs beam4 {row['beam4']['seconds']:.1f}s)", flush=True)
    summary = summarise(rows)
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows, "config": overrides}, indent=2))
    if not args.no_results:
        append_results(args, overrides, summary, lm)


def summarise(rows: list[dict]) -> dict:
    d = lambda k: [r[k]["logprob"] - r["greedy"]["logprob"] for r in rows]  # noqa: E731
    s = lambda k: [r[k]["seconds"] for r in rows]  # noqa: E731
    out = {
        "prompts": len(rows),
        "mean_dlogp": {k: statistics.mean(d(k)) for k in ("beam4", "beam8", "refine")},
        "refine_regressions": sum(1 for r in rows if r["refine"]["logprob"] < r["refine"]["before"] - 1e-6),
        "refine_initial_matches_greedy": sum(1 for r in rows if abs(r["refine"]["before"] - r["greedy"]["logprob"]) < 1e-2),
        "mean_seconds": {k: statistics.mean(s(k)) for k in ("greedy", "beam4", "beam8", "refine")},
        "refine_over_beam4_time": statistics.mean(s("refine")) / statistics.mean(s("beam4")),
        "mean_forward_tokens_refine": statistics.mean(r["refine"]["forward_tokens"] for r in rows),
        "pruned_share": sum(r["refine"]["pruned"] for r in rows) / max(1, sum(r["refine"]["candidates"] for r in rows)),
        "repeated_trigrams": {k: sum(r[k]["rep3"] for r in rows) for k in ("greedy", "beam4", "beam8", "refine")},
    }
    cov = [r["coverage"] for r in rows if "coverage" in r]
    if cov:
        out["keywords_all_covered"] = {"before": f"{sum(c['before_all'] for c in cov)}/{len(cov)}",
                                       "after": f"{sum(c['after_all'] for c in cov)}/{len(cov)}"}
    return out


def append_results(args, overrides, summary, lm) -> None:
    import onnxruntime

    m = summary
    lines = [
        f"\n## refine quality vs beam — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"machine: {cpu_model()}, {__import__('os').cpu_count()} cores, ORT threads {args.threads or 'default'}; "
        f"onnxruntime {onnxruntime.__version__}; model {args.model} ({lm.bundle.precision}); config {json.dumps(overrides) or '{}'} "
        f"(defaults otherwise); {m['prompts']} dev prompts, 32 new tokens.",
        "",
        "| | mean Δlog P vs greedy | mean s/prompt |",
        "|---|---|---|",
        f"| greedy | 0 | {m['mean_seconds']['greedy']:.2f} |",
        f"| beam-4 | {m['mean_dlogp']['beam4']:+.2f} | {m['mean_seconds']['beam4']:.2f} |",
        f"| beam-8 | {m['mean_dlogp']['beam8']:+.2f} | {m['mean_seconds']['beam8']:.2f} |",
        f"| refine (1 sweep) | {m['mean_dlogp']['refine']:+.2f} | {m['mean_seconds']['refine']:.2f} |",
        "",
        f"refine/beam-4 time: {m['refine_over_beam4_time']:.2f}×; regressions: {m['refine_regressions']}; "
        f"candidates pruned: {100 * m['pruned_share']:.0f}%; repeated 3-grams (sum) greedy/beam4/beam8/refine: "
        f"{m['repeated_trigrams']['greedy']}/{m['repeated_trigrams']['beam4']}/{m['repeated_trigrams']['beam8']}/{m['repeated_trigrams']['refine']}"
        + (f"; keyword prompts with every keyword (logprob + coverage=2): {m['keywords_all_covered']['before']} → {m['keywords_all_covered']['after']}" if "keywords_all_covered" in m else ""),
    ]
    with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
