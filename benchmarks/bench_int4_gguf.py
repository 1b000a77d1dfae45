"""int4 from the GGUF's own blocks vs re-quantized int4 vs llama.cpp on the same file, side by side.

The default model ships as a Q4_1 GGUF; its fp32 bundle is that file's dequantization. This run
puts every int4 layout next to each other and next to llama.cpp running the file itself:

- quality: KL(fp32 ‖ int4) per token, perplexity ratio and top-1 agreement on the quality gate's
  built-in texts and on the dev prompts (each prompt followed by fp32's 32 greedy tokens); for
  llama.cpp the same figures from its logits on the same token ids;
- speed: greedy decode of --tokens tokens (eos ignored) from the same prompt ids; contenders take
  turns for --reps rounds, order rotating, and medians are compared.

Contenders (bundles are built under --bundles by `ortrefine quantize` when missing):
- gguf-exact: `--algo gguf` (the default for GGUF sources), accuracy level 4 (int8 activations);
- gguf-exact-l1: the same weights, fp32 compute (accuracy level 1);
- gguf-exact-l1-head4: fp32 compute for the 4-bit projections, int8 activations for the 8-bit
  (Q8_0) head alone (`--accuracy-level 1 --accuracy-level-8bit 4`): level 1's slowness is the
  8-bit head, which has no fast fp32 kernel on the CPU;
- gguf-rounded: `--gguf-layout rounded` (integer zero points, no correction MatMul);
- rtn-head8-b64: `--algo rtn --head-bits 8 --block-size 64`, the fastest re-quantized int4;
- llama.cpp: llama-cpp-python in its own venv (benchmarks/.venv-llamacpp), a worker process fed
  token ids over stdin/stdout, n_threads = this run's threads.

Setting up llama-cpp-python (once; a source build, about 20 minutes on 2 cores):
    python -m venv benchmarks/.venv-llamacpp
    CMAKE_ARGS="-DGGML_NATIVE=ON" benchmarks/.venv-llamacpp/bin/pip wheel --no-deps -w wheels llama-cpp-python
    benchmarks/.venv-llamacpp/bin/pip install wheels/llama_cpp_python-*.whl

    python benchmarks/bench_int4_gguf.py                  # appends to RESULTS.md
    python benchmarks/bench_int4_gguf.py --reps 3 --no-append
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common import DEV_PROMPTS, MODELS, ROOT, Run, VenvWorker, markdown_table, median, publish, spread

import ortrefine
from ortrefine.bench import DECODE_PROMPT, DecodeRun, decode_fixed

LLAMACPP_VENV = ROOT / "benchmarks" / ".venv-llamacpp"
VARIANTS = {
    "gguf-exact": {"algo": "gguf"},
    "gguf-exact-l1": {"algo": "gguf", "accuracy_level": 1},
    "gguf-exact-l1-head4": {"algo": "gguf", "accuracy_level": 1, "accuracy_level_8bit": 4},
    "gguf-rounded": {"algo": "gguf", "gguf_layout": "rounded"},
    "rtn-head8-b64": {"algo": "rtn", "head_bits": 8, "block_size": 64},
}

LLAMACPP_WORKER = r'''
import json, sys, time
import numpy as np
from llama_cpp import Llama
import llama_cpp
llm = None
for line in sys.stdin:
    req = json.loads(line)
    try:
        if req["op"] == "load":
            llm = Llama(req["path"], n_ctx=1024, n_threads=req["threads"], n_threads_batch=req["threads"],
                        logits_all=True, verbose=False)
            out = {"ok": True, "version": llama_cpp.__version__}
        elif req["op"] == "decode":
            ids, n = req["ids"], req["n"]
            t0 = time.perf_counter()
            llm.reset(); llm.eval(ids)
            got = [int(np.argmax(llm.scores[llm.n_tokens - 1]))]
            ttft = time.perf_counter() - t0
            while len(got) < n:
                llm.eval([got[-1]])
                got.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            out = {"ok": True, "ids": got, "ttft": ttft, "seconds": time.perf_counter() - t0}
        elif req["op"] == "logits":
            llm.reset(); llm.eval(req["ids"])
            np.save(req["out"], np.asarray(llm.scores[: len(req["ids"])], dtype=np.float32))
            out = {"ok": True}
        else:
            break
    except Exception as e:
        out = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out), flush=True)
'''


class LlamaCpp(VenvWorker):
    """llama-cpp-python in its own venv, asked over a pipe (so it never shares this process's threads)."""

    def __init__(self, venv: Path, gguf: Path, threads: int) -> None:
        super().__init__(venv, LLAMACPP_WORKER, "llama.cpp")
        self.version = self.ask(op="load", path=str(gguf), threads=threads)["version"]

    def decode(self, ids: list[int], n: int) -> DecodeRun:
        out = self.ask(op="decode", ids=list(ids), n=n)
        return DecodeRun(out["ids"], out["ttft"], out["seconds"])

    def logits(self, ids: list[int]) -> np.ndarray:
        """(len(ids), vocab) float32: the logits after each position."""
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "logits.npy"
            self.ask(op="logits", ids=list(ids), out=str(out))
            return np.load(out)


@dataclass
class Quality:
    """KL(fp32 ‖ x) per predicted token, perplexity ratio x / fp32, top-1 agreement."""

    kl: float
    ppl_ratio: float
    top1: float


@dataclass
class Contender:
    name: str
    decode: object
    logits: object
    size_mb: float | None = None
    quality: dict[str, Quality] = field(default_factory=dict)
    runs: list[DecodeRun] = field(default_factory=list)

    @property
    def tps(self) -> float:
        return median([r.tokens_per_second for r in self.runs])


def build_variants(parent: Path, folder: Path) -> dict[str, Path]:
    """The int4 bundles of VARIANTS under folder, quantized from parent when missing."""
    from ortrefine.export.quantize import QuantizeConfig, quantize

    paths = {}
    for name, kwargs in VARIANTS.items():
        out = folder / f"{parent.name}-int4-{name}"
        if not (out / "ortrefine.json").exists():
            print(f"building {out.name} ...", flush=True)
            quantize(QuantizeConfig(parent, "int4", out=out, force=True, **kwargs))
        paths[name] = out
    return paths


def lm_logits(lm) -> object:
    def run(ids: list[int]) -> np.ndarray:
        out = lm.prefill(ids)           # logits: (1, len(ids), vocab)
        return np.asarray(out.logits[0], dtype=np.float32)
    return run


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def quality(ref, other, seqs: list[list[int]]) -> Quality:
    """Pooled over every predicted token of every sequence."""
    kl = nll_r = nll_o = agree = n = 0.0
    for ids in seqs:
        p, q = log_softmax(ref(ids)[:-1]), log_softmax(other(ids)[:-1])
        nxt = np.asarray(ids[1:])
        kl += float((np.exp(p) * (p - q)).sum())
        nll_r -= float(p[np.arange(len(nxt)), nxt].sum())
        nll_o -= float(q[np.arange(len(nxt)), nxt].sum())
        agree += float((p.argmax(-1) == q.argmax(-1)).sum())
        n += len(nxt)
    return Quality(kl / n, float(np.exp((nll_o - nll_r) / n)), agree / n)


def text_sets(fp32, n_new: int) -> dict[str, list[list[int]]]:
    """Token ids of the gate texts, and of each dev prompt followed by fp32's greedy tokens."""
    from ortrefine.export.quality import GateConfig, gate_token_ids

    gate = gate_token_ids(fp32, GateConfig())
    dev = []
    for line in DEV_PROMPTS.read_text().splitlines():
        prompt = json.loads(line)["prompt"]
        ids = fp32.tokenizer.encode(prompt)
        dev.append(list(ids) + decode_fixed(fp32, ids, n_new).ids)
    return {"gate texts": [list(s) for s in gate], "dev prompts": dev}


def bundle_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parent", type=Path, default=MODELS / "smollm2-135m")
    ap.add_argument("--bundles", type=Path, default=MODELS)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--llamacpp-venv", type=Path, default=LLAMACPP_VENV)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    run = Run("int4 from the GGUF's blocks", str(args.threads), ["onnxruntime"])

    fp32 = ortrefine.load(args.parent, provider="cpu", threads=args.threads)
    gguf = Path(fp32.bundle.manifest["source"]["location"]) / fp32.bundle.manifest["source"]["gguf_file"]
    contenders = [Contender("fp32 (the file, dequantized)", lambda ids, n, lm=fp32: decode_fixed(lm, ids, n), lm_logits(fp32), bundle_mb(args.parent))]
    for name, path in build_variants(args.parent, args.bundles).items():
        lm = ortrefine.load(path, provider="cpu", threads=args.threads)
        contenders.append(Contender(name, lambda ids, n, lm=lm: decode_fixed(lm, ids, n), lm_logits(lm), bundle_mb(path)))
    worker = None
    try:
        worker = LlamaCpp(args.llamacpp_venv, gguf, args.threads)
        contenders.append(Contender(f"llama.cpp {worker.version} ({gguf.name})", worker.decode, worker.logits, gguf.stat().st_size / 1e6))
    except RuntimeError as e:
        print(f"llama.cpp skipped: {e}")
    try:
        report = measure(args, fp32, contenders, gguf)
    finally:
        if worker is not None:
            worker.close()
    publish("int4 from the GGUF's blocks vs re-quantized int4 vs llama.cpp", report + "\n\n" + run.header(), run, not args.no_append)


def measure(args, fp32, contenders: list[Contender], gguf: Path) -> str:
    sets = text_sets(fp32, 32)
    for c in contenders[1:]:
        for label, seqs in sets.items():
            c.quality[label] = quality(contenders[0].logits, c.logits, seqs)
    ids = list(fp32.tokenizer.encode(DECODE_PROMPT))
    for c in contenders:
        c.decode(ids, args.tokens)                                    # warm-up
    for r in range(args.reps):
        for c in contenders[r % len(contenders):] + contenders[:r % len(contenders)]:
            c.runs.append(c.decode(ids, args.tokens))
    return render(args, contenders, sets, gguf, len(ids))


def render(args, contenders: list[Contender], sets: dict[str, list[list[int]]], gguf: Path, prompt_len: int) -> str:
    llama = next((c for c in contenders if c.name.startswith("llama.cpp")), None)
    header = ["contender", "MB on disk", "tok/s median (min–max)", "× llama.cpp"]
    for label, seqs in sets.items():
        header += [f"KL {label} ({sum(len(s) - 1 for s in seqs)} tok)", f"ppl ratio {label}", f"top-1 {label}"]
    rows = []
    for c in contenders:
        row = [c.name, f"{c.size_mb:.0f}", spread([r.tokens_per_second for r in c.runs]),
               f"{c.tps / llama.tps:.2f}" if llama else "—"]
        for label in sets:
            q = c.quality.get(label)
            row += [f"{q.kl:.4f}", f"{q.ppl_ratio:.3f}", f"{q.top1:.3f}"] if q else ["0 (reference)", "1", "1"]
        rows.append(row)
    return (f"Greedy decode of {args.tokens} tokens from the same {prompt_len}-token prompt, "
            f"{args.reps} rounds, order rotating; KL/ppl/top-1 against the fp32 bundle of {gguf.name}.\n\n"
            + markdown_table(header, rows))


if __name__ == "__main__":
    main()
