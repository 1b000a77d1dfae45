"""topk vs gradient vs hybrid proposals at the same k on the dev prompts (issue 7's figures).

Needs a bundle with a gradient graph (`ortrefine export-gradient BUNDLE`). One sweep per run:
mean ΔJ (log P) per sweep, accepted edits per 1,000 forward tokens, wall time, gradient time.

    python benchmarks/proposals.py --model models/smollm2-135m-grad [--limit 8] [--mode keep]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

import ortrefine
from ortrefine.runtime.refine import RefineConfig, refine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refine_quality import PROMPTS, ROOT, cpu_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/smollm2-135m-grad")
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--mode", default="regenerate")
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    lm = ortrefine.load(args.model, provider="cpu", threads=args.threads)
    prompts = [json.loads(line) for line in PROMPTS.read_text().splitlines() if line.strip()][: args.limit]
    stats: dict[str, list[dict]] = {p: [] for p in ("topk", "gradient", "hybrid")}
    for item in prompts:
        for proposal in stats:  # alternate proposals per prompt: same load for each
            cfg = RefineConfig(proposal=proposal, mode=args.mode, top_k=args.top_k, max_new_tokens=32, chat=item["kind"] != "continue")
            r = refine(lm, item["prompt"], cfg)
            stats[proposal].append({"gain": r.gain, "edits": len(r.edits), "forward_tokens": r.cost.forward_tokens,
                                    "seconds": r.cost.seconds, "gradient_seconds": r.cost.gradient_seconds})
        print(item["id"], {k: round(v[-1]["gain"], 2) for k, v in stats.items()}, flush=True)
    rows = []
    for proposal, runs in stats.items():
        edits_per_k = 1000 * sum(x["edits"] for x in runs) / max(1, sum(x["forward_tokens"] for x in runs))
        rows.append(f"| {proposal} | {statistics.mean(x['gain'] for x in runs):+.2f} | {edits_per_k:.2f} | "
                    f"{statistics.mean(x['seconds'] for x in runs):.1f} | {statistics.mean(x['gradient_seconds'] for x in runs):.1f} |")
    text = "\n".join([
        f"\n## proposals: topk vs gradient vs hybrid — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"machine: {cpu_model()}, ORT threads {args.threads}; model {args.model}; mode {args.mode}, k = {args.top_k}, one sweep, "
        f"first {len(prompts)} dev prompts, 32 new tokens. `python benchmarks/proposals.py --limit {args.limit} --mode {args.mode}`",
        "", "| proposal | mean ΔJ per sweep | accepted edits / 1k forward tokens | s/prompt | of which gradient s |", "|---|---|---|---|---|", *rows,
    ])
    print(text)
    with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
