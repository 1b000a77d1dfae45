"""Installing the fused graph over Optimum's: write it, run both side by side, swap it in only if
they agree (the graph itself is built in decoder_graph.py)."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ortrefine.export.decoder_graph import DecoderShape, build_decoder_graph
from ortrefine.export.families import family_of


@dataclass
class FusedGraphInfo:
    """What was written: node count and op histogram (for the manifest), file bytes, seconds."""

    nodes: int
    ops: dict[str, int]
    bytes: int
    seconds: float
    family: str = "llama"

    def to_dict(self) -> dict[str, Any]:
        return {"tool": "ortrefine.decoder_graph", "family": self.family, "nodes_after": self.nodes, "ops_after": self.ops,
                "bytes_after": self.bytes, "seconds": round(self.seconds, 2)}


def write_decoder_graph(model: Any, path: Path, build: Callable[[Any], Any] = build_decoder_graph) -> FusedGraphInfo:
    """Build and save the fused graph (weights as external data)."""
    from collections import Counter

    from ortrefine.export.writer import save_with_external_data

    t0 = time.perf_counter()
    proto = build(model)
    path = Path(path)
    save_with_external_data(proto, path)
    ops = dict(Counter(n.op_type for n in proto.graph.node))
    data = path.with_name(path.name + "_data")
    total = path.stat().st_size + (data.stat().st_size if data.exists() else 0)
    return FusedGraphInfo(nodes=len(proto.graph.node), ops=ops, bytes=total, seconds=time.perf_counter() - t0,
                          family=family_of(model.config).name)


def replace_with_fused(model: Any, model_path: Path, atol: float, greedy_tokens: int = 8,
                       build: Callable[[Any], Any] = build_decoder_graph) -> dict[str, Any]:
    """Write the fused graph over `model_path` (Optimum's) once it agrees with it; return the manifest entry.

    Both graphs run the same seeded prompt pass, cached step, left-padded batch and greedy decode
    (fuse.compare_graphs). On disagreement past `atol`, ValidationError and the Optimum graph stays.
    `build` is the graph builder (a seam for tests that break it on purpose).
    """
    import tempfile

    from ortrefine.errors import ValidationError
    from ortrefine.export.fuse import _Graph, compare_graphs, disagreements, install_staged

    model_path = Path(model_path)
    stage = Path(tempfile.mkdtemp(prefix=".fused-", dir=model_path.parent))
    try:
        staged = stage / model_path.name
        info = write_decoder_graph(model, staged, build)
        shape = DecoderShape.from_config(model.config)
        kv = (shape.kv_heads, shape.head_dim)
        reference, fused = _Graph(str(model_path), kv), _Graph(str(staged), kv)
        positions = "position_ids" if reference.has_positions else _at_cache_slots(fused)
        diff, kv_diff, same = compare_graphs(reference, fused, shape.vocab, greedy_tokens)
        problems = disagreements(diff, kv_diff, same, atol, greedy_tokens)
        if problems:
            raise ValidationError(f"the fused graph disagrees with Optimum's export: {'; '.join(problems)}; "
                                  "the bundle was not written (export with --graph optimum)")
        nodes_before = _node_count(model_path)
        install_staged(stage, model_path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {**info.to_dict(), "nodes_before": nodes_before, "vs_optimum": {
        "max_abs_diff": diff, "max_kv_diff": kv_diff, "greedy_tokens": greedy_tokens, "greedy_equal": same, "positions": positions}}


class _SlotPositions:
    """An onnxruntime session fed position ids equal to the cache slots of the new tokens."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def run(self, outputs: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        total, new = feed["attention_mask"].shape[1], feed["input_ids"].shape[1]
        feed["position_ids"] = np.ascontiguousarray(np.broadcast_to(np.arange(total - new, total), feed["input_ids"].shape))
        return self.session.run(outputs, feed)


def _at_cache_slots(fused: Any) -> str:
    """Run the fused graph at the positions a reference graph without ``position_ids`` uses.

    Optimum's Gemma-3 export has no position_ids input: it rotates every token at its cache slot, so
    a left-padded row's keys are rotated by a shift of the pad length. Attention only sees relative
    positions, so its logits agree with the fused graph's, but its present keys do not; fed the same
    slot positions, the fused graph must reproduce both. (The fused graph's own left padding, at
    position ids, is checked against torch.)
    """
    fused.session, fused.has_positions = _SlotPositions(fused.session), False
    return "cache slots (the reference graph has no position_ids)"


def _node_count(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)
