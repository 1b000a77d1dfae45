"""Cost of refinement: one sweep over |Y| = 32 with k = 8, in keep and regenerate mode, and runs to
convergence (at most 20 sweeps), on 3 dev prompts, fp32 and int4.

Each case is `ortrefine.runtime.refine.refine` with `RefineConfig(mode, top_k=8, sweeps, max_new_tokens=32)`
(the screened cases add `screen_keep=4` and `screen=1` (keep) / `screen=2` (regenerate): approximate, see RefineConfig) and the other fields at their defaults (positions_per_batch 8, l2r, logprob objective, greedy Y⁰).
Reported per case (medians over prompts of the per-prompt medians over --reps rounds, bundles and
cases taking turns): refinement wall time (the sweeps alone: `cost.seconds - cost.initial_seconds`)
and the total with the Y⁰ decode, forward tokens, candidates and how many were pruned, sweeps,
accepted edits and the gain in log P.

    python benchmarks/bench_refine.py [--reps 3] [--converge-reps 1] [--prompts dev-01 dev-03 dev-04] [--no-append]
"""

from __future__ import annotations

import argparse
import json
import sys

from common import DEV_PROMPTS, bundle, goals_section, markdown_table, median, publish, Run, verdict

import ortrefine
from ortrefine.runtime.refine import RefineConfig, refine

BUNDLES = ["smollm2-135m", "smollm2-135m-int4"]
PROMPTS = ["dev-01", "dev-03", "dev-04"]  # greedy Y⁰ runs the full 32 tokens on fp32 (dev-02 stops at 26)


def cases(top_k: int, length: int, converge_sweeps: int, screens: dict[str, int], screen_keep: int) -> dict[str, tuple[RefineConfig, bool]]:
    """name → (config, is a convergence run). screens: mode → screen depth of the approximate
    single-sweep cases (0: none)."""
    out = {
        "1 sweep, keep": (RefineConfig(objectives=["logprob"], mode="keep", top_k=top_k, sweeps=1, max_new_tokens=length), False),
        "1 sweep, regenerate": (RefineConfig(objectives=["logprob"], mode="regenerate", top_k=top_k, sweeps=1, max_new_tokens=length), False),
        f"converge (≤{converge_sweeps}), keep": (RefineConfig(objectives=["logprob"], mode="keep", top_k=top_k, sweeps=converge_sweeps, max_new_tokens=length), True),
        f"converge (≤{converge_sweeps}), regenerate": (RefineConfig(objectives=["logprob"], mode="regenerate", top_k=top_k, sweeps=converge_sweeps, max_new_tokens=length), True),
    }
    for mode, screen in screens.items():
        if screen:
            out[f"1 sweep, {mode}, screen {screen}/{screen_keep}"] = (
                RefineConfig(objectives=["logprob"], mode=mode, top_k=top_k, sweeps=1, max_new_tokens=length, screen=screen, screen_keep=screen_keep), False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundles", nargs="*", default=BUNDLES)
    ap.add_argument("--prompts", nargs="*", default=PROMPTS, help="ids from prompts-dev.jsonl")
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--length", type=int, default=32, help="|Y|: max new tokens")
    ap.add_argument("--converge-sweeps", type=int, default=20)
    ap.add_argument("--reps", type=int, default=3, help="rounds of the single-sweep cases")
    ap.add_argument("--converge-reps", type=int, default=1, help="rounds of the convergence cases")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--screen-keep-mode", type=int, default=1, help="keep mode: also a single sweep with this approximate screen (0: none)")
    ap.add_argument("--screen-regenerate", type=int, default=2, help="regenerate mode: the same")
    ap.add_argument("--screen-keep", type=int, default=4)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    run = Run("bench_refine", f"ORT intra-op {args.threads or 'default (all cores)'}")

    table = {json.loads(line)["id"]: json.loads(line) for line in DEV_PROMPTS.read_text().splitlines() if line.strip()}
    prompts = [table[p] for p in args.prompts]
    lms = [ortrefine.load(bundle(b), provider="cpu", threads=args.threads) for b in args.bundles]
    all_cases = cases(args.top_k, args.length, args.converge_sweeps,
                      {"keep": args.screen_keep_mode, "regenerate": args.screen_regenerate}, args.screen_keep)
    results: dict[tuple[str, str, str], list] = {}

    def one(lm, case: str, p: dict) -> None:
        cfg, _ = all_cases[case]
        from dataclasses import replace

        cfg = replace(cfg, chat=p["kind"] != "continue")
        r = refine(lm, p["prompt"], cfg)
        results.setdefault((lm.bundle.path.name, case, p["id"]), []).append(r)

    lms[0].generate("warm up", max_new_tokens=4)
    for lm in lms[1:]:
        lm.generate("warm up", max_new_tokens=4)
    rounds = max(args.reps, args.converge_reps)
    for r_i in range(rounds):
        for lm in (lms if r_i % 2 == 0 else lms[::-1]):
            for case, (_, converge) in all_cases.items():
                if r_i < (args.converge_reps if converge else args.reps):
                    for p in prompts:
                        one(lm, case, p)
        print(f"[round {r_i + 1}/{rounds}] done", file=sys.stderr)

    rows, goals = [], []
    for lm in lms:
        name = lm.bundle.path.name
        for case in all_cases:
            per_prompt = [results[(name, case, p["id"])] for p in prompts]
            sweep_s = [median([x.cost.seconds - x.cost.initial_seconds for x in rs]) for rs in per_prompt]
            total_s = [median([x.cost.seconds for x in rs]) for rs in per_prompt]
            first = [rs[0] for rs in per_prompt]
            rows.append([
                name, case,
                " / ".join(str(len(x.initial.ids)) for x in first),
                f"{median(sweep_s):.2f} ({min(sweep_s):.2f}–{max(sweep_s):.2f})",
                f"{median(total_s):.2f}",
                " / ".join(str(x.cost.forward_tokens) for x in first),
                " / ".join(f"{x.cost.pruned}/{x.cost.candidates}" for x in first),
                " / ".join(str(x.sweeps) for x in first),
                " / ".join(str(len(x.edits)) for x in first),
                " / ".join(f"{x.gain:+.2f}" for x in first),
                " / ".join(x.stop_reason for x in first),
            ])
            if lm.bundle.precision == "fp32" and case.startswith("1 sweep"):
                approx = " — approximate: drops candidates on an estimate" if "screen" in case else ""
                goals.append([f"one sweep ≤ 2 s fp32 ({case}, |Y| = {args.length}, k = {args.top_k}){approx}",
                              f"{median(sweep_s):.2f} s (worst prompt {max(sweep_s):.2f} s; with Y⁰ decode {median(total_s):.2f} s)",
                              verdict(median(sweep_s), 2.0, higher_is_better=False)])
    text = "\n".join([
        f"Prompts {', '.join(args.prompts)} (`data/prompts-dev.jsonl`); |Y| ≤ {args.length}, top-k {args.top_k}, other "
        f"RefineConfig fields at their defaults (positions_per_batch 8, l2r, logprob). Single sweeps: {args.reps} rounds; "
        f"convergence runs: {args.converge_reps}; bundles and cases taking turns. Seconds: median over prompts (min–max) of each "
        "prompt's median; 'sweep s' excludes the Y⁰ decode, 'total s' includes it. Per-prompt columns are in prompt order.",
        "",
        markdown_table(["bundle", "case", "|Y⁰|", "sweep s", "total s", "forward tokens", "pruned/candidates", "sweeps", "edits",
                        "gain log P", "stop"], rows),
        "",
        *goals_section(["goal", "figure", "verdict"], goals, "Goal (issue 5), from this run:"),
    ])
    publish("bench_refine", text, run, append=not args.no_append)


if __name__ == "__main__":
    main()
