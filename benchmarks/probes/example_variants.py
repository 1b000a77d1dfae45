"""Other pairs of answered keyword examples, against the default pair, on a keyword prompt set:
every concept in a real sentence, chrF against the references, time, and the answers' first
words (the default's answers nearly all open with the second example's "She"). Texts go to
/tmp/exv/NAME-N.json for reading side by side.

    python benchmarks/probes/example_variants.py benchmarks/eval/commongen-4to5-default-j/prompts.jsonl default children+bakes
"""
import collections
import json
import os
import sys
import time

from ortrefine.runtime.session import load
from ortrefine.runtime.refine import RefineConfig, refine
from ortrefine.runtime.examples import KEYWORD_EXAMPLES as K
from ortrefine.evaluate.metrics import text_report
os.makedirs("/tmp/exv", exist_ok=True)
lm = load("models/smollm2-135m")
items = [json.loads(l) for l in open(sys.argv[1])]
ALT = ("Write one sentence that uses all of these words: grandmother, letter, mail, write.",
       "Her grandmother smiled when the long letter she had written arrived in the mail.")
variants = {"default": (K[0], K[1]), "children+bakes": (K[0], K[2]), "she+children": (K[1], K[0]), "children+her-grandmother": (K[0], ALT)}
for name in sys.argv[2:]:
    ex = variants[name]; ok = 0; ch = 0; first = collections.Counter(); t = 0; texts = []
    for it in items:
        cfg = RefineConfig(chat=True, keywords=tuple(it["keywords"]), max_new_tokens=32)
        cfg.example_turns = ex  # in place of what examples=None resolved to: the probe only
        s = time.perf_counter(); r = refine(lm, it["prompt"], cfg); t += time.perf_counter() - s
        rep = text_report(r.final.text, it["prompt"], keywords=it["keywords"], references=it.get("references", ()))
        ok += bool(rep.real_sentence); ch += rep.chrf; first[r.final.text.split()[0]] += 1; texts.append(r.final.text.strip())
    print(f"{name}: real sentence {ok}/{len(items)}, chrF {ch/len(items):.1f}, {t/len(items):.2f} s, openings {first.most_common(5)}", flush=True)
    json.dump(texts, open(f"/tmp/exv/{name}-{len(items)}.json", "w"))
