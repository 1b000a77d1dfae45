"""Batched candidate scoring, with and without reuse of a shared prefix's KV cache, vs the matmul peak.

For each bundle (fp32, int8, int4): --batch candidates that share a --prefix-token prefix and
differ in --suffix new tokens, scored
- plain: one (batch, prefix + suffix) pass with no past;
- prefix reuse: one (1, prefix) pass, its KV repeated to the batch, one (batch, suffix) pass;
both as bare forward passes (`ortrefine.bench.scoring_once`: what the graph costs) and
through the scoring API with log-prob gathering (`LM.score_many` vs `LM.score`: what a caller
gets). "Scored tok/s" is batch × (prefix + suffix) over the time taken, both ways, so the reuse
speed-up is a ratio of times; its token-count ceiling is (prefix + suffix) / suffix.

This CPU's fp32 matmul peak is measured in the same run, between the bundles: numpy sgemm
(OpenBLAS) and a one-node ONNX Runtime MatMul graph (MLAS, built with onnx.helper), square
2048 and the model's MLP shape (batch·(prefix+suffix) × 576 × 1536); the best of them is the
peak. Scoring FLOP/s ≈ 2 × parameters per scored token (attention FLOPs, small at 48 positions,
left out).

    python benchmarks/bench_scoring.py [--reps 3] [--bundles smollm2-135m smollm2-135m-int4] [--no-append]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from common import bundle, goals_section, markdown_table, median, publish, Run, spread, verdict

import ortrefine
from ortrefine.bench import ScoringRun, scoring_ids, scoring_once, weight_bytes

BUNDLES = ["smollm2-135m", "smollm2-135m-int8", "smollm2-135m-int4"]


def numpy_gemm(m: int, k: int, n: int, reps: int = 3) -> float:
    """Best fp32 GFLOP/s of numpy's matmul (m, k) @ (k, n)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * m * k * n / best / 1e9


def ort_matmul_session(k: int, n: int, threads: int | None):
    """A one-node MatMul graph: input A (M, k) float32, weight B (k, n) an initializer."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(1).standard_normal((k, n), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["Y"])], "matmul",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        [numpy_helper.from_array(w, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def ort_gemm(sess, m: int, k: int, n: int, reps: int = 3) -> float:
    a = np.random.default_rng(2).standard_normal((m, k), dtype=np.float32)
    sess.run(None, {"A": a})
    best = min(_timed(lambda: sess.run(None, {"A": a})) for _ in range(reps))
    return 2 * m * k * n / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def api_once(lm, shared: np.ndarray, suffixes: np.ndarray) -> tuple[float, float]:
    """Seconds of `score_many` (full sequences, no past) and of `score` (prefix pass + batched suffix)."""
    seqs = [list(shared) + list(s) for s in suffixes]
    t0 = time.perf_counter()
    lm.score_many(seqs, [len(shared)] * len(seqs))
    t1 = time.perf_counter()
    lm.score(list(shared), suffixes.tolist())
    return t1 - t0, time.perf_counter() - t1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundles", nargs="*", default=BUNDLES)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prefix", type=int, default=32)
    ap.add_argument("--suffix", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    run = Run("bench_scoring", f"ORT intra-op {args.threads or 'default (all cores)'}; numpy/OpenBLAS default")

    lms = [ortrefine.load(bundle(b), provider="cpu", threads=args.threads) for b in args.bundles]
    fp32 = next((lm for lm in lms if lm.bundle.precision == "fp32"), None)
    params = weight_bytes((fp32 or lms[0]).bundle.model_file) / 4  # fp32 initializers ≈ parameters (tied lm_head counted once)
    flop_per_token = 2 * params
    shared, suffixes = scoring_ids(lms[0], args.batch, args.prefix, args.suffix)
    m = args.batch * (args.prefix + args.suffix)
    shapes = {"square 2048": (2048, 2048, 2048), f"model MLP {m}×576×1536": (m, 576, 1536)}
    sessions = {name: ort_matmul_session(k, n, args.threads) for name, (_, k, n) in shapes.items()}
    peaks: dict[str, list[float]] = {f"{lib} {name}": [] for lib in ("numpy", "ORT MatMul") for name in shapes}

    def measure_peaks() -> None:
        for name, (mm, k, n) in shapes.items():
            peaks[f"numpy {name}"].append(numpy_gemm(mm, k, n))
            peaks[f"ORT MatMul {name}"].append(ort_gemm(sessions[name], mm, k, n))

    runs: dict[str, list[ScoringRun]] = {lm.bundle.path.name: [] for lm in lms}
    api: dict[str, list[tuple[float, float]]] = {lm.bundle.path.name: [] for lm in lms}
    for lm in lms:  # warm-up
        scoring_once(lm, shared, suffixes)
        api_once(lm, shared, suffixes)
    measure_peaks()
    for r in range(args.reps):
        order = lms[r % len(lms):] + lms[: r % len(lms)]
        for lm in order:
            runs[lm.bundle.path.name].append(scoring_once(lm, shared, suffixes))
            api[lm.bundle.path.name].append(api_once(lm, shared, suffixes))
        measure_peaks()
        print(f"[round {r + 1}/{args.reps}] " + ", ".join(f"{k} {v[-1].plain_tps:.0f}/{v[-1].reuse_tps:.0f} tok/s" for k, v in runs.items()),
              file=sys.stderr)

    peak_name, peak_vals = max(peaks.items(), key=lambda kv: median(kv[1]))
    peak = median(peak_vals)
    ceiling = (args.prefix + args.suffix) / args.suffix
    rows, goals = [], []
    for lm in lms:
        name, rs = lm.bundle.path.name, runs[lm.bundle.path.name]
        plain = [x.plain_tps for x in rs]
        speedup = median([x.plain_seconds / x.reuse_seconds for x in rs])
        api_plain = [m / a[0] for a in api[name]]
        api_reuse = [m / a[1] for a in api[name]]
        api_speedup = median([a[0] / a[1] for a in api[name]])
        gflops = median(plain) * flop_per_token / 1e9
        rows.append([name, lm.bundle.precision, spread(plain, "{:.0f}"), spread([x.reuse_tps for x in rs], "{:.0f}"),
                     f"{speedup:.2f}× ({speedup / ceiling:.0%})", f"{gflops:.1f}", f"{gflops / peak:.0%}",
                     spread(api_plain, "{:.0f}"), spread(api_reuse, "{:.0f}"), f"{api_speedup:.2f}×",
                     f"{max(x.max_abs_diff for x in rs):.2g}"])
        if lm.bundle.precision == "fp32":
            goals.append(["fp32 plain scoring ≥ 80% of the fp32 matmul peak", f"{gflops:.1f} / {peak:.1f} GFLOP/s",
                          f"{gflops / peak:.0%}", verdict(gflops / peak, 0.80)])
        goals.append([f"{lm.bundle.precision}: prefix reuse within 15% of its ceiling {ceiling:.2f}× (≥ {0.85 * ceiling:.2f}×)",
                      "bare forward passes", f"{speedup:.2f}×", verdict(speedup, 0.85 * ceiling)])
        goals.append([f"{lm.bundle.precision}: same, through the scoring API", "`score` vs `score_many`", f"{api_speedup:.2f}×",
                      verdict(api_speedup, 0.85 * ceiling)])
    peak_rows = [[k, spread(v)] for k, v in peaks.items()]
    text = "\n".join([
        f"{args.batch} candidates × ({args.prefix} shared + {args.suffix} new) tokens; medians (min–max) of {args.reps} rounds after a "
        f"warm-up, bundles and GEMM measurements taking turns. Scored tok/s = {args.batch}·{args.prefix + args.suffix} tokens / time. "
        f"Reuse speed-up = plain time / reuse time; token-count ceiling ({args.prefix}+{args.suffix})/{args.suffix} = {ceiling:.2f}×. "
        f"FLOP per token ≈ 2 × {params / 1e6:.1f} M parameters = {flop_per_token / 1e6:.0f} MFLOP.",
        "",
        "fp32 matmul peak (GFLOP/s, best of 3 per measurement):",
        "",
        markdown_table(["GEMM", "GFLOP/s"], peak_rows),
        "",
        f"Peak used: {peak_name}, {peak:.1f} GFLOP/s.",
        "",
        markdown_table(["bundle", "precision", "plain tok/s", "reuse tok/s", "reuse speed-up (of ceiling)", "plain GFLOP/s",
                        "of peak", "API plain tok/s (score_many)", "API reuse tok/s (score)", "API speed-up", "max |Δlogits| reuse vs plain"],
                       rows),
        "",
        *goals_section(["goal", "compared", "figure", "verdict"], goals),
    ])
    publish("bench_scoring", text, run, append=not args.no_append)


if __name__ == "__main__":
    main()
