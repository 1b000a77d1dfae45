"""Graph edits around the quantizers: the documented lm_head untie, op counts, saving."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ortrefine.runtime.bundle import MODEL_FILE

if TYPE_CHECKING:
    import onnx


def op_counts(model: "onnx.ModelProto") -> dict[str, int]:
    """Quantized operators and fp16 initializers in a graph (the proof that it really changed)."""
    from onnx import TensorProto

    counts = {k: 0 for k in ("MatMulNBits", "GatherBlockQuantized", "MatMulInteger", "DynamicQuantizeLinear",
                             "MatMul", "fp16_initializers")}
    for node in model.graph.node:
        if node.op_type in counts:
            counts[node.op_type] += 1
    counts["fp16_initializers"] = sum(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)
    return counts


def untie_lm_head(model: "onnx.ModelProto") -> list[dict[str, Any]]:
    """Make every MatMul weight computed as Transpose(initializer) a constant initializer of its own.

    The tied lm_head of Optimum's export is `MatMul(hidden, Transpose(embed_tokens.weight))`; the
    fused graph's (decoder_graph.py) is `FusedMatMul(hidden, embed_tokens.weight, transB=1)`. The
    transposed copy is stored (exactly: a copy, no arithmetic) and the Transpose dropped when
    nothing else reads it. Returns what was untied: [{matmul, weight, shape}].
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    made: dict[str, str] = {}
    untied = _untie_fused_matmuls(graph, inits)
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] in inits:
            continue
        tr = producer.get(node.input[1])
        if tr is None or tr.op_type != "Transpose" or tr.input[0] not in inits:
            continue
        weight = numpy_helper.to_array(inits[tr.input[0]])
        perm = next((list(a.ints) for a in tr.attribute if a.name == "perm"), None)
        if weight.ndim != 2 or weight.dtype.kind != "f" or perm not in (None, [1, 0]):
            continue
        if tr.output[0] not in made:
            name = f"{tr.input[0]}.untied_T"
            graph.initializer.append(numpy_helper.from_array(weight.T.copy(), name))
            made[tr.output[0]] = name
        node.input[1] = made[tr.output[0]]
        untied.append({"matmul": node.name, "weight": tr.input[0], "shape": list(weight.T.shape)})
    still_read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    dead = [n for n in graph.node if n.op_type == "Transpose" and n.output[0] in made and n.output[0] not in still_read]
    for n in dead:
        graph.node.remove(n)
    return untied


def _plain_transposed_b(node: Any) -> bool:
    """A FusedMatMul that is exactly A @ Bᵀ (no transA, no batch transposes, alpha 1)."""
    attrs = {a.name: (a.f if a.type == a.FLOAT else a.i) for a in node.attribute}
    return (node.op_type == "FusedMatMul" and attrs.get("transB", 0) == 1 and attrs.get("transA", 0) == 0
            and attrs.get("alpha", 1.0) == 1.0 and not attrs.get("transBatchA", 0) and not attrs.get("transBatchB", 0))


def _untie_fused_matmuls(graph: Any, inits: dict[str, Any]) -> list[dict[str, Any]]:
    """Replace FusedMatMul(x, W, transB=1) over a 2-D float initializer by MatMul(x, Wᵀ as a constant)."""
    from onnx import helper, numpy_helper

    untied = []
    for idx, node in enumerate(list(graph.node)):
        if not _plain_transposed_b(node) or node.input[1] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if weight.ndim != 2 or weight.dtype.kind != "f":
            continue
        name = f"{node.input[1]}.untied_T"
        if name not in inits:
            inits[name] = numpy_helper.from_array(weight.T.copy(), name)
            graph.initializer.append(inits[name])
        graph.node.remove(node)
        graph.node.insert(idx, helper.make_node("MatMul", [node.input[0], name], list(node.output), name=node.name))
        untied.append({"matmul": node.name, "weight": node.input[1], "shape": list(weight.T.shape)})
    return untied


def _embedding_gathers(model: "onnx.ModelProto") -> tuple[list[str], list[str]]:
    """(Gathers over a 2-D float initializer: embedding tables, every other Gather's name).

    ORT's Gather quantizer does not check the table's dtype, so shape Gathers must be excluded.
    """
    from onnx import TensorProto

    tables = {t.name for t in model.graph.initializer
              if len(t.dims) == 2 and t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)}
    gathers = [n for n in model.graph.node if n.op_type == "Gather"]
    return [n.name for n in gathers if n.input[0] in tables], [n.name for n in gathers if n.input[0] not in tables]


def set_accuracy_level(model: "onnx.ModelProto", bits: int, level: int) -> int:
    """Give every `bits`-bit MatMulNBits the compute type `level` (0: no attribute, as onnxruntime's
    own quantizer writes it); returns how many nodes it set.

    One level for every width is not always what a user wants: onnxruntime's CPU has a fast fp32
    kernel (level 1) for 4-bit blocks but not for 8-bit ones, which take a slow fallback there, so
    fp32 compute with a Q8_0 head asks for 1 on the 4-bit nodes and 4 on the 8-bit head.
    """
    from onnx import helper

    done = 0
    for node in model.graph.node:
        if node.op_type != "MatMulNBits" or node.domain != "com.microsoft":
            continue
        attrs = {a.name: a for a in node.attribute}
        if "bits" not in attrs or attrs["bits"].i != bits:
            continue
        if "accuracy_level" in attrs:
            node.attribute.remove(attrs["accuracy_level"])
        if level:
            node.attribute.append(helper.make_attribute("accuracy_level", level))
        done += 1
    return done


def save_model(model: "onnx.ModelProto", folder: Path) -> Path:
    """Write model.onnx with its weights in model.onnx_data beside it (memory-mapped at load:
    writer.save_with_external_data)."""
    from ortrefine.export.writer import save_with_external_data

    path = folder / MODEL_FILE
    save_with_external_data(model, path)
    return path
