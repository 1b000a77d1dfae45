"""What a forward pass costs against the length of the cache behind it, and the prompt's own pass.

Why: the answered keyword examples make the prompt 134 tokens instead of 48, and every candidate
row of the refiner's batched passes carries it in its cache. This measures how much that costs a
pass of the shapes the scorer feeds (16 rows x 1 token, 16 x 4, 4 x 4, 1 x 8) at 50-200 cached
positions, and a batch-1 prefill of 48 and 134 tokens.

    python benchmarks/probes/pass_cost.py models/smollm2-135m
"""
import sys
import time

import numpy as np

import ortrefine

lm = ortrefine.load(sys.argv[1], provider="cpu")
for L in (50, 100, 150, 200):
    head = lm.forward(np.full((1, L), 100, dtype=np.int64))
    for N, S in ((16, 1), (16, 4), (4, 4), (1, 8)):
        kv = head.kv.repeat(N)
        tok, mask = np.full((N, S), 200, dtype=np.int64), np.ones((N, L + S), dtype=np.int64)
        for _ in range(2):
            lm.forward(tok, kv, mask)
        t = time.perf_counter()
        for _ in range(8):
            lm.forward(tok, kv, mask)
        print(f"cache {L:3d}, {N:2d} rows x {S} tokens: {(time.perf_counter() - t) / 8 * 1000:.1f} ms")
for L in (48, 134):
    ids = list(range(100, 100 + L))
    for _ in range(2):
        lm.prefill(ids, keep_last=1)
    t = time.perf_counter()
    for _ in range(10):
        lm.prefill(ids, keep_last=1)
    print(f"prefill of {L} tokens: {(time.perf_counter() - t) / 10 * 1000:.1f} ms")
