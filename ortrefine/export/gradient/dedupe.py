"""Graph surgery: one copy of each weight.

The traced backward of y = x @ Wᵀ computes gx = gy @ (Wᵀ)ᵀ, so the exported graph holds
Transpose(W) for the forward and Transpose(Transpose(W)) for the backward. ONNX Runtime's
constant folding materialises both, and prepacking copies each again, so the weights would sit
in RAM several times over. Rewriting every such MatMul to read one stored layout (MatMul, or
FusedMatMul with transB=1 for the other orientation) leaves a single copy that ORT can
memory-map.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np


def _is_transpose_2d(node: Any) -> bool:
    """Without a perm, Transpose reverses the axes, which for a 2-D weight is the same swap."""
    if node.op_type != "Transpose":
        return False
    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
    return perm in (None, [1, 0])


def dedupe_weight_transposes(model: Any, layout: Callable[[str, np.ndarray], tuple[str, bool]] | None = None, min_elements: int = 4096) -> dict[str, Any]:
    """Rewrite `model` (onnx.ModelProto, weights loaded) in place; returns counts for the manifest.

    layout(name, W) → (stored name, store transposed?): lets the caller store a weight under the
    name and orientation the bundle's main graph uses (so the two sessions can share it).
    Default: keep name and orientation. Weights with any use other than MatMul's or Gemm's B
    (through chains of 2-D Transposes) are left alone.
    """
    from onnx import helper, numpy_helper

    g = model.graph
    consumers: dict[str, list[tuple[Any, int]]] = {}
    for node in g.node:
        for k, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, k))
    outputs = {o.name for o in g.output}
    replaced: dict[int, Any] = {}  # id(MatMul node) -> replacement node
    stats = {"weights": 0, "transposed": 0, "fused_matmuls": 0, "skipped": 0}
    for init in list(g.initializer):
        if len(init.dims) != 2 or init.dims[0] * init.dims[1] < min_elements or init.name in outputs:
            continue
        uses = _matmul_uses(init.name, consumers, outputs)
        if not uses:
            stats["skipped"] += 1
            continue
        W = numpy_helper.to_array(init)
        new_name, transposed = layout(init.name, W) if layout else (init.name, False)
        stored = 1 if transposed else 0
        if transposed or new_name != init.name:
            data = np.ascontiguousarray(W.T) if transposed else W
            init.CopyFrom(numpy_helper.from_array(data, new_name))
        for node, orient in uses:
            fused = _read_stored_weight(node, orient ^ stored, new_name)
            if fused is not None:
                replaced[id(node)] = fused
                stats["fused_matmuls"] += 1
        stats["weights"] += 1
        stats["transposed"] += int(transposed)
    if replaced:
        nodes = [replaced.get(id(n), n) for n in g.node]
        del g.node[:]
        g.node.extend(nodes)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    stats["removed_nodes"] = _remove_dead_nodes(model)
    return stats


def _matmul_uses(name: str, consumers: dict[str, list[tuple[Any, int]]], outputs: set[str]) -> list[tuple[Any, int]]:
    """Every MatMul/Gemm reading weight `name` as B through 2-D Transposes, with the orientation
    it sees (0 = W, 1 = Wᵀ); empty when any other use (or a graph output) needs the weight as it is."""
    uses: list[tuple[Any, int]] = []
    ok, stack = True, [(name, 0)]
    while stack and ok:
        value, orient = stack.pop()
        if value in outputs:
            ok = False
        for node, k in consumers.get(value, []):
            if _is_transpose_2d(node):
                stack.append((node.output[0], 1 - orient))
            elif node.op_type in ("MatMul", "Gemm") and k == 1:
                uses.append((node, orient))
            else:
                ok = False
    return uses if ok else []


def _read_stored_weight(node: Any, flipped: int, new_name: str) -> Any:
    """Point `node`'s B at the stored weight; `flipped`: the stored layout is the transpose of the
    one it read. Gemm and a same-layout MatMul are edited in place (None); a flipped MatMul
    returns the FusedMatMul (transB=1) to put in its place."""
    from onnx import helper

    if node.op_type == "Gemm":  # Gemm reads B through transB: fold the orientation into it
        attr = next((a for a in node.attribute if a.name == "transB"), None)
        flip = flipped ^ (attr.i if attr is not None else 0)
        if attr is None:
            node.attribute.append(helper.make_attribute("transB", flip))
        else:
            attr.i = flip
        node.input[1] = new_name
        return None
    if not flipped:
        node.input[1] = new_name
        return None
    return helper.make_node(
        "FusedMatMul", [node.input[0], new_name], list(node.output), name=(node.name or "mm") + "_fused",
        domain="com.microsoft", transA=0, transB=1, alpha=1.0,
    )


def _remove_dead_nodes(model: Any) -> int:
    """Drop nodes none of whose outputs are used (the orphaned weight Transposes)."""
    g = model.graph
    removed = 0
    while True:
        used = {o.name for o in g.output} | {name for n in g.node for name in n.input}
        keep = [n for n in g.node if any(o in used for o in n.output if o)]
        if len(keep) == len(g.node):
            break
        removed += len(g.node) - len(keep)
        del g.node[:]
        g.node.extend(keep)
    return removed

