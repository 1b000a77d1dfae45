"""Gemma-3 decode speed, side by side: ortrefine's fused graph vs Optimum's graph of the same weights.

Both bundles decode exactly --tokens greedy tokens (eos ignored, `ortrefine.bench.decode_fixed`)
from the same prompt ids, after one warm-up each; then they take turns for --reps rounds (the
order flips each round) and the medians are compared, since this machine's speed drifts between
runs and only figures taken side by side compare. A ballast session of the first bundle is built
first and kept: the first session built in a process decodes slower than later ones
(benchmarks/bench_decode.py), and neither contender should be that one.

    ortrefine export gemma3-270m /tmp/gemma-fused            # the fused graph (default for gemma3)
    python benchmarks/bench_gemma_graph.py                   # vs the Optimum bundle at models/gemma3-270m
    python benchmarks/bench_gemma_graph.py --fused models/gemma3-270m-fused --reps 7
    # int4 of both graphs, from the GGUF's own blocks (`ortrefine quantize B --to int4 --out B-int4`):
    python benchmarks/bench_gemma_graph.py --fused /tmp/gemma-fused-int4 --optimum /tmp/gemma-optimum-int4
    # with onnxruntime-genai's model builder graph of the same weights as a third contender
    # (venv and model as in bench_decode.py's docstring, from `save_pretrained` of the GGUF load):
    python benchmarks/bench_gemma_graph.py --genai /tmp/genai/gemma3-fp32

Prints a markdown section (machine header, table) and appends it to RESULTS.md (--no-append: print only).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from common import MODELS, Run, append_results, markdown_table, median, ratio, spread

import ortrefine

from ortrefine.bench import DECODE_PROMPT, DecodeRun, decode_fixed, weight_bytes

TITLE = "bench_gemma_graph: Gemma-3 fused graph vs Optimum's graph"


class Genai:
    """onnxruntime-genai's builder graph in its own venv (bench_decode's worker), fed the same ids."""

    def __init__(self, path: Path, venv: Path) -> None:
        from bench_decode import GenaiWorker

        self.path, self.worker = path, GenaiWorker(venv)
        info = self.worker.ask(op="load", name="m", path=str(path))
        self.graph = f"onnxruntime-genai {info['version']} builder"
        import onnx

        self.nodes = f"{len(onnx.load(str(path / 'model.onnx'), load_external_data=False).graph.node):,}"
        self.model_file = path / "model.onnx"
        # its GroupQueryAttention refuses a KV cache shorter than the sliding window
        self.capacity = int(json.loads((path / "genai_config.json").read_text())["model"]["decoder"].get("sliding_window", {}).get("window_size", 0) or 0)
        self.runs: list[DecodeRun] = []

    def decode(self, ids: list[int], n: int) -> DecodeRun:
        out = self.worker.ask(op="decode", name="m", ids=list(ids), n=n, capacity=self.capacity)
        return DecodeRun(out["ids"], out["ttft"], out["seconds"])

    @property
    def tps(self) -> float:
        return median([r.tokens_per_second for r in self.runs])


@dataclass
class Bundle:
    """One contender: its session, what its manifest says of the graph, and the timed decodes."""

    path: Path
    lm: object
    graph: str
    nodes: str
    runs: list[DecodeRun] = field(default_factory=list)

    @classmethod
    def open(cls, path: Path, threads: int | None) -> "Bundle":
        g = json.loads((path / "ortrefine.json").read_text()).get("graph", {})
        nodes = g.get("nodes_after")
        if nodes is None:
            import onnx

            nodes = len(onnx.load(str(path / "model.onnx"), load_external_data=False).graph.node)
        return cls(path, ortrefine.load(path, provider="cpu", threads=threads), g.get("kind", "optimum"), f"{nodes:,}")

    @property
    def tps(self) -> float:
        return median([r.tokens_per_second for r in self.runs])

    @property
    def model_file(self) -> Path:
        return self.lm.bundle.model_file

    def decode(self, ids: list[int], n: int) -> DecodeRun:
        return decode_fixed(self.lm, ids, n)


def _size(path: Path) -> str:
    return f"{sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e9:.2f} GB"


def measure(bundles: list[Bundle], tokens: int, reps: int) -> list[int]:
    """Warm up each bundle once, then alternate them for `reps` rounds; returns the prompt ids."""
    ids = bundles[0].lm.encode_prompt(DECODE_PROMPT)
    for b in bundles:
        b.decode(ids, tokens)
    for r in range(reps):
        for b in bundles[r % len(bundles):] + bundles[:r % len(bundles)]:
            b.runs.append(b.decode(ids, tokens))
    return ids


def report(bundles: list[Bundle], ids: list[int], tokens: int, run: Run) -> str:
    base = bundles[1]
    rows = [[f"`{b.path}`", b.graph, b.nodes, _size(b.path), f"{weight_bytes(b.model_file, per_token=True) / 1e9:.2f} GB",
             spread([r.tokens_per_second for r in b.runs]), f"{median([r.ttft for r in b.runs]) * 1e3:.0f}", ratio(b.tps, base.tps)]
            for b in bundles]
    same = all(b.runs[0].ids == base.runs[0].ids for b in bundles)
    rounds = "rotating" if len(bundles) > 2 else "alternating"
    table = markdown_table(["bundle", "graph", "nodes", "on disk", "weights read / token", "decode tok/s median (min–max)",
                            "first token ms (median)", f"vs {base.graph}"], rows)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([f"## {TITLE} — {stamp}", "", run.header(), "",
                      f"{tokens} greedy tokens from a {len(ids)}-token prompt, {len(bundles[0].runs)} {rounds} rounds after a warm-up; "
                      f"greedy ids equal across bundles: {same}.", "", table, ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fused", type=Path, default=Path("/tmp/gemma-fused"), help="bundle of the fused graph")
    ap.add_argument("--optimum", type=Path, default=MODELS / "gemma3-270m", help="bundle of Optimum's graph (same weights)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: ortrefine's)")
    ap.add_argument("--genai", type=Path, default=None, help="an onnxruntime-genai model folder (optional third contender)")
    ap.add_argument("--genai-venv", type=Path, default=Path("/tmp/genai-venv"))
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    run = Run("bench_gemma_graph", f"ORT intra-op {args.threads or 'ortrefine default'}")
    ballast = ortrefine.load(args.fused, provider="cpu", threads=args.threads)  # noqa: F841  (see the module docstring)
    bundles = [Bundle.open(args.fused, args.threads), Bundle.open(args.optimum, args.threads)]
    genai = Genai(args.genai, args.genai_venv) if args.genai else None
    if genai:
        bundles.append(genai)
    try:
        ids = measure(bundles, args.tokens, args.reps)
    finally:
        if genai:
            genai.worker.close()
    text = report(bundles, ids, args.tokens, run)
    print(text)
    if not args.no_append:
        # report() already carries the dated title and machine header
        append_results(TITLE, text.split("\n", 2)[2])


if __name__ == "__main__":
    main()
