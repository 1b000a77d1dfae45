"""Keyword refinement with the prompt's pass shared by Y⁰'s decode and the search (the default)
against the same run with it forgotten after the decode (run twice, as before be7f0a4), paired
per prompt in one process, the order alternating between two rounds. Outputs are the same.

    python benchmarks/probes/shared_prompt_pass.py models/smollm2-135m benchmarks/eval/commongen-guide-heldout/prompts.jsonl
"""
import json
import sys
import time

import numpy as np

import ortrefine
from ortrefine.runtime.refine import RefineConfig, loop, refine

lm = ortrefine.load(sys.argv[1], provider="cpu")
items = [json.loads(line) for line in open(sys.argv[2])]
shared_start = loop._Refiner.start


def start_forgetting(self, prompt_ids):
    self._head = None
    return shared_start(self, prompt_ids)


seconds, texts = {"shared": [], "twice": []}, {"shared": [], "twice": []}
for rnd in range(2):
    for it in items:
        for mode in (("shared", "twice") if rnd == 0 else ("twice", "shared")):
            loop._Refiner.start = shared_start if mode == "shared" else start_forgetting
            cfg = RefineConfig(chat=True, keywords=tuple(it["keywords"]), max_new_tokens=32)
            t = time.perf_counter()
            texts[mode].append(refine(lm, it["prompt"], cfg).final.text)
            seconds[mode].append(time.perf_counter() - t)
a, b = np.array(seconds["shared"]), np.array(seconds["twice"])
print(f"shared {a.mean():.3f} s, run twice {b.mean():.3f} s per prompt; paired difference {np.mean(b - a) * 1000:.0f} ms "
      f"({1 - a.sum() / b.sum():.1%}); same texts {sum(x == y for x, y in zip(texts['shared'], texts['twice']))}/{len(a)}")
