"""Greedy decode speed, side by side: ortrefine vs torch vs Optimum vs onnxruntime-genai.

Every contender decodes exactly --tokens greedy tokens (eos ignored) from the same ~10-token
prompt ids (from `tokenizers`), after one warm-up; then the contenders take turns for --reps
rounds (the order rotates each round) and the medians are compared. Between two contenders of a
round this machine's memory read bandwidth is measured (best of numpy max and an sgemv over a
512 MiB float32 array: `ortrefine.bench.memory_bandwidth`; until 2026-11-29 11:40 UTC it was a
numpy sum, which is compute-limited at ~25 GB/s and overstated every share by ~30 %), so the "weights read per token × tok/s" share is taken against a bandwidth
measured under the same load.

Contenders:
- ortrefine, one per bundle found (fp32, int8, int4, int4-emb, int4-head8 (`--head-bits 8`), int4-head8-b64
  (`--head-bits 8 --block-size 64`), int8-dynamic): a timed loop over
  `lm.prefill` / `lm.forward` (`ortrefine.bench.decode_fixed`: the per-token work of
  ortrefine's greedy loop without its eos/stop checks). Time to first token = prefill + argmax.
- torch: transformers `generate` on the fp32 checkpoint (dequantized from the catalog's GGUF
  via `load_source`), `min_new_tokens = max_new_tokens` so eos cannot end it; at 1 thread and at
  torch's default thread count. Time to first token from a streamer's first new-token callback.
- Optimum: `ORTModelForCausalLM.from_pretrained(<bundle folder>, use_cache=True)` on bundles of
  Optimum's own graph (fp32 and int4; `ortrefine export smollm2-135m models/smollm2-135m-optimum
  --graph optimum`, then `ortrefine quantize models/smollm2-135m-optimum --to int4`), `generate`
  as for torch, with torch held to 1 thread. ortrefine also runs those bundles ("-optimum"), so
  the fused graph's share of the gain shows in the same run.
- onnxruntime-genai: models built by its model builder (fp32, int4) in a separate venv with a
  newer transformers; a worker process in that venv loads them once and decodes on request
  (JSON over stdin/stdout), so it takes turns like the others; `min_length = max_length` keeps
  eos from ending it; fed ids from `tokenizers` (its own tokenizer mis-encodes this model).

    python benchmarks/bench_decode.py                      # everything; appends to RESULTS.md
    python benchmarks/bench_decode.py --reps 5 --no-torch --no-append
    python benchmarks/bench_decode.py --profile            # also cProfile + ORT per-op profile
    python benchmarks/bench_decode.py --variants           # also ortrefine at 1 thread / without thread spinning
    python benchmarks/bench_decode.py --pinned --hugepages # also ortrefine pinned / with its weights on huge pages

Load order matters: of several sessions built in one process, the first decoded 5–15 % slower
than later ones of the same bundle (RESULTS.md, 2026-11-29 15:40 UTC). Until 15:40 UTC that
session was ortrefine's fp32 row, and the `--pinned` rows' gains over it (1.17×, 1.25×) were mostly
that: an order-controlled A/B (benchmarks/probes/ab_decode.py) gave pinning 1.00×. Now a ballast
session of the first bundle is built first and kept, so no contender is the first.

Setting up onnxruntime-genai (once, outside the repository):
    python -m venv --system-site-packages /tmp/genai-venv
    /tmp/genai-venv/bin/pip install onnxruntime-genai "transformers>=5"
    python -c "from ortrefine.export.sources import *; m, t = load_source(resolve_source('smollm2-135m')); \
               m.save_pretrained('/tmp/smollm2-hf'); t.save_pretrained('/tmp/smollm2-hf')"
    for p in fp32 int4; do /tmp/genai-venv/bin/python -m onnxruntime_genai.models.builder \
        -i /tmp/smollm2-hf -o /tmp/genai/smollm2-$p -p $p -e cpu; done
A contender that cannot be set up is listed in the results with the reason, never dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common import MODELS, VenvWorker, goals_section, markdown_table, median, publish, Run, spread, verdict

import ortrefine
from ortrefine.bench import DECODE_PROMPT, DecodeRun, decode_fixed, memory_bandwidth, weight_bytes

BUNDLES = ["smollm2-135m", "smollm2-135m-int8", "smollm2-135m-int4", "smollm2-135m-int4-emb", "smollm2-135m-int4-head8",
           "smollm2-135m-int4-head8-b64", "smollm2-135m-int8-dynamic",
           "smollm2-135m-optimum", "smollm2-135m-optimum-int4-emb"]
# Optimum runs its own export (not ortrefine's fused graph, which it could also load)
OPTIMUM_BUNDLES = ["smollm2-135m-optimum", "smollm2-135m-optimum-int4"]
GENAI_VENV = Path("/tmp/genai-venv")
GENAI_MODELS = {"fp32": Path("/tmp/genai/smollm2-fp32"), "int4": Path("/tmp/genai/smollm2-int4")}

GENAI_WORKER = r'''
import json, sys, time
import onnxruntime_genai as og
models = {}
for line in sys.stdin:
    req = json.loads(line)
    try:
        if req["op"] == "load":
            t0 = time.perf_counter()
            models[req["name"]] = og.Model(req["path"])
            import importlib.metadata as md
            out = {"ok": True, "seconds": time.perf_counter() - t0, "version": og.__version__,
                   "ort": md.version("onnxruntime"), "transformers": md.version("transformers")}
        elif req["op"] == "decode":
            model, ids, n = models[req["name"]], req["ids"], req["n"]
            t0 = time.perf_counter()
            params = og.GeneratorParams(model)
            # capacity: a KV cache at least this long (sliding-window models need one >= their window)
            params.set_search_options(max_length=max(len(ids) + n, req.get("capacity", 0)), min_length=len(ids) + n,
                                      do_sample=False)
            gen = og.Generator(model, params)
            gen.append_tokens(ids)           # prompt pass
            gen.generate_next_token()        # first token from its logits
            ttft = time.perf_counter() - t0
            for _ in range(n - 1):
                gen.generate_next_token()    # one-token pass, then pick
            seconds = time.perf_counter() - t0
            out = {"ok": True, "ids": [int(t) for t in gen.get_sequence(0)][len(ids):len(ids) + n], "ttft": ttft, "seconds": seconds}
            del gen
        else:
            break
    except Exception as e:
        out = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out), flush=True)
'''


@dataclass
class Contender:
    """One way to decode. `runs` collects the timed decodes; `error` says why it could not run."""

    name: str
    kind: str          # ortrefine | ortrefine-variant (session options, --variants) | torch | optimum | genai
    precision: str
    weight_bytes: int = 0
    runs: list[DecodeRun] = field(default_factory=list)
    error: str | None = None
    note: str = ""

    def decode(self, ids: list[int], n: int) -> DecodeRun:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def tps(self) -> float:
        return median([r.tokens_per_second for r in self.runs]) if self.runs else float("nan")


class OrtrefineContender(Contender):
    def __init__(self, path: Path, threads: int | None, spinning: bool = True, variant: str = "", pin: bool = False,
                 hugepages: bool = False) -> None:
        import ortrefine

        self.lm = ortrefine.load(path, provider="cpu", threads=threads, pin_threads=pin, hugepages=hugepages)
        if not spinning:  # a session-option variant: swap in a session whose pool threads sleep when idle
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            if threads:
                opts.intra_op_num_threads = threads
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.lm.session = ort.InferenceSession(str(self.lm.bundle.model_file), opts, providers=["CPUExecutionProvider"])
        super().__init__(f"ortrefine {path.name}{f' ({variant})' if variant else ''}", "ortrefine-variant" if variant else "ortrefine",
                         self.lm.bundle.precision, weight_bytes(self.lm.bundle.model_file, per_token=True))

    def decode(self, ids, n):
        return decode_fixed(self.lm, ids, n)


class _FirstToken:
    """A transformers streamer that notes when the first generated token arrives."""

    def __init__(self) -> None:
        self.calls, self.at = 0, None

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2:  # call 1 is the prompt
            self.at = time.perf_counter()

    def end(self) -> None:
        pass


def hf_generate(model, ids: list[int], n: int, pad_id: int) -> DecodeRun:
    import torch

    x = torch.tensor([ids], dtype=torch.long)
    streamer = _FirstToken()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             num_beams=1, pad_token_id=pad_id, streamer=streamer)
    seconds = time.perf_counter() - t0
    new = [int(t) for t in out[0, len(ids):]]
    return DecodeRun(new, (streamer.at or t0 + seconds) - t0, seconds)


class TorchContender(Contender):
    def __init__(self, model, threads: int | None, pad_id: int) -> None:
        self.model, self.threads, self.pad_id = model, threads, pad_id
        label = "1 thread" if threads == 1 else f"default threads ({threads_default()})"
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        super().__init__(f"torch generate, {label}", "torch", "fp32", nbytes)

    def decode(self, ids, n):
        import torch

        torch.set_num_threads(self.threads or threads_default())
        try:
            return hf_generate(self.model, ids, n, self.pad_id)
        finally:
            torch.set_num_threads(1)  # the ORT contenders must not fight torch's pool
            time.sleep(0.2)  # let torch's OpenMP workers stop spinning


class OptimumContender(Contender):
    def __init__(self, path: Path, threads: int | None) -> None:
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForCausalLM

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.model = ORTModelForCausalLM.from_pretrained(path, use_cache=True, provider="CPUExecutionProvider", session_options=opts)
        import ortrefine

        self.pad_id = ortrefine.open_bundle(path).pad_id
        manifest = json.loads((path / "ortrefine.json").read_text())
        super().__init__(f"Optimum ORTModelForCausalLM {path.name}", "optimum", manifest.get("precision", "fp32"),
                         weight_bytes(path / "model.onnx", per_token=True), note="torch 1 thread, use_cache=True")

    def decode(self, ids, n):
        return hf_generate(self.model, ids, n, self.pad_id)


class GenaiWorker(VenvWorker):
    """A process in the genai venv that loads models once and decodes on request."""

    def __init__(self, venv: Path) -> None:
        super().__init__(venv, GENAI_WORKER, "genai")


class GenaiContender(Contender):
    def __init__(self, worker: GenaiWorker, precision: str, path: Path) -> None:
        if not (path / "genai_config.json").exists():
            raise RuntimeError(f"no genai model at {path} (build it with onnxruntime_genai.models.builder; see the docstring)")
        self.worker = worker
        info = worker.ask(op="load", name=precision, path=str(path))
        super().__init__(f"onnxruntime-genai {info['version']} {precision}", "genai", precision, weight_bytes(path / "model.onnx", per_token=True),
                         note=f"model builder graph; its venv: onnxruntime {info['ort']}, transformers {info['transformers']}")

    def decode(self, ids, n):
        out = self.worker.ask(op="decode", name=self.precision, ids=list(ids), n=n)
        return DecodeRun(out["ids"], out["ttft"], out["seconds"])


def threads_default() -> int:
    return os.cpu_count() or 1


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def try_setup(failed: list[Contender], name: str, kind: str, precision: str, make):
    """Build a contender; on failure record it (with the reason) instead of dropping it."""
    try:
        return make()
    except Exception as e:  # any failure of a peer library is a result to report, not a crash
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        print(f"[setup] {name} could not run: {reason}", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        failed.append(Contender(name, kind, precision, error=reason))
        return None


# -- profiling ------------------------------------------------------------------------------------
def profile_decode(lm, ids: list[int], n: int) -> str:
    """cProfile of the decode loop: share of wall time inside InferenceSession.run."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    decode_fixed(lm, ids, n)
    prof.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    run_time = sum(v[3] for k, v in stats.stats.items() if k[2] == "run" and "onnxruntime" in k[0])
    top = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:6]
    lines = [f"{lm.bundle.path.name}: wall {wall:.2f}s for {n} tokens, inside InferenceSession.run {run_time:.2f}s ({run_time / wall:.0%}); "
             "Python outside it: " + f"{wall - run_time:.3f}s ({(wall - run_time) / n * 1e3:.2f} ms/token)"]
    lines += [f"  tottime {v[2]:.3f}s  {k[2]} ({Path(k[0]).name}:{k[1]})" for k, v in top]
    return "\n".join(lines)


def ort_op_profile(model_file: Path, lm, ids: list[int], steps: int, threads: int | None) -> str:
    """ORT's own profiler over `steps` one-token decode steps: kernel time by op type."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = f"/tmp/ortprof_{model_file.parent.name}"
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model_file), opts, providers=["CPUExecutionProvider"])
    lm_session = lm.session
    lm.session = sess  # reuse the LM's feeding code on the profiled session
    try:
        out = lm.prefill(ids)
        t0 = time.perf_counter()
        for _ in range(steps):
            out = lm.forward(np.array([[int(out.logits[0, -1].argmax())]], dtype=np.int64), out.kv)
        wall = time.perf_counter() - t0
    finally:
        lm.session = lm_session
    trace = json.loads(Path(sess.end_profiling()).read_text())
    by_op: dict[str, float] = {}
    nodes: set[str] = set()
    run_us = 0.0
    for ev in trace:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            op = ev.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + ev["dur"]
            nodes.add(ev["name"])
        elif ev.get("cat") == "Session" and ev["name"] == "model_run":
            run_us += ev["dur"]
    run_us = run_us or 1.0
    kernel = sum(by_op.values())
    runs = steps + 1
    top = sorted(by_op.items(), key=lambda kv: kv[1], reverse=True)[:8]
    lines = [f"{model_file.parent.name}: {len(nodes)} nodes run per step; per step {run_us / runs / 1e3:.2f} ms in run(), "
             f"{kernel / runs / 1e3:.2f} ms in kernels ({kernel / run_us:.0%}); Python wall per step {wall / steps * 1e3:.2f} ms"]
    lines += [f"  {op}: {us / runs / 1e3:.2f} ms/step ({us / kernel:.0%} of kernel time)" for op, us in top]
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundles", nargs="*", default=BUNDLES)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: ORT's, all cores)")
    ap.add_argument("--bandwidth-mb", type=int, default=512)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-optimum", action="store_true")
    ap.add_argument("--no-genai", action="store_true")
    ap.add_argument("--genai-venv", type=Path, default=GENAI_VENV)
    ap.add_argument("--variants", action="store_true", help="also ortrefine with 1 intra-op thread and with thread spinning off")
    ap.add_argument("--pinned", action="store_true", help="also ortrefine with its workers pinned (--pin-threads), fp32 and int4")
    ap.add_argument("--hugepages", action="store_true", help="also ortrefine with its weights on huge pages (--hugepages), fp32 and int4")
    ap.add_argument("--profile", action="store_true", help="append a cProfile and an ORT per-op profile of the ortrefine loop")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()

    run = Run("bench_decode", f"ORT intra-op {args.threads or 'default (all cores)'}; torch as labelled",
              extra_versions=("torch", "transformers", "optimum", "optimum-onnx"))
    failed: list[Contender] = []
    contenders: list[Contender] = []
    paths = [MODELS / b if not Path(b).exists() else Path(b) for b in args.bundles]
    try:  # kept to the end: no contender is the first session built (see above)
        ballast = ortrefine.load(paths[0], provider="cpu", threads=args.threads)  # noqa: F841
    except Exception as e:  # the bundle's own contender will report why it cannot load
        print(f"[ballast] {paths[0]}: {e}", file=sys.stderr)
    for p in paths:
        c = try_setup(failed, f"ortrefine {p.name}", "ortrefine", "?", lambda p=p: OrtrefineContender(p, args.threads))
        contenders += [c] if c else []
    picked = {}
    for c in contenders:
        picked.setdefault(c.precision, c)
    for c in (picked.get("fp32"), picked.get("int4")):  # session options, measured beside the defaults
        if c is not None:
            p = c.lm.bundle.path
            if args.variants:
                contenders.append(OrtrefineContender(p, 1, variant="1 thread"))
                contenders.append(OrtrefineContender(p, args.threads, spinning=False, variant="no spinning"))
            if args.pinned:
                contenders.append(OrtrefineContender(p, args.threads, variant="pinned", pin=True))
            if args.hugepages:
                contenders.append(OrtrefineContender(p, args.threads, variant="hugepages", hugepages=True))
    ref_lm = contenders[0].lm
    ids = ref_lm.encode_prompt(DECODE_PROMPT)
    pad_id = ref_lm.bundle.pad_id

    if not args.no_torch or not args.no_optimum:
        import torch

        torch.set_num_threads(1)
    if not args.no_torch:
        def make_torch():
            from ortrefine.export.sources import load_source, resolve_source

            model, _ = load_source(resolve_source("smollm2-135m"))
            return model
        model = try_setup(failed, "torch generate", "torch", "fp32", make_torch)
        if model is not None:
            contenders += [TorchContender(model, 1, pad_id), TorchContender(model, None, pad_id)]
    if not args.no_optimum:
        for b in OPTIMUM_BUNDLES:
            if (MODELS / b).exists():
                c = try_setup(failed, f"Optimum ORTModelForCausalLM {b}", "optimum", "?", lambda b=b: OptimumContender(MODELS / b, args.threads))
                contenders += [c] if c else []
    worker = None
    if not args.no_genai:
        worker = try_setup(failed, "onnxruntime-genai", "genai", "fp32+int4", lambda: GenaiWorker(args.genai_venv))
        if worker is not None:
            for prec, path in GENAI_MODELS.items():
                c = try_setup(failed, f"onnxruntime-genai {prec}", "genai", prec, lambda prec=prec, path=path: GenaiContender(worker, prec, path))
                contenders += [c] if c else []

    # warm-up (and each contender's ids); a contender failing here is recorded, not dropped
    outputs: dict[str, list[int]] = {}
    for c in list(contenders):
        try:
            outputs[c.name] = c.decode(ids, args.tokens).ids
            print(f"[warm-up] {c.name}: {len(outputs[c.name])} tokens", file=sys.stderr)
        except Exception as e:
            c.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"
            traceback.print_exc(file=sys.stderr)
            contenders.remove(c)
            failed.append(c)
    bandwidths: list[float] = [memory_bandwidth(args.bandwidth_mb)]
    for r in range(args.reps):
        order = contenders[r % len(contenders):] + contenders[: r % len(contenders)]  # rotate the start each round
        for i, c in enumerate(order):
            c.runs.append(c.decode(ids, args.tokens))
            if i % 3 == 2:
                bandwidths.append(memory_bandwidth(args.bandwidth_mb))
        bandwidths.append(memory_bandwidth(args.bandwidth_mb))
        print(f"[round {r + 1}/{args.reps}] " + ", ".join(f"{c.name.split()[-1]} {c.runs[-1].tokens_per_second:.1f}" for c in contenders),
              file=sys.stderr)
    if worker is not None:
        worker.close()

    bw = median(bandwidths)
    reference = outputs[contenders[0].name]
    rows = []
    for c in contenders:
        tps = [x.tokens_per_second for x in c.runs]
        share = c.weight_bytes * median(tps) / bw
        same = common_prefix(outputs[c.name], reference)
        rows.append([c.name, c.precision, f"{c.weight_bytes / 1e6:.1f}", spread(tps), spread([1e3 * x.ttft for x in c.runs], "{:.0f}"),
                     f"{c.weight_bytes * median(tps) / 1e9:.1f}", f"{share:.0%}", f"{len(outputs[c.name])}", f"{same}/{len(reference)}",
                     c.note])
    for c in failed:
        rows.append([c.name, c.precision, "—", "could not run", "—", "—", "—", "—", "—", c.error])

    def best(kind: str, precision: str | None = None) -> Contender | None:
        pool = [c for c in contenders if c.kind == kind and (precision is None or c.precision == precision)]
        return max(pool, key=lambda c: c.tps) if pool else None

    goals = []
    ours32, ours4 = best("ortrefine", "fp32"), best("ortrefine", "int4")
    for label, theirs, ours, goal in [
        ("≥ 1.2× Optimum's best (fp32, torch 1 thread)", best("optimum", "fp32"), ours32, 1.2),
        ("≥ 2.5× torch's best (fp32)", best("torch"), ours32, 2.5),
        ("≥ 1.0× onnxruntime-genai fp32", best("genai", "fp32"), ours32, 1.0),
        ("≥ 1.0× onnxruntime-genai int4", best("genai", "int4"), ours4, 1.0),
    ]:
        if theirs is None or ours is None:
            goals.append([label, "—", "—", "not measured (contender missing)"])
        else:
            x = ours.tps / theirs.tps
            goals.append([label, f"{ours.name} / {theirs.name}", f"{x:.2f}×", verdict(x, goal)])
    for c in contenders:
        if c.kind == "ortrefine-variant":
            base = next(b for b in contenders if b.kind == "ortrefine" and b.lm.bundle.path == c.lm.bundle.path)
            goals.append([f"(variant) {c.name} vs default session", f"{c.name} / {base.name}", f"{c.tps / base.tps:.2f}×", "—"])
            optimum = best("optimum", "fp32")
            if c.precision == "fp32" and optimum is not None:
                x = c.tps / optimum.tps
                goals.append([f"(variant) ≥ 1.2× Optimum's best (fp32) with {c.name}", f"{c.name} / {optimum.name}", f"{x:.2f}×",
                              verdict(x, 1.2)])
            share = c.weight_bytes * c.tps / bw
            goals.append([f"(variant) {c.precision}: weights × tok/s ≥ 85% of bandwidth", c.name, f"{share:.0%}", verdict(share, 0.85)])
    for c in contenders:
        if c.kind == "ortrefine":
            share = c.weight_bytes * c.tps / bw
            goals.append([f"{c.precision}: weights × tok/s ≥ 85% of bandwidth", c.name, f"{share:.0%}", verdict(share, 0.85)])

    text = "\n".join([
        f"Greedy decode of {args.tokens} tokens (eos ignored) from a {len(ids)}-token prompt; medians (min–max) of {args.reps} "
        "rounds after a warm-up, contenders taking turns (start rotating each round). ortrefine: timed loop over "
        "`lm.prefill`/`lm.forward` (`ortrefine.cli.bench_cmd.decode_fixed`). torch/Optimum: `generate(min_new_tokens=max_new_tokens)`, "
        "TTFT from a streamer. genai: worker process in its own venv, `min_length=max_length`.",
        f"Memory read bandwidth (best of numpy max and sgemv over {args.bandwidth_mb} MiB), measured {len(bandwidths)}× between contenders: "
        f"{spread([b / 1e9 for b in bandwidths])} GB/s. \"GB/s\" below = bytes read per token (graph initializers less tables only gathered from, "
        "i.e. an untied embedding; torch: parameters) × tok/s.",
        "",
        markdown_table(["contender", "precision", "MB read / token", "tok/s", "TTFT ms", "GB/s", "of bandwidth", "tokens",
                        "greedy = ortrefine fp32 (leading)", "note"], rows),
        "",
        *goals_section(["goal", "compared", "figure", "verdict"], goals, "Goals (issue 5), ratios from this run:"),
    ])
    if args.profile:
        prof = [profile_decode(c.lm, ids, args.tokens) for c in contenders if c.kind == "ortrefine" and c.precision in ("fp32", "int4")]
        ops = [ort_op_profile(c.lm.bundle.model_file, c.lm, ids, 16, args.threads) for c in contenders
               if c.kind == "ortrefine" and c.precision in ("fp32", "int4")]
        for prec, path in GENAI_MODELS.items():
            if (path / "model.onnx").exists():
                ops.append(genai_graph_summary(path))
        text += "\n".join(["Profile of the ortrefine decode loop (cProfile):", "", "```", *prof, "```", "",
                           "ONNX Runtime per-op profile, 16 one-token steps:", "", "```", *ops, "```", ""])
    publish("bench_decode", text, run, append=not args.no_append)


def genai_graph_summary(path: Path) -> str:
    """Node count and op types of a genai builder graph (not profiled: it runs in the other venv)."""
    import onnx

    g = onnx.load(str(path / "model.onnx"), load_external_data=False).graph
    ops: dict[str, int] = {}
    for n in g.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    top = ", ".join(f"{k} {v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:8])
    return f"genai {path.name}: {len(g.node)} nodes ({top})"


if __name__ == "__main__":
    main()
