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

Prints a markdown section (machine header, table); it does not append to RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from common import MODELS, Run, markdown_table, median, publish, ratio, spread

import ortrefine

try:
    from ortrefine.bench import DECODE_PROMPT, DecodeRun, decode_fixed, weight_bytes
except ImportError:  # before the measuring helpers moved out of the CLI
    from ortrefine.cli.bench_cmd import DECODE_PROMPT, DecodeRun, decode_fixed, weight_bytes

TITLE = "bench_gemma_graph: Gemma-3 fused graph vs Optimum's graph"


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


def _size(path: Path) -> str:
    return f"{sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e9:.2f} GB"


def measure(bundles: list[Bundle], tokens: int, reps: int) -> list[int]:
    """Warm up each bundle once, then alternate them for `reps` rounds; returns the prompt ids."""
    ids = bundles[0].lm.encode_prompt(DECODE_PROMPT)
    for b in bundles:
        decode_fixed(b.lm, ids, tokens)
    for r in range(reps):
        for b in (bundles if r % 2 == 0 else bundles[::-1]):
            b.runs.append(decode_fixed(b.lm, ids, tokens))
    return ids


def report(bundles: list[Bundle], ids: list[int], tokens: int, run: Run) -> str:
    base = bundles[-1]
    rows = [[f"`{b.path}`", b.graph, b.nodes, _size(b.path), f"{weight_bytes(b.lm.bundle.model_file, per_token=True) / 1e9:.2f} GB",
             spread([r.tokens_per_second for r in b.runs]), f"{median([r.ttft for r in b.runs]) * 1e3:.0f}", ratio(b.tps, base.tps)]
            for b in bundles]
    same = all(b.runs[0].ids == base.runs[0].ids for b in bundles)
    table = markdown_table(["bundle", "graph", "nodes", "on disk", "weights read / token", "decode tok/s median (min–max)",
                            "first token ms (median)", f"vs {base.graph}"], rows)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([f"## {TITLE} — {stamp}", "", run.header(), "",
                      f"{tokens} greedy tokens from a {len(ids)}-token prompt, {len(bundles[0].runs)} alternating rounds after a warm-up; "
                      f"greedy ids equal across bundles: {same}.", "", table, ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fused", type=Path, default=Path("/tmp/gemma-fused"), help="bundle of the fused graph")
    ap.add_argument("--optimum", type=Path, default=MODELS / "gemma3-270m", help="bundle of Optimum's graph (same weights)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: ortrefine's)")
    args = ap.parse_args()
    run = Run("bench_gemma_graph", f"ORT intra-op {args.threads or 'ortrefine default'}")
    ballast = ortrefine.load(args.fused, provider="cpu", threads=args.threads)  # noqa: F841  (see the module docstring)
    bundles = [Bundle.open(args.fused, args.threads), Bundle.open(args.optimum, args.threads)]
    ids = measure(bundles, args.tokens, args.reps)
    publish(TITLE, report(bundles, ids, args.tokens, run), run, append=False)


if __name__ == "__main__":
    main()
