"""int4 from a GGUF's own blocks: decoding equals gguf-py bit for bit, weights are found by value
through permutations and fusions, and the MatMulNBits rewrite computes the file's model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from ortrefine.export.gguf_blocks import DECODERS, decode  # noqa: E402
from ortrefine.export.gguf_quant import RowIndex, rewrite_from_gguf  # noqa: E402

QT = gguf.GGMLQuantizationType


def _random_blocks(kind: str, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Raw bytes of a `kind` tensor with random codes and finite half-precision fields."""
    _, per_block, nbytes = DECODERS[kind]
    raw = rng.integers(0, 256, size=(rows, cols // per_block, nbytes), dtype=np.uint8)
    halves = {"Q4_K": [0, 2], "Q6_K": [208]}.get(kind, [])
    for at in halves:  # d (and dmin): small positive halves
        raw[..., at:at + 2] = rng.uniform(1e-3, 2e-2, size=raw.shape[:2]).astype(np.float16)[..., None].view(np.uint8)
    return raw.reshape(rows, -1)


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q5_0", "Q8_0"])
def test_decoding_equals_gguf_py_on_quantized_floats(kind):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 256)).astype(np.float32)
    raw = gguf.quants.quantize(w, getattr(QT, kind))
    b = decode(kind, raw)
    ref = gguf.quants.dequantize(raw, getattr(QT, kind))
    assert b.dequantize().shape == ref.shape == w.shape
    assert np.array_equal(b.dequantize(), ref)
    assert b.q.max() < (1 << b.bits)


@pytest.mark.parametrize("kind", ["Q4_K", "Q6_K"])
def test_decoding_equals_gguf_py_on_k_quant_bytes(kind):
    rng = np.random.default_rng(2)
    raw = _random_blocks(kind, 3, 512, rng)
    b = decode(kind, raw)
    assert np.array_equal(b.dequantize(), gguf.quants.dequantize(raw, getattr(QT, kind)))
    assert b.block_size == (32 if kind == "Q4_K" else 16)


def _write_gguf(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """A GGUF file of quantized tensors; returns each tensor's dequantized (rows, K) floats."""
    w = gguf.GGUFWriter(str(path), "llama")
    floats = {}
    for name, (kind, x) in tensors.items():
        raw = gguf.quants.quantize(x, getattr(QT, kind))
        w.add_tensor(name, raw, raw_dtype=getattr(QT, kind))
        floats[name] = gguf.quants.dequantize(raw, getattr(QT, kind))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return floats


@pytest.fixture()
def fused(tmp_path):
    """A file with q (Q4_1), k (Q4_1), v (Q8_0) and an unrelated o; a graph with x @ [q_perm | k]ᵀ,
    x @ vᵀ and a MatMul whose weight is not in the file."""
    rng = np.random.default_rng(3)
    K = 64
    t = {"q": ("Q4_1", rng.standard_normal((48, K)).astype(np.float32)),
         "k": ("Q4_1", rng.standard_normal((16, K)).astype(np.float32)),
         "v": ("Q8_0", rng.standard_normal((16, K)).astype(np.float32))}
    f = _write_gguf(tmp_path / "m.gguf", t)
    perm = rng.permutation(48)
    qk = np.concatenate([f["q"][perm], f["k"]]).T.copy()       # (K, 64): permuted rows, fused
    stranger = rng.standard_normal((K, 8)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for n, a in (("qk", qk), ("vw", f["v"].T.copy()), ("sw", stranger))]
    nodes = [helper.make_node("MatMul", ["x", "qk"], ["y_qk"], name="mm_qk"),
             helper.make_node("MatMul", ["x", "vw"], ["y_v"], name="mm_v"),
             helper.make_node("MatMul", ["x", "sw"], ["y_s"], name="mm_s")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", K])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y_qk", "y_v", "y_s")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outs, inits),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    return tmp_path / "m.gguf", model, {"qk": qk, "vw": f["v"].T, "sw": stranger}


def _run(model, x):
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, {"x": x})))


def test_weights_are_found_by_value_through_permutation_and_fusion(fused):
    path, _, weights = fused
    index = RowIndex(path)
    qk = index.find(weights["qk"].T.copy())
    assert qk is not None and qk.gguf_type == "Q4_1" and np.array_equal(qk.dequantize(), weights["qk"].T)
    assert index.find(weights["vw"].T.copy()).gguf_type == "Q8_0"
    assert index.find(weights["sw"].T.copy()) is None
    nudged = weights["qk"].T.copy()
    nudged[3, 5] = np.nextafter(nudged[3, 5], np.float32(9))   # one ulp off: not the file's weight
    assert index.find(nudged) is None


def test_exact_layout_computes_the_files_model(fused):
    path, model, w = fused
    x = np.random.default_rng(4).standard_normal((2, 3, 64)).astype(np.float32)
    report = rewrite_from_gguf(model, path, "exact", level=1)   # fp32 compute: only rounding differs
    assert report.matched == {"mm_qk": "Q4_1", "mm_v": "Q8_0"} and report.fallback == ["mm_s"]
    assert report.corrections == 1 and report.max_rounding == 0.0
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulNBits") == 2 and ops.count("MatMul") == 3    # stranger + the Q4_1 correction's two
    assert {t.name for t in model.graph.initializer}.isdisjoint({"qk", "vw"})
    got = _run(model, x)
    for out, name in (("y_qk", "qk"), ("y_v", "vw"), ("y_s", "sw")):
        np.testing.assert_allclose(got[out], x @ w[name], rtol=1e-4, atol=1e-4)


def test_rounded_layout_has_no_correction_and_moves_the_weights(fused):
    path, model, w = fused
    x = np.random.default_rng(5).standard_normal((1, 4, 64)).astype(np.float32)
    report = rewrite_from_gguf(model, path, "rounded", level=1)
    assert report.corrections == 0 and report.max_rounding > 0
    assert [n.op_type for n in model.graph.node].count("MatMul") == 1
    got = _run(model, x)
    np.testing.assert_allclose(got["y_v"], x @ w["vw"], rtol=1e-4, atol=1e-4)   # Q8_0 has no offset: exact
    assert np.abs(got["y_qk"] - x @ w["qk"]).max() > 1e-3


def test_unknown_layout_is_refused(fused):
    path, model, _ = fused
    with pytest.raises(ValueError, match="unknown GGUF layout"):
        rewrite_from_gguf(model, path, "nearest")


def test_tied_embedding_and_head_share_one_8bit_table(tmp_path):
    """Gather(E, ids) and a tied head x @ Eᵀ over a Q8_0 table: both read one initializer of codes."""
    rng = np.random.default_rng(6)
    V, K = 40, 64
    f = _write_gguf(tmp_path / "e.gguf", {"token_embd": ("Q8_0", rng.standard_normal((V, K)).astype(np.float32))})
    E = f["token_embd"]
    inits = [numpy_helper.from_array(E, "E"), numpy_helper.from_array(E.T.copy(), "E_T")]
    nodes = [helper.make_node("Gather", ["E", "ids"], ["h"], name="embed", axis=0),
             helper.make_node("MatMul", ["h", "E_T"], ["logits"], name="lm_head")]
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("h", "logits")]
    model = helper.make_model(helper.make_graph(nodes, "g", [ids], outs, inits),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    report = rewrite_from_gguf(model, tmp_path / "e.gguf", level=1)
    assert report.gathers == {"embed": "lm_head"}
    names = [t.name for t in model.graph.initializer]
    assert "E" not in names and "E_T" not in names
    big = [t for t in model.graph.initializer if np.prod(t.dims) >= V * K]
    assert len(big) == 1 and big[0].data_type == TensorProto.UINT8     # one table of codes, shared
    import onnxruntime as ort

    x = np.array([[0, 7, 39]], np.int64)
    h, logits = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"ids": x})
    assert np.array_equal(h, E[x])
    np.testing.assert_allclose(logits, E[x] @ E.T, rtol=1e-4, atol=1e-4)


def test_a_fallback_leaves_the_exact_corrections_alone(fused):
    """Round-to-nearest of the weights the file lacks must touch those MatMuls only: ORT's
    nodes_to_include adds to the MatMul op type instead of narrowing it."""
    from ortrefine.export.quantize.methods import _quantize_nodes

    path, model, w = fused
    rewrite_from_gguf(model, path, "exact", level=1)
    model = _quantize_nodes(model, ["mm_s"], 4, 32, 1)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulNBits") == 3 and ops.count("MatMul") == 2      # the Q4_1 correction stays float
    x = np.random.default_rng(7).standard_normal((1, 2, 64)).astype(np.float32)
    np.testing.assert_allclose(_run(model, x)["y_qk"], x @ w["qk"], rtol=1e-4, atol=1e-4)


def test_rounded_layout_computes_the_rounded_weights_and_reports_the_move(fused):
    path, model, w = fused
    blocks = RowIndex(path).find(w["qk"].T.copy())
    report = rewrite_from_gguf(model, path, "rounded", level=1)
    zp = np.clip(np.rint(-blocks.low / blocks.scale), 0, 15)
    rounded = (blocks.scale[..., None] * (blocks.q - zp[..., None])).reshape(blocks.q.shape[0], -1).T   # (K, N)
    moved = np.abs(rounded - w["qk"]).max()
    assert moved > 0 and abs(report.max_rounding - moved) < 1e-6
    x = np.random.default_rng(8).standard_normal((1, 3, 64)).astype(np.float32)
    np.testing.assert_allclose(_run(model, x)["y_qk"], x @ rounded, rtol=1e-4, atol=1e-4)


def test_rounded_layout_keeps_constant_blocks(tmp_path):
    """A Q4_1 block of one repeated value has d = 0: it must come out as that value, not as 0."""
    rng = np.random.default_rng(9)
    x32 = rng.standard_normal((8, 64)).astype(np.float32)
    x32[:, :32] = 0.5                                        # the first block of every row is constant
    f = _write_gguf(tmp_path / "c.gguf", {"w": ("Q4_1", x32)})
    W = f["w"].T.copy()
    model = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(W, "W")]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    with np.errstate(all="raise"):
        report = rewrite_from_gguf(model, tmp_path / "c.gguf", "rounded", level=1)
    assert np.isfinite(report.max_rounding)
    x = np.ones((1, 1, 64), np.float32)
    x[..., 32:] = 0                                          # read the constant blocks alone
    np.testing.assert_allclose(_run(model, x)["y"], x @ W, rtol=1e-5, atol=1e-5)


def test_a_fused_weight_of_two_layouts_becomes_two_matmulnbits_and_a_concat(tmp_path):
    """q and k in Q4_1 with v in Q8_0 (as Q4_K_M files mix them): one 4-bit and one 8-bit
    MatMulNBits joined by a Concat, not a fallback to round-to-nearest."""
    rng = np.random.default_rng(10)
    K = 64
    f = _write_gguf(tmp_path / "m.gguf", {"q": ("Q4_1", rng.standard_normal((32, K)).astype(np.float32)),
                                          "k": ("Q4_1", rng.standard_normal((16, K)).astype(np.float32)),
                                          "v": ("Q8_0", rng.standard_normal((16, K)).astype(np.float32))})
    qkv = np.concatenate([f["q"], f["k"], f["v"]]).T.copy()
    model = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="qkv")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(qkv, "W")]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    report = rewrite_from_gguf(model, tmp_path / "m.gguf", "exact", level=1)
    assert report.fallback == [] and report.matched == {"qkv": "Q4_1|Q8_0"}
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulNBits") == 2 and ops.count("Concat") == 1
    x = rng.standard_normal((2, 3, K)).astype(np.float32)
    np.testing.assert_allclose(_run(model, x)["y"], x @ qkv, rtol=1e-4, atol=1e-4)
