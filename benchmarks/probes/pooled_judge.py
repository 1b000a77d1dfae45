"""The judge's paired gain of one system over the baseline, pooled over several stored eval reports.

Each report gives its clean pairs (neither output degenerate); the pairs are joined in the order
the reports are named, then bootstrapped as `ortrefine eval` does for one report.

    python benchmarks/probes/pooled_judge.py A/report.json B/report.json [--system refine]
    python benchmarks/probes/pooled_judge.py A/report.json --metric chrf --baseline refine-no-examples

--metric chrf pairs the outputs' chrF against the human references instead of the judge's
per-token log-prob (keyword and reference prompts), over every prompt: a degenerate output's
chrF is its own penalty.
"""

from __future__ import annotations

import argparse
import json

from ortrefine.evaluate.stats import paired


def clean_pairs(path: str, system: str, baseline: str, judge: str | None, metric: str = "judge") -> tuple[list[float], list[float]]:
    with open(path, encoding="utf-8") as f:
        report = json.load(f)
    by_id: dict[str, dict[str, dict]] = {}
    for o in report["outputs"]:
        by_id.setdefault(o["id"], {})[o["system"]] = o
    sys_vals, base_vals = [], []
    for outs in by_id.values():
        a, b = outs.get(system), outs.get(baseline)
        if a is None or b is None:
            continue
        if metric == "chrf":
            if a.get("chrf") is not None and b.get("chrf") is not None:
                sys_vals.append(a["chrf"])
                base_vals.append(b["chrf"])
            continue
        if a["degenerate"] or b["degenerate"]:
            continue
        name = judge or next(iter(a["judges"]))
        sys_vals.append(a["judges"][name]["mean"])
        base_vals.append(b["judges"][name]["mean"])
    return sys_vals, base_vals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+")
    ap.add_argument("--system", default="refine")
    ap.add_argument("--baseline", default="greedy")
    ap.add_argument("--judge", default=None)
    ap.add_argument("--metric", choices=("judge", "chrf"), default="judge")
    args = ap.parse_args()
    sys_all, base_all = [], []
    for path in args.reports:
        s, b = clean_pairs(path, args.system, args.baseline, args.judge, args.metric)
        sys_all += s
        base_all += b
    p = paired(sys_all, base_all)
    d = p.delta
    what = "clean pairs" if args.metric == "judge" else "pairs, chrF"
    print(f"{len(args.reports)} reports, {p.n} {what}: {args.system} - {args.baseline} {d.mean:+.3f} "
          f"[{d.low:+.3f}, {d.high:+.3f}], {p.wins}-{p.ties}-{p.losses}, win rate {p.win_rate:.0%}")


if __name__ == "__main__":
    main()
