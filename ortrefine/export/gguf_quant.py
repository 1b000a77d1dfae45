"""MatMulNBits weights written from the GGUF's own blocks, so an int4 bundle is the model in the file.

A bundle exported from a GGUF holds the file's dequantized floats. Re-quantizing those floats on a
new grid (`--algo rtn`) gives a different model; here every MatMul whose weight came from a
quantized GGUF tensor is rewritten from that tensor's codes, scales and offsets instead.

Which graph weight came from which tensor is found by value, not by name: each column of a
weight is looked up among the dequantized rows of every quantized tensor in the file
(`gguf_blocks.Blocks.dequantize` is bit-equal to gguf-py's). That needs no per-family table and
survives the exporter's permutations (llama's rotary q/k rows) and fusions (qkv, gate_up).
A weight with any column not found keeps today's round-to-nearest path and is listed.

Layouts for blocks with an offset (Q4_1, Q4_K: w = d·q + m), where MatMulNBits' fast CPU kernels
take only integer zero points:
- exact: MatMulNBits(q, d) with its default zero point 8 computes Σ d·(q − 8)·x; the rest,
  Σ_b (m_b + 8·d_b) · (Σ_{k∈b} x_k), is one small MatMul of x's block sums (x @ S, S the
  (K, K/32) 0/1 block matrix) by M (K/32, N). The weights are the file's to fp32 rounding.
- rounded: the offset rounded to an integer zero point, clip(round(−m/d), 0, 15); no extra
  MatMul, but each weight moves by up to d/2, more where the zero point is clipped (the report's
  max_rounding is the largest move).
Blocks without an offset (Q4_0, Q5_0, Q8_0, Q6_K) are exact in every layout.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from ortrefine.export.gguf_blocks import Blocks, concat, read_tensors

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

LAYOUTS = ("exact", "rounded")


@dataclass
class GGUFQuantReport:
    """What the rewrite did.

    matched: {matmul node: source block types, e.g. "Q4_1" or "Q5_0+Q8_0"}.
    fallback: MatMul nodes whose weight was not found in the file (left for round-to-nearest).
    corrections: MatMuls given the block-sum correction (the exact layout of offset blocks).
    max_rounding: the largest |Δw| the rounded layout introduced (0 for exact).
    gathers: embedding Gathers now reading 8-bit codes ({node: the MatMul whose codes they share,
        or "" when they have their own}).
    """

    matched: dict[str, str] = field(default_factory=dict)
    fallback: list[str] = field(default_factory=list)
    corrections: int = 0
    max_rounding: float = 0.0
    gathers: dict[str, str] = field(default_factory=dict)

    def types(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for kind in self.matched.values():
            out[kind] = out.get(kind, 0) + 1
        return out


def _row_keys(rows: np.ndarray) -> list[bytes]:
    """One digest per row of a (rows, K) float32 matrix; −0.0 and +0.0 hash alike."""
    rows = np.ascontiguousarray(rows + np.float32(0.0))
    return [hashlib.blake2b(r.tobytes(), digest_size=12).digest() for r in rows]


class RowIndex:
    """Every quantized row of a GGUF file, findable by its dequantized value."""

    def __init__(self, path: Path) -> None:
        self.tensors: dict[str, Blocks] = {}
        self._where: dict[bytes, tuple[str, int]] = {}
        for name, blocks in read_tensors(path):
            self.tensors[name] = blocks
            for row, key in enumerate(_row_keys(blocks.dequantize())):
                self._where.setdefault(key, (name, row))

    def find(self, rows: np.ndarray) -> Blocks | None:
        """Blocks whose dequantization equals `rows` (N, K) float32 exactly, or None (also when the
        rows come from tensors of layouts one MatMulNBits cannot hold together: see find_groups)."""
        groups = self.find_groups(rows)
        return groups[0] if groups is not None and len(groups) == 1 else None

    def find_groups(self, rows: np.ndarray) -> list[Blocks] | None:
        """`rows` (N, K) as consecutive groups of rows, each of one MatMulNBits layout (a fused
        q|k|v whose v has more bits than q and k is two groups), or None when any row is not
        the file's exactly."""
        hits = [self._where.get(k) for k in _row_keys(rows)]
        if any(h is None for h in hits):
            return None
        groups: list[list[Blocks]] = []
        for name, idx in _runs(hits):
            part = self.tensors[name].take(np.asarray(idx))
            last = groups[-1][-1] if groups else None
            same = last is not None and (last.bits, last.block_size, last.zero_point) == (part.bits, part.block_size, part.zero_point)
            if same:
                groups[-1].append(part)
            else:
                groups.append([part])
        merged = [concat(g) if len(g) > 1 else g[0] for g in groups]
        got = np.concatenate([b.dequantize() for b in merged])
        return merged if np.array_equal(got, rows) else None


def _runs(hits: Iterable[tuple[str, int] | None]) -> list[tuple[str, list[int]]]:
    """Consecutive hits from one tensor grouped: [(tensor, [rows...]), ...] in column order."""
    runs: list[tuple[str, list[int]]] = []
    for name, row in hits:  # type: ignore[misc]
        if runs and runs[-1][0] == name:
            runs[-1][1].append(row)
        else:
            runs.append((name, [row]))
    return runs


def _pack(q: np.ndarray, bits: int) -> np.ndarray:
    """(N, blocks, bs) codes → MatMulNBits' B (N, blocks, bs·bits/8): element 2i in the low nibble."""
    if bits == 8:
        return np.ascontiguousarray(q, dtype=np.uint8)
    return np.ascontiguousarray(q[..., 0::2] | (q[..., 1::2] << np.uint8(4)), dtype=np.uint8)


def _pack_zero_points(zp: np.ndarray) -> np.ndarray:
    """(N, blocks) 4-bit zero points → (N·ceil(blocks/2),) uint8, two per byte, low nibble first."""
    if zp.shape[1] % 2:
        zp = np.concatenate([zp, np.zeros((zp.shape[0], 1), np.uint8)], axis=1)
    return (zp[:, 0::2] | (zp[:, 1::2] << np.uint8(4))).reshape(-1)


@dataclass
class _Rewrite:
    """The nodes and initializers that replace one MatMul."""

    nodes: list[Any]
    inits: list[Any]
    correction: bool
    rounding: float
    qweight: str


def _rewrite(node: Any, blocks: Blocks, layout: str, level: int | None, shared: dict[str, Any],
             output: str | None = None, part: str = "") -> _Rewrite:
    """MatMulNBits for `node` (x @ W, W (K, N)) from `blocks` (N rows of K), writing `output`
    (default the node's own); `part` tells the pieces of a split weight apart."""
    from onnx import helper, numpy_helper

    n, nb, bs = blocks.q.shape
    k = nb * bs
    base = (node.name or node.output[0]) + part
    output = output or node.output[0]
    rounded = _rounded(blocks) if blocks.zero_point == 0 and layout == "rounded" else None
    codes, scale = (rounded[0], rounded[1]) if rounded else (blocks.q, blocks.scale)
    inputs = [node.input[0], f"{base}.qweight", f"{base}.scales"]
    inits = [numpy_helper.from_array(_pack(codes, blocks.bits), inputs[1]),
             numpy_helper.from_array(scale.reshape(-1).astype(np.float32), inputs[2])]
    if rounded:
        inputs.append(f"{base}.zero_points")
        inits.append(numpy_helper.from_array(_pack_zero_points(rounded[2]), inputs[3]))
    low, rounding = _offsets(blocks, rounded)
    attrs = {"K": k, "N": n, "bits": blocks.bits, "block_size": bs}
    if level is not None:
        attrs["accuracy_level"] = level
    out = output if low is None else f"{base}.nbits"
    nodes = [helper.make_node("MatMulNBits", inputs, [out], name=f"{base}.MatMulNBits", domain="com.microsoft", **attrs)]
    if low is not None:
        sums = _block_sum_matrix(k, bs, shared, inits)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(low.T, dtype=np.float32), f"{base}.offsets"))
        nodes += [helper.make_node("MatMul", [node.input[0], sums], [f"{base}.block_sums"], name=f"{base}.block_sums"),
                  helper.make_node("MatMul", [f"{base}.block_sums", f"{base}.offsets"], [f"{base}.offset_term"], name=f"{base}.offset_term"),
                  helper.make_node("Add", [out, f"{base}.offset_term"], [output], name=f"{base}.add_offsets")]
    return _Rewrite(nodes, inits, low is not None, rounding, inputs[1])


def _offsets(blocks: Blocks, rounded: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> tuple[np.ndarray | None, float]:
    """(the per-block offsets the correction MatMul adds (N, blocks) float32, or None; max |Δw|).
    `rounded` is the rounded layout's (codes, scale, zero points), None for the exact one."""
    if blocks.zero_point != 0:
        return None, 0.0
    if rounded is None:
        # MatMulNBits subtracts its default zero point 8; add 8·d back with the offset
        return blocks.low + np.float32(8.0) * blocks.scale, 0.0
    codes, scale, zp = rounded
    moved = scale[..., None] * (codes.astype(np.float32) - zp[..., None]) - blocks.dequantize().reshape(codes.shape)
    return None, float(np.abs(moved).max()) if moved.size else 0.0


def _rounded(blocks: Blocks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, scale, integer zero points) of the rounded layout: w ≈ scale·(q − zp).

    A block whose scale is 0 holds one value, its offset: it is written exactly as code 1, zero
    point 0, scale = offset (rounding −m/0 would give ±inf or NaN and zero the block).
    """
    flat = blocks.scale == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        zp = np.where(flat, 0.0, np.clip(np.rint(-blocks.low / np.where(flat, 1.0, blocks.scale)), 0, 15))
    codes = np.where(flat[..., None], np.uint8(1), blocks.q).astype(np.uint8)
    scale = np.where(flat, blocks.low, blocks.scale).astype(np.float32)
    return codes, scale, zp.astype(np.uint8)


def _block_sum_matrix(k: int, bs: int, shared: dict[str, Any], inits: list[Any]) -> str:
    """S (K, K/bs) with S[i, i // bs] = 1, so x @ S sums x over each block; one per (K, bs)."""
    from onnx import numpy_helper

    name = f"gguf.block_sums.{k}x{bs}"
    if name not in shared:
        s = np.zeros((k, k // bs), np.float32)
        s[np.arange(k), np.arange(k) // bs] = 1.0
        shared[name] = numpy_helper.from_array(s, name)
        inits.append(shared[name])
    return name


def rewrite_from_gguf(model: "onnx.ModelProto", gguf_path: Path, layout: str = "exact",
                      level: int | None = 4) -> GGUFQuantReport:
    """Replace, in place, every MatMul(x, W) whose W the file holds in blocks; return what was done.

    The lm_head must already be a plain MatMul over a constant (quantize.untie_lm_head).
    """
    from onnx import numpy_helper

    if layout not in LAYOUTS:
        raise ValueError(f"unknown GGUF layout {layout!r}; use one of: {', '.join(LAYOUTS)}")
    index = RowIndex(gguf_path)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    report, shared = GGUFQuantReport(), {}
    codes: dict[bytes, tuple[str, str]] = {}   # digest of an 8-bit B → (its initializer, its MatMul)
    for node in list(graph.node):
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if w.ndim != 2 or w.dtype != np.float32:
            continue
        groups = index.find_groups(np.ascontiguousarray(w.T))
        name = node.name or node.output[0]
        if groups is None:
            report.fallback.append(node.name)
            continue
        nodes, new_inits = _replace(node, groups, layout, level, shared, report)
        at = list(graph.node).index(node)
        graph.node.remove(node)
        for j, new in enumerate(nodes):
            graph.node.insert(at + j, new)
        graph.initializer.extend(new_inits)
        report.matched[name] = "|".join(b.gguf_type for b in groups)
        if len(groups) == 1 and groups[0].bits == 8 and groups[0].low is None:
            codes[_digest(groups[0])] = (f"{name}.qweight", name)
    _quantize_gathers(graph, inits, index, codes, report)
    _drop_unread(graph)
    return report


def _replace(node: Any, groups: list[Blocks], layout: str, level: int | None, shared: dict[str, Any],
             report: GGUFQuantReport) -> tuple[list[Any], list[Any]]:
    """The nodes and initializers for one MatMul: one MatMulNBits per layout group, joined along
    the output features by a Concat when there is more than one."""
    from onnx import helper

    parts = [""] if len(groups) == 1 else [f".part{j}" for j in range(len(groups))]
    base = node.name or node.output[0]
    outputs = [node.output[0]] if len(groups) == 1 else [f"{base}{p}/out" for p in parts]
    nodes, inits = [], []
    for blocks, part, out in zip(groups, parts, outputs):
        rw = _rewrite(node, blocks, layout, level, shared, out, part)
        nodes += rw.nodes
        inits += rw.inits
        report.corrections += rw.correction
        report.max_rounding = max(report.max_rounding, rw.rounding)
    if len(groups) > 1:
        nodes.append(helper.make_node("Concat", outputs, [node.output[0]], name=f"{base}.concat", axis=-1))
    return nodes, inits


def _digest(blocks: Blocks) -> bytes:
    return hashlib.blake2b(blocks.q.tobytes() + blocks.scale.tobytes(), digest_size=16).digest()


def _quantize_gathers(graph: Any, inits: dict[str, Any], index: RowIndex, codes: dict[bytes, tuple[str, str]],
                      report: GGUFQuantReport) -> None:
    """Embedding Gathers over a table the file holds in 8-bit blocks (Q8_0, Q5_0, Q6_K) read the codes
    through GatherBlockQuantized, which dequantizes exactly as MatMulNBits does. A tied head's
    MatMulNBits holds the same codes in the same (rows, blocks, block) shape, so both read one
    initializer: the embedding is stored once, in 8 bits."""
    from onnx import helper, numpy_helper

    ranks = {i.name: len(i.type.tensor_type.shape.dim) for i in graph.input}
    for node in list(graph.node):
        if node.op_type != "Gather" or node.input[0] not in inits or ranks.get(node.input[1]) != 2:
            continue
        if any(a.name == "axis" and a.i != 0 for a in node.attribute):
            continue
        table = numpy_helper.to_array(inits[node.input[0]])
        blocks = index.find(table) if table.ndim == 2 and table.dtype == np.float32 else None
        if blocks is None or blocks.bits != 8 or blocks.low is not None:
            continue
        base = node.name or node.output[0]
        shared = codes.get(_digest(blocks))
        qweight, head = shared or (f"{base}.qweight", "")
        new_inits = [] if shared else [numpy_helper.from_array(np.ascontiguousarray(blocks.q), qweight)]
        new_inits += [numpy_helper.from_array(blocks.scale[..., None].astype(np.float32), f"{base}.scales"),
                      numpy_helper.from_array(np.array([0, 0, table.shape[1]], np.int64), f"{base}.shape")]
        at = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(at, helper.make_node(
            "GatherBlockQuantized", [qweight, node.input[1], f"{base}.scales"], [f"{base}.blocks"], name=f"{base}.gbq",
            domain="com.microsoft", bits=8, block_size=blocks.block_size, gather_axis=0, quantize_axis=2))
        graph.node.insert(at + 1, helper.make_node("Reshape", [f"{base}.blocks", f"{base}.shape"], list(node.output),
                                                   name=f"{base}.rows"))
        graph.initializer.extend(new_inits)
        report.gathers[base] = head


def _drop_unread(graph: Any) -> None:
    """Remove initializers no node reads any more (the float weights just replaced)."""
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(keep)
