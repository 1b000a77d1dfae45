"""Keep/regenerate sweep time vs `chunk` and `positions_per_batch` (fp32 SmolLM2, dev-01/03/04, 2 rounds).

    python benchmarks/probes/chunk.py   # from the repository root; prints medians, appends nothing
"""
import sys, json, time, numpy as np
sys.path.insert(0, "benchmarks")
import ortrefine
from ortrefine.runtime.refine import RefineConfig, refine
prompts = {json.loads(l)["id"]: json.loads(l) for l in open("data/prompts-dev.jsonl")}
lm = ortrefine.load("models/smollm2-135m", provider="cpu")
res = {}
for rep in range(2):
    for pid in ["dev-01", "dev-03", "dev-04"]:
        for mode in ["keep", "regenerate"]:
            for c in ([1, 2, 4, 8] if mode == "keep" else [0]):
                for ppb in [4, 8, 16]:
                    cfg = RefineConfig(mode=mode, top_k=8, sweeps=1, max_new_tokens=32, chunk=max(c,1), positions_per_batch=ppb)
                    r = refine(lm, prompts[pid]["prompt"], cfg)
                    s = r.cost.seconds - r.cost.initial_seconds
                    res.setdefault((mode, c, ppb), []).append((pid, s, r.cost.forward_tokens, round(r.gain, 3)))
for k, v in sorted(res.items()):
    secs = [x[1] for x in v]; toks = [x[2] for x in v]
    print(k, "median s", round(float(np.median(secs)), 2), "max", round(max(secs), 2), "tokens", sorted(set(toks)), [x[3] for x in v[:3]])
