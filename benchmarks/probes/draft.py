"""Regenerate sweep time vs `draft` (0/4/8/16), |Y| 32, k 8, dev-01/03/04, 2 rounds.

    python benchmarks/probes/draft.py models/smollm2-135m
"""
import sys, json, numpy as np
import ortrefine
from ortrefine.runtime.refine import RefineConfig, refine
prompts = {json.loads(l)["id"]: json.loads(l) for l in open("data/prompts-dev.jsonl")}
lm = ortrefine.load(sys.argv[1], provider="cpu")
res = {}
for rep in range(2):
    for pid in ["dev-01", "dev-03", "dev-04"]:
        for d in [0, 4, 8, 16]:
            cfg = RefineConfig(mode="regenerate", top_k=8, sweeps=1, max_new_tokens=32, draft=d)
            r = refine(lm, prompts[pid]["prompt"], cfg)
            res.setdefault(d, []).append((r.cost.seconds - r.cost.initial_seconds, r.cost.forward_tokens, r.cost.passes, round(r.gain, 3)))
for d, v in sorted(res.items()):
    print("draft", d, "median s", round(float(np.median([x[0] for x in v])), 2), "tokens", [x[1] for x in v[:3]], "passes", [x[2] for x in v[:3]], "gain", [x[3] for x in v[:3]])
