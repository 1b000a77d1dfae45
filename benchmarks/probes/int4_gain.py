"""Why the int4 bundle keeps less of refinement's judged gain than fp32: the start or the scorer?

Takes an fp32 and an int4 `ortrefine eval` report of the same prompts (systems greedy + the
default refine). fp32's texts are taken from its report; int4's greedy and refine are run again
(a stored int4 run may come from an earlier quantization) and, per prompt, two crossed
refinements are added:
  - fp32 refining int4's greedy output (`RefineConfig(initial=...)`): fp32's scorer, int4's start;
  - int4 refining fp32's greedy output: int4's scorer, fp32's start.
With the two stored runs that is a 2×2 of start × scorer, each judged by the same judge and
flagged by the same checks as `ortrefine eval`. It also scores the four stored texts under both
bundles' default J, to see whether the edits int4 accepts raise fp32's J too.

    python benchmarks/probes/int4_gain.py --full A/report.json --quant B/report.json \
        --fp models/smollm2-135m --q models/smollm2-135m-int4-gguf-exact --judge models/gemma3-270m --out F.jsonl

Writes one JSON line per prompt (resumable: prompts already in --out are skipped).
`python benchmarks/probes/int4_gain.py --summary F.jsonl [G.jsonl ...]` prints the tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import ortrefine
from ortrefine.evaluate.judge import judge_context, judge_texts
from ortrefine.evaluate.metrics import text_report
from ortrefine.runtime.refine import RefineConfig, evaluate_objective, refine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import mean_ci as ci  # noqa: E402

MAX_NEW = 32


def _outputs(path: str) -> tuple[dict[str, dict], dict[str, dict]]:
    """(greedy, refine) outputs of a report, by prompt id; the refine system is the non-greedy one."""
    rep = json.loads(Path(path).read_text())
    greedy = {o["id"]: o for o in rep["outputs"] if o["system"] == "greedy"}
    refined = {o["id"]: o for o in rep["outputs"] if o["system"].startswith("refine")}
    return greedy, refined


def _j(lm, prompt: str, text: str, initial_len: int) -> float:
    ids = lm.tokenizer.encode_plain(text)
    return float(evaluate_objective(lm, prompt, ids, RefineConfig(max_new_tokens=MAX_NEW), initial_len=initial_len)["total"])


def main() -> None:
    ap = argparse.ArgumentParser()
    for a in ("--full", "--quant", "--fp", "--q", "--judge", "--out"):
        ap.add_argument(a, required=True)
    ap.add_argument("--limit", type=int, default=None)
    if sys.argv[1:2] == ["--summary"]:
        print(summarize(sys.argv[2:]))
        return
    args = ap.parse_args()
    fg, fr = _outputs(args.full)
    qg, qr = _outputs(args.quant)
    out = Path(args.out)
    done = {json.loads(line)["id"] for line in out.read_text().splitlines()} if out.exists() else set()
    fp, q, judge = (ortrefine.load(b, provider="cpu") for b in (args.fp, args.q, args.judge))
    prompts = _prompts(args.full)
    ids = sorted(fg)[: args.limit]
    for i in ids:
        if i in done:
            continue
        if i not in prompts:
            raise SystemExit(f"no prompt {i} in the prompts file next to {args.full}")
        prompt = prompts[i]
        r_qq = refine(q, prompt, RefineConfig(max_new_tokens=MAX_NEW))  # the stored int4 run may come from another bundle
        texts = {"fF": fr[i]["text"], "gF": fg[i]["text"], "gQ": r_qq.initial.text, "qQ": r_qq.final.text}
        r_fq = refine(fp, prompt, RefineConfig(max_new_tokens=MAX_NEW, initial=texts["gQ"]))
        r_qf = refine(q, prompt, RefineConfig(max_new_tokens=MAX_NEW, initial=texts["gF"]))
        texts["fQ"], texts["qF"] = r_fq.final.text, r_qf.final.text  # scorer, then start
        len0 = {k: len(fp.tokenizer.encode_plain(texts["g" + k[-1]])) for k in texts}
        row = {"id": i, "prompt": prompt, "texts": texts,
               "stored_int4_same": {"gQ": texts["gQ"] == qg[i]["text"], "qQ": texts["qQ"] == qr[i]["text"]},
               "J_fp": {k: _j(fp, prompt, t, len0[k]) for k, t in texts.items()},
               "J_q": {k: _j(q, prompt, t, len0[k]) for k, t in texts.items()}}
        names = list(texts)
        scores = judge_texts(judge, judge_context(prompt, False), [texts[k] for k in names])
        row["judge"] = {k: s.mean for k, s in zip(names, scores)}
        row["degenerate"] = {k: text_report(texts[k], prompt, hit_cap=False).degenerate for k in names}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(i, {k: round(v, 3) if v is not None else None for k, v in row["judge"].items()}, flush=True)


def _prompts(report: str) -> dict[str, str]:
    """Prompt texts by id: eval reports do not store them, so they are read from the prompts file
    next to the report's parent folder."""
    lines = (Path(report).resolve().parent.parent / "prompts.jsonl").read_text().splitlines()
    return {d["id"]: d["prompt"] for d in (json.loads(line) for line in lines if line.strip())}


def summarize(paths: list[str]) -> str:
    """The 2×2 of judged gains (start × scorer) and the cross-scored J gains, as markdown.

    Each start's rows are over the prompts where its greedy output and both refinements of it are
    clean, so the fp32 and int4 scorers are compared on the same prompts and from the same text:
    the paired difference (int4's refinement − fp32's) is the scorer's effect with the start held
    fixed. J means are over the same prompts (a degenerate greedy's guard term would swamp them)."""
    rows = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]

    def clean(start: str) -> list[dict]:
        return [r for r in rows if not any(r["degenerate"][k + start] for k in "gfq")]

    out = [f"{len(rows)} prompts", "",
           "| start (greedy of) | scorer | clean prompts | judge Δ vs that greedy | fp32 J Δ (nats) | int4 J Δ (nats) | "
           "same text as fp32's refinement |", "|---|---|---|---|---|---|---|"]
    for start in "FQ":
        rs = clean(start)
        for scorer in "fq":
            k, g = scorer + start, "g" + start
            same = sum(r["texts"][k] == r["texts"]["f" + start] for r in rs)
            out.append(f"| {_name(start)} | {_name(scorer)} | {len(rs)} | {ci([r['judge'][k] - r['judge'][g] for r in rs])} | "
                       f"{ci([r['J_fp'][k] - r['J_fp'][g] for r in rs])} | {ci([r['J_q'][k] - r['J_q'][g] for r in rs])} | "
                       f"{same}/{len(rs)} |")
    out.append("")
    pooled = []
    for start in "FQ":
        rs = clean(start)
        diff = [r["judge"]["q" + start] - r["judge"]["f" + start] for r in rs]
        pooled += diff
        out.append(f"- from {_name(start)}'s greedy: judge, int4's refinement − fp32's {ci(diff)}; fp32's J of int4's choice "
                   f"minus its own {ci([r['J_fp']['q' + start] - r['J_fp']['f' + start] for r in rs])}; int4's J of fp32's "
                   f"choice minus its own {ci([r['J_q']['f' + start] - r['J_q']['q' + start] for r in rs])}")
    out.append(f"- both starts pooled: judge, int4's refinement − fp32's {ci(pooled)} (n {len(pooled)})")
    both_g = [r for r in rows if not (r["degenerate"]["gQ"] or r["degenerate"]["gF"])]
    both_r = [r for r in rows if not (r["degenerate"]["qQ"] or r["degenerate"]["fF"])]
    out.append(f"- judge, int4's greedy − fp32's {ci([r['judge']['gQ'] - r['judge']['gF'] for r in both_g])} (n {len(both_g)}); "
               f"int4's refinement of its greedy − fp32's of its own {ci([r['judge']['qQ'] - r['judge']['fF'] for r in both_r])} "
               f"(n {len(both_r)})")
    excess = lambda r, k: r["J_q"][k] - r["J_fp"][k]  # noqa: E731 - how much int4 overrates a text against fp32
    out.append("- int4's J − fp32's J of the texts int4 chose, minus the same of the texts fp32 chose, from the same start: "
               + "; ".join(f"{_name(s)} {ci([excess(r, 'q' + s) - excess(r, 'f' + s) for r in rows])}" for s in "FQ"))
    degen = {k: sum(r["degenerate"][k] for r in rows) for k in rows[0]["texts"]} if rows else {}
    out += ["- degenerate outputs: " + ", ".join(f"{k} {v}" for k, v in degen.items()),
            f"- int4 greedy = fp32 greedy: {sum(r['texts']['gQ'] == r['texts']['gF'] for r in rows)}/{len(rows)}; "
            f"stored int4 greedy reproduced: {sum(r.get('stored_int4_same', {}).get('gQ', False) for r in rows)}/{len(rows)}, "
            f"refine: {sum(r.get('stored_int4_same', {}).get('qQ', False) for r in rows)}/{len(rows)}"]
    return "\n".join(out)


def _name(key: str) -> str:
    return "fp32" if key in "Ff" else "int4"


if __name__ == "__main__":
    main()
