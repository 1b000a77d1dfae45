"""Does a bundle give the same log-probs whichever pass computes them? The refiner ranks
candidates by batched, cache-extending passes and accepts an edit only on a fresh full pass
(`build_state`), so a bundle whose passes disagree ranks its candidates with noise.

For each prompt, the bundle's own greedy output is scored four ways: one full pass (`score`,
one row), the same in a batch with other rows, a left-padded batch (`score_many`), and the
incremental decode that produced it (`generate`'s token log-probs). fp32 scores every token the
same way too, as the reference.

    python benchmarks/probes/int4_paths.py [BUNDLE ...]   # default: fp32 and the GGUF-block int4 bundle
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

import ortrefine

PROMPTS = Path(__file__).resolve().parents[1] / "eval" / "commongen-continue-heldout" / "prompts.jsonl"
FP32 = "models/smollm2-135m"


def main() -> None:
    bundles = sys.argv[1:] or [FP32, "models/smollm2-135m-int4-gguf-exact"]
    prompts = [json.loads(line)["prompt"] for line in PROMPTS.read_text().splitlines() if line.strip()][:12]
    fp = ortrefine.load(FP32, provider="cpu")
    for b in bundles:
        lm = ortrefine.load(b, provider="cpu")
        outs = [lm.generate(p, max_new_tokens=32) for p in prompts]
        d = {"batch": [], "left-padded": [], "incremental": [], "full vs fp32": [], "incremental vs fp32": []}
        for k, (p, g) in enumerate(zip(prompts, outs)):
            pid, y = list(g.prompt_ids), list(g.ids)
            others = [list(o.ids) for j, o in enumerate(outs) if j != k][:3]
            alone = np.asarray(lm.score(pid, [y]).token_logprobs[0], dtype=np.float64)
            batch = np.asarray(lm.score(pid, [y] + others).token_logprobs[0], dtype=np.float64)
            other_p = [list(o.prompt_ids) for j, o in enumerate(outs) if j != k][:3]
            padded = np.asarray(lm.score_many([pid + y] + [a + b_ for a, b_ in zip(other_p, others)],
                                              [len(pid)] + [len(a) for a in other_p])[0], dtype=np.float64)
            inc = np.asarray(g.token_logprobs, dtype=np.float64)
            ref = np.asarray(fp.score(pid, [y]).token_logprobs[0], dtype=np.float64)
            for key, v in (("batch", batch), ("left-padded", padded), ("incremental", inc)):
                d[key].append(np.abs(v - alone))
            d["full vs fp32"].append(np.abs(alone - ref))
            d["incremental vs fp32"].append(np.abs(inc - ref))
        print(f"{b}: |Δ log p| per token against its own full pass (mean / max), and against fp32's full pass")
        for key, parts in d.items():
            v = np.concatenate(parts)
            print(f"  {key:>20}: {v.mean():.2e} / {v.max():.2e}")


if __name__ == "__main__":
    main()
