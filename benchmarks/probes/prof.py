"""ORT per-node profile of a 64-token greedy decode: time per op type per step.

    python benchmarks/probes/prof.py models/smollm2-135m-int4-emb
"""
import sys, json, glob, os, collections, numpy as np, onnxruntime as ort
import ortrefine
from ortrefine.runtime import session as S
path = sys.argv[1]
real = ort.InferenceSession
def patched(p, sess_options=None, providers=None, **k):
    sess_options.enable_profiling = True
    sess_options.profile_file_prefix = "/tmp/ortrefine-prof"
    return real(p, sess_options, providers=providers, **k)
ort.InferenceSession = patched
lm = ortrefine.load(path, provider="cpu")
ort.InferenceSession = real
from ortrefine.bench import decode_fixed
ids = lm.encode_prompt("The history of the printing press begins in")
r = decode_fixed(lm, ids, 64)
print("tok/s", 64 / r.seconds)
f = lm.session.end_profiling()
ev = json.load(open(f))
ops = collections.Counter(); runs = 0.0; n = 0
for e in ev:
    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
        ops[e["args"]["op_name"]] += e["dur"]
    if e.get("cat") == "Session" and e["name"] == "model_run":
        runs += e["dur"]; n += 1
tot = sum(ops.values())
print(f"model_run {runs/n/1000:.2f} ms/run over {n}; kernels {tot/n/1000:.2f} ms/run")
for k, v in ops.most_common(14): print(f"  {k:36s} {v/n/1000:.3f} ms  {100*v/tot:.1f}%")
os.remove(f)
