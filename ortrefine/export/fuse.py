"""Graph clean-up after export: onnxslim's constant folding, dead-node removal and pattern fusions.

Optimum's export of SmolLM2-135M has 7,425 nodes (2,713 Constant, 946 Unsqueeze, 459 Shape, …);
at 135 M parameters the per-node overhead of a decode step is a large share of its time once the
weights are small (DESIGN.md, The bundle). `onnxslim.slim()` folds the shape arithmetic away
(2,848 nodes; FACTS.md). This module runs it on a bundle's model.onnx and accepts the result only
after checking it against the original graph on the same inputs:

- logits (valid positions) and present KV of a prompt pass (batch 2), of a one-token step on its
  cache, and of a left-padded batch: max |Δ| ≤ `atol`;
- greedy ids of a few tokens from a seeded prompt: equal.

A failed check raises ValidationError and leaves `out_path` as it was. Writing the bundle's
manifest (sizes, sha256) is the caller's job: this rewrites one file.

Needs `onnxslim` (pip install onnxslim) and `onnx`; both imported inside the functions.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ortrefine.errors import BundleError, MissingExtraError, ValidationError
from ortrefine.export.writer import save_with_external_data

log = logging.getLogger(__name__)

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


@dataclass
class SlimResult:
    """What slimming did and how the slimmed graph compares with the original.

    path: the model file written.
    nodes_before / nodes_after: node counts of the main graph.
    ops_before / ops_after: node count per op type.
    bytes_before / bytes_after: file sizes (model file plus external data, if any).
    max_abs_diff: max |Δ logits| over the checked inputs (valid positions only).
    max_kv_diff: max |Δ present.*| over the same inputs (valid positions only).
    greedy_tokens: length of the greedy decode compared; greedy_equal: its ids were equal.
    seconds: wall time (slimming and checking).
    """

    path: Path
    nodes_before: int
    nodes_after: int
    ops_before: dict[str, int] = field(repr=False)
    ops_after: dict[str, int] = field(repr=False)
    bytes_before: int
    bytes_after: int
    max_abs_diff: float
    max_kv_diff: float
    greedy_tokens: int
    greedy_equal: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures (for a manifest)."""
        d = {k: v for k, v in self.__dict__.items() if k not in ("path", "ops_before", "ops_after")}
        d["tool"] = "onnxslim"
        return d


def _require_onnxslim():
    try:
        import onnxslim
    except ImportError:
        raise MissingExtraError("graph slimming needs onnxslim, which is not installed; run: pip install onnxslim") from None
    return onnxslim


def _file_bytes(path: Path) -> int:
    data = path.with_name(path.name + "_data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


class _Graph:
    """A session over one decoder graph and its input interface (read from the session)."""

    def __init__(self, model: str | bytes, kv_fallback: tuple[int, int] | None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past = [n for n in inputs if n.startswith("past_key_values")]
        if "input_ids" not in inputs or "attention_mask" not in inputs or not self.past:
            raise BundleError("the graph is not a decoder with past key/values (input_ids, attention_mask, past_key_values.*); "
                              "export it with task text-generation-with-past")
        self.dtypes = {n: _DTYPES.get(i.type, np.float32) for n, i in inputs.items()}
        shape = inputs[self.past[0]].shape
        heads, dim = shape[1], shape[3]
        if not (isinstance(heads, int) and isinstance(dim, int)):
            if kv_fallback is None:
                raise BundleError("the graph's past key/value shapes are symbolic and there is no config.json beside it to size them")
            heads, dim = kv_fallback
        self.heads, self.dim = int(heads), int(dim)
        self.has_positions = "position_ids" in inputs
        self.outputs = ["logits", *[n.replace("past_key_values", "present", 1) for n in self.past]]

    def run(self, ids: np.ndarray, mask: np.ndarray, past: list[np.ndarray] | None) -> list[np.ndarray]:
        """ids (batch, new) int64; mask (batch, past + new); past: arrays (batch, heads, len, dim)."""
        batch, new = ids.shape
        if past is None:
            past = [np.zeros((batch, self.heads, 0, self.dim), dtype=self.dtypes[n]) for n in self.past]
        feed = {"input_ids": ids.astype(self.dtypes["input_ids"]), "attention_mask": mask.astype(self.dtypes["attention_mask"])}
        if self.has_positions:
            pos = np.cumsum(mask, axis=1) - 1
            pos[mask == 0] = 1
            feed["position_ids"] = np.ascontiguousarray(pos[:, -new:]).astype(self.dtypes["position_ids"])
        feed.update(zip(self.past, past))
        return self.session.run(self.outputs, feed)


def _config_of(model_path: Path) -> dict[str, Any]:
    cfg = model_path.parent / "config.json"
    return json.loads(cfg.read_text()) if cfg.exists() else {}


def _kv_fallback(cfg: dict[str, Any]) -> tuple[int, int] | None:
    heads = cfg.get("num_key_value_heads") or cfg.get("num_attention_heads") or cfg.get("n_head")
    n_heads = cfg.get("num_attention_heads") or cfg.get("n_head")
    hidden = cfg.get("hidden_size") or cfg.get("n_embd")
    dim = cfg.get("head_dim") or (hidden // n_heads if hidden and n_heads else None)
    return (int(heads), int(dim)) if heads and dim else None


def compare_graphs(a: _Graph, b: _Graph, vocab: int, greedy_tokens: int = 8, seed: int = 0) -> tuple[float, float, bool]:
    """(max |Δlogits|, max |Δpresent|, greedy ids equal) of two graphs on the same seeded inputs."""
    rng = np.random.default_rng(seed)
    low = min(3, vocab - 1)
    logit_diff = kv_diff = 0.0

    def check(ids: np.ndarray, mask: np.ndarray, past_a, past_b):
        nonlocal logit_diff, kv_diff
        oa, ob = a.run(ids, mask, past_a), b.run(ids, mask, past_b)
        valid = mask[:, -ids.shape[1]:].astype(bool)        # (batch, new): real tokens
        logit_diff = max(logit_diff, float(np.abs(oa[0] - ob[0])[valid].max()))
        kv_valid = mask.astype(bool)                         # (batch, past + new)
        for x, y in zip(oa[1:], ob[1:]):                    # (batch, heads, past + new, dim)
            kv_diff = max(kv_diff, float(np.abs(x.astype(np.float32) - y.astype(np.float32)).transpose(0, 2, 1, 3)[kv_valid].max()))
        return oa, ob

    # 1. a prompt pass, batch 2, no past; 2. one token on its cache
    ids = rng.integers(low, vocab, size=(2, 7))
    oa, ob = check(ids, np.ones((2, 7), np.int64), None, None)
    step = rng.integers(low, vocab, size=(2, 1))
    check(step, np.ones((2, 8), np.int64), oa[1:], ob[1:])
    # 3. a left-padded batch (row 0 starts 2 tokens late)
    ids = rng.integers(low, vocab, size=(2, 6))
    mask = np.ones((2, 6), np.int64)
    mask[0, :2] = 0
    oa, ob = check(ids, mask, None, None)
    # ... and one token on each graph's own cache of it
    step = rng.integers(low, vocab, size=(2, 1))
    check(step, np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1), oa[1:], ob[1:])
    # 4. greedy decode from the same prompt with each graph
    prompt = rng.integers(low, vocab, size=(1, 5))
    outs = []
    for g in (a, b):
        seq, past, cur = [], None, prompt
        for _ in range(greedy_tokens):
            total = cur.shape[1] + (past[0].shape[2] if past is not None else 0)
            o = g.run(cur, np.ones((1, total), np.int64), past)
            seq.append(int(o[0][0, -1].argmax()))
            past, cur = o[1:], np.array([[seq[-1]]], dtype=np.int64)
        outs.append(seq)
    return logit_diff, kv_diff, outs[0] == outs[1]


def disagreements(diff: float, kv_diff: float, greedy_equal: bool, atol: float, greedy_tokens: int) -> list[str]:
    """What compare_graphs found past tolerance, as phrases for an error message (empty: agreed)."""
    problems = []
    if not diff <= atol:
        problems.append(f"max |Δlogits| {diff:.3g} > {atol:g}")
    if not kv_diff <= atol:
        problems.append(f"max |Δpresent| {kv_diff:.3g} > {atol:g}")
    if not greedy_equal:
        problems.append(f"greedy ids of {greedy_tokens} tokens differ")
    return problems


def install_staged(stage: Path, out_path: Path) -> None:
    """Move a staged graph and its weights over `out_path`: data first, graph last, so the graph
    never names a data file that is not there yet."""
    for f in sorted(stage.iterdir(), key=lambda p: p.name != out_path.name + "_data"):
        os.replace(f, out_path.parent / f.name)


def slim_bundle_graph(model_path: str | Path, out_path: str | Path, atol: float = 1e-4, greedy_tokens: int = 8) -> SlimResult:
    """Slim `model_path` with onnxslim, check it against the original, write it to `out_path`.

    out_path may be model_path (rewritten in place, atomically, only after the check passed).
    Raises ValidationError (out_path untouched) when logits or KV differ by more than `atol` or
    the greedy ids differ; MissingExtraError without onnxslim.
    """
    import onnx

    onnxslim = _require_onnxslim()
    model_path, out_path = Path(model_path), Path(out_path)
    if not model_path.is_file():
        raise BundleError(f"no model file at {model_path}; export the bundle first")
    t0 = time.perf_counter()
    cfg = _config_of(model_path)
    original = onnx.load(str(model_path))
    ops_before = Counter(n.op_type for n in original.graph.node)
    reference = _Graph(str(model_path), _kv_fallback(cfg))
    slimmed = onnxslim.slim(original)
    del original
    if slimmed is None:
        raise ValidationError(f"onnxslim refused {model_path} (its own check failed); keep the unslimmed graph")
    ops_after = Counter(n.op_type for n in slimmed.graph.node)
    bytes_before = _file_bytes(model_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.slim-", dir=out_path.parent))
    staged = stage / out_path.name
    try:
        save_with_external_data(slimmed, staged)  # weights beside the graph, as in every bundle
        del slimmed
        candidate = _Graph(str(staged), _kv_fallback(cfg))
        vocab = int(cfg.get("vocab_size") or 2)
        diff, kv_diff, same = compare_graphs(reference, candidate, vocab, greedy_tokens)
        problems = disagreements(diff, kv_diff, same, atol, greedy_tokens)
        if problems:
            raise ValidationError(f"the slimmed graph of {model_path} disagrees with the original: {'; '.join(problems)}; "
                                  "keep the unslimmed graph (or report the onnxslim version)")
        install_staged(stage, out_path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    result = SlimResult(
        path=out_path, nodes_before=sum(ops_before.values()), nodes_after=sum(ops_after.values()),
        ops_before=dict(ops_before), ops_after=dict(ops_after), bytes_before=bytes_before,
        bytes_after=_file_bytes(out_path), max_abs_diff=diff, max_kv_diff=kv_diff, greedy_tokens=greedy_tokens,
        greedy_equal=same, seconds=time.perf_counter() - t0,
    )
    log.info("slimmed %s: %d → %d nodes, max |Δlogits| %.2g, %.1fs", model_path, result.nodes_before, result.nodes_after, diff, result.seconds)
    return result
