"""Nulls for "int4 keeps less of the judged gain": fp32 with a perturbation as large as int4's
error, the same on every pass or (--path-sigma) differing between passes as int4's does.
Refinement's path through its edits is chaotic (from the same greedy start, int4 and fp32 end on
the same text 13 times in 139, benchmarks/eval/int4-crossed/), so one bundle's judged gain is
one draw. If fp32 + noise loses as much as int4 does, int4's loss
is a perturbation of that size; if only the disagreeing noise does, it is the disagreement; if
only the noise drawn per state (--context-sigma) does, it is error that is new in every context.

The noise is a fixed N(0, sigma) vector over the vocabulary per *input* token, added to the
logits that token's position produces: a function of the sequence, identical in full passes,
batched passes and decode steps (decoding is routed through `LM.forward` so no pass escapes it).

    python benchmarks/probes/noisy_fp32.py --calibrate                 # |Δ log p| against fp32, per sigma
    python benchmarks/probes/noisy_fp32.py --sigma S [--path-sigma T] [--context-sigma C] --prompts P --judge models/gemma3-270m --out F.jsonl
    python benchmarks/probes/noisy_fp32.py --summary F.jsonl R.json [G.jsonl S.json ...]
        # against fp32's stored run of the same prompts; several pairs: each, then pooled
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

import sys

import ortrefine
from ortrefine.runtime.steppers import PlainSteps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import mean_ci as ci  # noqa: E402

FP32 = "models/smollm2-135m"
MAX_NEW = 32


def noisy(lm, sigma: float, seed: int = 0, path_sigma: float = 0.0, context_sigma: float = 0.0):
    """`lm` with the fixed per-input-token logit noise on every forward pass. path_sigma > 0 adds
    a second fixed noise that differs between one-token passes (decode steps, the scorer's
    per-token extensions) and longer ones (full passes, prefills): passes that disagree, as
    int4's do, at a size of one's choosing. context_sigma > 0 adds a noise drawn afresh for every
    *state*: seeded by the position's own logits (64 of them, rounded), so it is the same in every
    pass that reaches that state and unrelated between states that differ anywhere before it, as
    rounding the activations to int8 is (a low-rank draw, 32 normals through a fixed matrix)."""
    cache: dict[tuple[int, int], np.ndarray] = {}
    vocab = None
    forward = lm.forward
    basis: list[np.ndarray] = []

    def by_state(logits: np.ndarray) -> np.ndarray:
        flat = logits.reshape(-1, logits.shape[-1])
        if not basis:
            basis.append((np.random.default_rng((seed, 7)).standard_normal((32, flat.shape[1])) / np.sqrt(32)).astype(np.float32))
        keys = np.round(flat[:, :64], 2)
        z = np.stack([np.random.default_rng(int.from_bytes(hashlib.blake2b(k.tobytes(), digest_size=8).digest(), "little")).standard_normal(32) for k in keys])
        return (context_sigma * z.astype(np.float32) @ basis[0]).reshape(logits.shape)

    def row(tok: int, kind: int) -> np.ndarray:
        if (tok, kind) not in cache:
            rng = np.random.default_rng((seed, tok))
            v = sigma * rng.standard_normal(vocab)
            if path_sigma:
                v += path_sigma * np.random.default_rng((seed, tok, 1 + kind)).standard_normal(vocab)
            cache[(tok, kind)] = v.astype(np.float32)
        return cache[(tok, kind)]

    def noisy_forward(input_ids, past=None, attention_mask=None, keep_last=None):
        nonlocal vocab
        out = forward(input_ids, past, attention_mask, keep_last)
        vocab = out.logits.shape[-1]
        ids = np.asarray(input_ids)[:, -out.logits.shape[1]:]
        kind = int(np.asarray(input_ids).shape[1] == 1)
        clean = out.logits
        out.logits = clean + np.stack([np.stack([row(int(t), kind) for t in r]) for r in ids])
        if context_sigma:
            out.logits = out.logits + by_state(clean)
        return out

    lm.forward = noisy_forward
    lm.steps = lambda kv, new_tokens: PlainSteps(lm, kv)
    return lm


def _prompts(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def calibrate(prompts: list[dict]) -> None:
    fp = ortrefine.load(FP32, provider="cpu")
    texts = [fp.generate(p["prompt"], max_new_tokens=MAX_NEW) for p in prompts[:12]]
    for sigma, path_sigma, context_sigma in ((0.05, 0, 0), (0.1, 0, 0), (0.2, 0, 0), (0.07, 0.05, 0), (0.07, 0.06, 0),
                                             (0, 0, 0.02), (0, 0, 0.04), (0, 0, 0.08)):
        lm = noisy(ortrefine.load(FP32, provider="cpu"), sigma, path_sigma=path_sigma, context_sigma=context_sigma)
        full = [np.asarray(lm.score(g.prompt_ids, [g.ids]).token_logprobs[0], dtype=np.float64) for g in texts]
        d = [np.abs(f - np.asarray(g.token_logprobs, dtype=np.float64)) for f, g in zip(full, texts)]
        own = [lm.generate(g.prompt_ids, max_new_tokens=MAX_NEW) for g in texts]  # its own greedy, by decode steps
        between = [np.abs(np.asarray(lm.score(o.prompt_ids, [o.ids]).token_logprobs[0], dtype=np.float64)
                          - np.asarray(o.token_logprobs, dtype=np.float64)) for o in own]
        print(f"sigma {sigma}, path_sigma {path_sigma}, context_sigma {context_sigma}: mean |Δ log p| per token, full pass against fp32 "
              f"{np.concatenate(d).mean():.4f}; decode steps against full pass {np.concatenate(between).mean():.4f}")


def run(args) -> None:
    from ortrefine.evaluate.judge import judge_context, judge_texts
    from ortrefine.evaluate.metrics import text_report
    from ortrefine.runtime.refine import RefineConfig, refine

    lm = noisy(ortrefine.load(FP32, provider="cpu"), args.sigma or 0.0, path_sigma=args.path_sigma, context_sigma=args.context_sigma)
    judge = ortrefine.load(args.judge, provider="cpu")
    out = Path(args.out)
    done = {json.loads(line)["id"] for line in out.read_text().splitlines()} if out.exists() else set()
    for p in _prompts(args.prompts):
        if p["id"] in done:
            continue
        r = refine(lm, p["prompt"], RefineConfig(max_new_tokens=MAX_NEW))
        texts = {"gN": r.initial.text, "nN": r.final.text}
        scores = judge_texts(judge, judge_context(p["prompt"], False), list(texts.values()))
        row = {"id": p["id"], "sigma": args.sigma or 0.0, "path_sigma": args.path_sigma, "context_sigma": args.context_sigma, "texts": texts, "judge": {k: s.mean for k, s in zip(texts, scores)},
               "degenerate": {k: text_report(t, p["prompt"]).degenerate for k, t in texts.items()}}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(p["id"], row["judge"], flush=True)


def summary(pairs: list[tuple[str, str]]) -> None:
    """Each (noise run, fp32 report) pair's gains on the prompts where all four outputs are
    clean, then all pairs pooled."""
    pooled_f: list[float] = []
    pooled_n: list[float] = []
    for path, fp32_report in pairs:
        rows = {r["id"]: r for r in (json.loads(line) for line in Path(path).read_text().splitlines() if line.strip())}
        rep = json.loads(Path(fp32_report).read_text())
        judge = rep["meta"]["judges"][0]["name"]
        fp = {(o["id"], "g" if o["system"] == "greedy" else "f"): o for o in rep["outputs"]}
        ids = [i for i in rows if not (rows[i]["degenerate"]["gN"] or rows[i]["degenerate"]["nN"]
                                       or fp[(i, "g")]["degenerate"] or fp[(i, "f")]["degenerate"])]
        gain_f = [fp[(i, "f")]["judges"][judge]["mean"] - fp[(i, "g")]["judges"][judge]["mean"] for i in ids]
        gain_n = [rows[i]["judge"]["nN"] - rows[i]["judge"]["gN"] for i in ids]
        first = next(iter(rows.values()))
        print(f"{path}: {len(rows)} prompts, {len(ids)} with all four outputs clean; sigma {first['sigma']}, "
              f"path_sigma {first.get('path_sigma', 0.0)}, context_sigma {first.get('context_sigma', 0.0)}")
        _gains(gain_f, gain_n)
        print(f"  same greedy as fp32: {sum(rows[i]['texts']['gN'] == fp[(i, 'g')]['text'] for i in rows)}/{len(rows)}, "
              f"same refined: {sum(rows[i]['texts']['nN'] == fp[(i, 'f')]['text'] for i in rows)}/{len(rows)}; degenerate "
              f"greedy {sum(r['degenerate']['gN'] for r in rows.values())}, refined {sum(r['degenerate']['nN'] for r in rows.values())}")
        pooled_f += gain_f
        pooled_n += gain_n
    if len(pairs) > 1:
        print(f"pooled: {len(pooled_f)} prompts with all four outputs clean")
        _gains(pooled_f, pooled_n)


def _gains(gain_f: list[float], gain_n: list[float]) -> None:
    print(f"  fp32 gain {ci(gain_f)}; fp32+noise gain {ci(gain_n)} ({100 * np.mean(gain_n) / np.mean(gain_f):.0f} %); "
          f"margin for 80 %: {ci(np.asarray(gain_n) - 0.8 * np.asarray(gain_f))}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--sigma", type=float)
    ap.add_argument("--path-sigma", type=float, default=0.0)
    ap.add_argument("--context-sigma", type=float, default=0.0)
    ap.add_argument("--prompts", default="benchmarks/eval/commongen-continue-heldout/prompts.jsonl")
    ap.add_argument("--judge", default="models/gemma3-270m")
    ap.add_argument("--out")
    ap.add_argument("--summary", nargs="+", metavar="RUN REPORT", help="pairs: a noise run's JSONL, fp32's report.json of its prompts")
    args = ap.parse_args()
    if args.calibrate:
        calibrate(_prompts(args.prompts))
    elif args.summary:
        if len(args.summary) % 2:
            ap.error("--summary takes pairs: RUN.jsonl REPORT.json [RUN.jsonl REPORT.json ...]")
        summary(list(zip(args.summary[::2], args.summary[1::2])))
    else:
        run(args)


if __name__ == "__main__":
    main()
