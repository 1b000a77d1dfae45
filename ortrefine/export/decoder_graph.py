"""A fused decoder graph, written node by node from the torch weights, for every family in families.py.

Optimum's export of SmolLM2-135M runs 7,426 nodes per step (shape arithmetic, per-head reshapes,
a decomposed RMSNorm and rotary); onnxruntime-genai's builder runs ~343 fused ones and decodes
int4 twice as fast (FACTS.md). At a few hundred million parameters the per-node cost is a large
share of a decode step once the weights are small, so this module writes the lean graph directly
with ONNX Runtime's contrib ops:

- ``SimplifiedLayerNormalization`` / ``SkipSimplifiedLayerNormalization`` (RMSNorm, and the
  residual add fused into the next norm);
- one packed q|k|v ``MatMul`` and one packed gate|up ``MatMul`` per layer (fewer, larger GEMMs;
  still plain MatMuls with constant weights, so ``ortrefine quantize`` turns them into MatMulNBits);
- ``GroupQueryAttention`` takes the packed q|k|v and applies the rotary itself (``do_rotary``) at the
  explicit ``position_ids``: onnxruntime 1.32's CPU kernel rotates every token at its own position
  id (left-padded rows and the refiner's mid-padded rows included — checked against torch and, KV
  cache included, against Optimum's graph at export), so no Split and no RotaryEmbedding nodes
  (SmolLM2: 353 nodes instead of 443 with them; decode +0–6 % in A/B runs, benchmarks/RESULTS.md);
  a family with q/k norms splits q, k, v first, since the norm comes before the rotary;
- ``GroupQueryAttention`` with the padding mask passed as ``attention_bias``: every row is given the
  full length (``seqlens_k = T - 1``), and masked columns get −1e9. That keeps the exact semantics the
  runtime relies on — left padding, and the refiner's mid-padded KV (prefix, masked gap, suffix).
  Sliding-window layers set ``local_window_size`` to transformers' ``sliding_window``: in
  onnxruntime 1.32 (CPU) a window of W attends to the last W cache slots, the query's own included,
  which is transformers' ``kv_idx > q_idx - W`` (older onnxruntime kernels attended to W + 1).

The bundle interface is unchanged (``input_ids``, ``attention_mask``, ``position_ids``,
``past_key_values.{i}.key|value`` in BNSH → ``logits``, ``present.{i}.key|value``), so the runtime,
quantizer and tests need nothing new. The graph is checked against Optimum's graph and against torch
before it replaces Optimum's (``fused_install.replace_with_fused``, called by ``onnx_export``).

Needs ``onnx`` and the torch model (export extra); imported inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ortrefine.export.families import Family, family_of

MS = "com.microsoft"
MASK_BIAS = -1.0e9
LOGITS_TO_KEEP = "logits_to_keep"
IR_VERSION = 10
KEEP_ALL = 1 << 62  # Slice clamps -KEEP_ALL to the first position


@dataclass
class DecoderShape:
    """The numbers the graph needs from a transformers decoder config."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    eps: float
    max_positions: int

    @classmethod
    def from_config(cls, config: Any) -> "DecoderShape":
        family_of(config)
        heads = int(config.num_attention_heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
        return cls(layers=int(config.num_hidden_layers), hidden=int(config.hidden_size), heads=heads,
                   kv_heads=int(getattr(config, "num_key_value_heads", None) or heads), head_dim=head_dim,
                   intermediate=int(config.intermediate_size), vocab=int(config.vocab_size), eps=float(config.rms_norm_eps),
                   max_positions=int(config.max_position_embeddings))


def rotary_caches(model: Any, shape: DecoderShape, module: str = "rotary_emb") -> tuple[np.ndarray, np.ndarray]:
    """cos/sin tables (max_positions, rotary_dim / 2) computed the way transformers does it.

    transformers multiplies float32 positions by its float32 ``inv_freq`` buffer (rope scaling is
    already folded into it) and scales by ``attention_scaling``; doing the same float32 product keeps
    the rounding at large positions identical. `module` names the text model's rotary module
    (Gemma-3's local layers have their own, with another base frequency).
    """
    rope = getattr(model.model, module)
    inv_freq = rope.inv_freq.detach().float().cpu().numpy()
    scaling = float(getattr(rope, "attention_scaling", 1.0))
    freqs = np.arange(shape.max_positions, dtype=np.float32)[:, None] * inv_freq[None, :]
    return (np.cos(freqs) * scaling).astype(np.float32), (np.sin(freqs) * scaling).astype(np.float32)


class _Builder:
    """Collects nodes and initializers; names every tensor once."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.names: set[str] = set()

    def init(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        self.names.add(name)
        return name

    def const(self, name: str, array: np.ndarray) -> str:
        """A constant shared by several nodes: stored the first time it is asked for."""
        return name if name in self.names else self.init(name, array)

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, domain: str = "", **attrs: Any) -> list[str]:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))
        return outputs


@dataclass
class _Context:
    """What every layer reads: the model's family and shape, and the preamble's tensors."""

    family: Family
    shape: DecoderShape
    config: Any
    seqlens: str
    total: str
    bias: str


def _weight(t: Any) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _linear(b: _Builder, x: str, name: str, weights: list[Any], biases: list[Any | None]) -> str:
    """x @ [W1ᵀ | W2ᵀ | …] (+ bias): torch Linear weights are (out, in); the MatMul wants (in, out)."""
    w = np.concatenate([_weight(t).T for t in weights], axis=1)
    out = b.node("MatMul", [x, b.init(f"{name}.weight", w)], [f"{name}/out"], name)[0]
    if any(bias is not None for bias in biases):
        vec = np.concatenate([_weight(bb) if bb is not None else np.zeros(_weight(t).shape[0], np.float32)
                              for t, bb in zip(weights, biases)])
        out = b.node("Add", [out, b.init(f"{name}.bias", vec)], [f"{name}/biased"], f"{name}/bias")[0]
    return out


def _preamble(b: _Builder) -> tuple[str, str, str]:
    """seqlens_k (B,) int32, total_sequence_length () int32 and the additive mask bias (B, 1, S, T).

    The bias is (1 − mask) · MASK_BIAS: finite, so a row whose keys are all padding (a left pad's
    own position) gets a uniform softmax instead of NaN, and exp(−1e9) is exactly 0 in fp32.
    """
    b.node("Shape", ["attention_mask"], ["mask_shape"], "mask_shape")
    b.node("Shape", ["input_ids"], ["ids_shape"], "ids_shape")
    b.init("i0", np.array([0], np.int64))
    b.init("i1", np.array([1], np.int64))
    b.node("Slice", ["mask_shape", "i1", "i1_end", "i0"], ["total_1d"], "total_1d")
    b.init("i1_end", np.array([2], np.int64))
    b.node("Slice", ["mask_shape", "i0", "i1", "i0"], ["batch_1d"], "batch_1d")
    b.node("Slice", ["ids_shape", "i1", "i1_end", "i0"], ["seq_1d"], "seq_1d")
    b.node("Sub", ["total_1d", "i1"], ["total_minus1_1d"], "total_minus1")
    b.node("Expand", ["total_minus1_1d", "batch_1d"], ["seqlens_k64"], "seqlens_expand")
    b.node("Cast", ["seqlens_k64"], ["seqlens_k"], "seqlens_cast", to=6)
    b.node("Expand", ["seq_1d", "batch_1d"], ["query_seqlens64"], "query_seqlens_expand")
    b.node("Cast", ["query_seqlens64"], ["query_seqlens"], "query_seqlens_cast", to=6)
    b.node("Squeeze", ["total_1d", "i0"], ["total64"], "total_squeeze")
    b.node("Cast", ["total64"], ["total_sequence_length"], "total_cast", to=6)
    b.node("Cast", ["attention_mask"], ["mask_f"], "mask_cast", to=1)
    b.init("one_f", np.array(1.0, np.float32))
    b.init("mask_bias_f", np.array(MASK_BIAS, np.float32))
    b.node("Sub", ["one_f", "mask_f"], ["mask_off"], "mask_off")
    b.node("Mul", ["mask_off", "mask_bias_f"], ["mask_bias_bt"], "mask_bias")
    b.init("axes_12", np.array([1, 2], np.int64))
    b.node("Unsqueeze", ["mask_bias_bt", "axes_12"], ["mask_bias_b11t"], "mask_bias_unsqueeze")
    b.node("Concat", ["batch_1d", "i1", "seq_1d", "total_1d"], ["bias_shape"], "bias_shape", axis=0)
    b.node("Expand", ["mask_bias_b11t", "bias_shape"], ["attention_bias"], "bias_expand")
    return "seqlens_k", "total_sequence_length", "attention_bias"


def _rotary_inputs(b: _Builder, model: Any, family: Family, s: DecoderShape) -> list[tuple[str, str]]:
    """(cos, sin) initializer names per layer: the global tables, and the local ones where a family has them."""
    cos, sin = rotary_caches(model, s)
    global_ = local_ = (b.init("rotary.cos", cos), b.init("rotary.sin", sin))
    local = [family.is_local(model.config, i) for i in range(s.layers)]
    if family.local_rotary and any(local):
        cos, sin = rotary_caches(model, s, family.local_rotary)
        local_ = (b.init("rotary_local.cos", cos), b.init("rotary_local.sin", sin))
    return [local_ if is_local else global_ for is_local in local]


def _gain(family: Family, weight: Any) -> np.ndarray:
    return _weight(weight) + np.float32(family.norm_offset) if family.norm_offset else _weight(weight)


def _head_norm(b: _Builder, c: _Context, name: str, x: str, norm: Any) -> str:
    """RMSNorm over head_dim of a (B, S, heads · head_dim) projection: reshaped to heads and back."""
    heads = b.const("shape.heads", np.array([0, 0, -1, c.shape.head_dim], np.int64))
    flat = b.const("shape.flat", np.array([0, 0, -1], np.int64))
    split = b.node("Reshape", [x, heads], [f"{name}/heads"], f"{name}/heads")[0]
    gamma = b.init(f"{name}.weight", _gain(c.family, norm.weight))
    normed = b.node("SimplifiedLayerNormalization", [split, gamma], [f"{name}/out"], name, axis=-1, epsilon=float(norm.eps))[0]
    return b.node("Reshape", [normed, flat], [f"{name}/flat"], f"{name}/flat")[0]


def _qkv_inputs(b: _Builder, c: _Context, p: str, qkv: str, attn: Any) -> list[str]:
    """GroupQueryAttention's query, key, value: packed as one, or split and q/k-normed."""
    if not c.family.qk_norm:
        return [qkv, "", ""]
    s = c.shape
    sizes = b.init(f"{p}.qkv_split", np.array([s.heads * s.head_dim, s.kv_heads * s.head_dim, s.kv_heads * s.head_dim], np.int64))
    q, k, v = b.node("Split", [qkv, sizes], [f"{p}/q", f"{p}/k", f"{p}/v"], f"{p}/qkv_split", axis=-1)
    return [_head_norm(b, c, f"{p}.q_norm", q, attn.q_norm), _head_norm(b, c, f"{p}.k_norm", k, attn.k_norm), v]


def _attention(b: _Builder, c: _Context, i: int, h: str, layer: Any, rope: tuple[str, str]) -> str:
    """Packed q|k|v → GroupQueryAttention (rotary inside, at `position_ids`) → o_proj."""
    attn = layer.self_attn
    s = c.shape
    p = f"layers.{i}.attn"
    qkv = _linear(b, h, f"{p}.qkv", [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight],
                  [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
    extra: dict[str, Any] = {}
    if c.family.is_local(c.config, i):
        extra["local_window_size"] = int(c.config.sliding_window)
    softcap = getattr(c.config, "attn_logit_softcapping", None) if c.family.attn_softcap else None
    if softcap:
        extra["softcap"] = float(softcap)  # applied before the bias (onnxruntime 1.32), as transformers does
    out = b.node("GroupQueryAttention",
                 [*_qkv_inputs(b, c, p, qkv, attn), f"past_key_values.{i}.key", f"past_key_values.{i}.value", c.seqlens, c.total,
                  rope[0], rope[1], "position_ids", c.bias, "", "", "", "", "", "query_seqlens"],
                 [f"{p}/out", f"present.{i}.key", f"present.{i}.value"], f"{p}/gqa", MS,
                 num_heads=s.heads, kv_num_heads=s.kv_heads, scale=float(attn.scaling), do_rotary=1, rotary_interleaved=0,
                 **extra)[0]
    return _linear(b, out, f"{p}.o", [attn.o_proj.weight], [attn.o_proj.bias])


def _activation(b: _Builder, p: str, kind: str, g: str) -> str:
    """silu as x · sigmoid(x); gelu_pytorch_tanh as FastGelu, the same tanh formula in one kernel."""
    if kind == "silu":
        sig = b.node("Sigmoid", [g], [f"{p}/sigmoid"], f"{p}/sigmoid")[0]
        return b.node("Mul", [g, sig], [f"{p}/silu"], f"{p}/silu")[0]
    if kind == "gelu_pytorch_tanh":
        return b.node("FastGelu", [g], [f"{p}/gelu"], f"{p}/gelu", MS)[0]
    raise ValueError(f"no graph for the {kind!r} activation")  # families.py only names the two above


def _mlp(b: _Builder, c: _Context, i: int, h: str, layer: Any) -> str:
    mlp = layer.mlp
    p = f"layers.{i}.mlp"
    gu = _linear(b, h, f"{p}.gate_up", [mlp.gate_proj.weight, mlp.up_proj.weight], [mlp.gate_proj.bias, mlp.up_proj.bias])
    split = b.init(f"{p}.split", np.array([c.shape.intermediate, c.shape.intermediate], np.int64))
    g, u = b.node("Split", [gu, split], [f"{p}/gate", f"{p}/up"], f"{p}/split", axis=-1)
    act = _activation(b, p, c.family.activation[1], g)
    prod = b.node("Mul", [act, u], [f"{p}/prod"], f"{p}/prod")[0]
    return _linear(b, prod, f"{p}.down", [mlp.down_proj.weight], [mlp.down_proj.bias])


def _norm(b: _Builder, c: _Context, name: str, x: str, residual: str | None, weight: Any) -> tuple[str, str]:
    """RMSNorm of x (+ residual): returns (normed, new residual)."""
    gamma = b.init(f"{name}.weight", _gain(c.family, weight))
    if residual is None:
        return b.node("SimplifiedLayerNormalization", [x, gamma], [f"{name}/out"], name, axis=-1, epsilon=c.shape.eps)[0], x
    out = b.node("SkipSimplifiedLayerNormalization", [x, residual, gamma], [f"{name}/out", "", "", f"{name}/sum"], name, MS,
                 epsilon=c.shape.eps)
    return out[0], out[3]


def _sublayer_out(b: _Builder, c: _Context, name: str, x: str, layer: Any, norm: str | None) -> str:
    """A sublayer's output as the residual add takes it: normed first where the family has that norm."""
    return x if norm is None else _norm(b, c, name, x, None, getattr(layer, norm).weight)[0]


def _layer(b: _Builder, c: _Context, i: int, layer: Any, h: str, residual: str, rope: tuple[str, str], nxt: Any) -> tuple[str, str]:
    """One decoder layer from its normed input `h`; returns the next layer's normed input and residual.

    `nxt` is the norm that follows (the next layer's input norm, or the final norm): its residual
    add is fused into it.
    """
    f = c.family
    a = _sublayer_out(b, c, f"layers.{i}.post_attn_norm", _attention(b, c, i, h, layer, rope), layer, f.post_attention_norm)
    h, residual = _norm(b, c, f"layers.{i}.post_norm", a, residual, getattr(layer, f.pre_mlp_norm).weight)
    m = _sublayer_out(b, c, f"layers.{i}.post_mlp_norm", _mlp(b, c, i, h, layer), layer, f.post_mlp_norm)
    name = f"layers.{i + 1}.input_norm" if i + 1 < c.shape.layers else "final_norm"
    return _norm(b, c, name, m, residual, nxt.weight)


def _embed(b: _Builder, core: Any, family: Family) -> str:
    """Gather of the token rows, times the family's embedding scale.

    The scale is the module's own buffer cast to the weight dtype, as transformers multiplies by it
    (a bf16 Gemma checkpoint scales by the rounded value).
    """
    b.init("embed_tokens.weight", _weight(core.embed_tokens.weight))
    x = b.node("Gather", ["embed_tokens.weight", "input_ids"], ["embeds"], "embed", axis=0)[0]
    if not family.scaled_embedding:
        return x
    emb = core.embed_tokens
    scale = b.init("embed_scale", np.array(float(emb.embed_scale.to(emb.weight.dtype)), np.float32))
    return b.node("Mul", [x, scale], ["embeds_scaled"], "embed_scale")[0]


def _keep_last_positions(b: _Builder, h: str) -> str:
    """h[:, -logits_to_keep:] before the lm_head.

    A prefix pass needs the logits of its last position only, yet the lm_head is a fifth of the
    model's FLOPs per position. ``logits_to_keep`` is an input with a default (an initializer of
    the same name: every position), so callers that do not know it get the full logits.
    """
    b.init(LOGITS_TO_KEEP, np.array([KEEP_ALL], np.int64))
    b.init("keep_end", np.array([KEEP_ALL], np.int64))
    b.node("Neg", [LOGITS_TO_KEEP], ["keep_start"], "keep_start")
    return b.node("Slice", [h, "keep_start", "keep_end", "i1"], ["hidden_kept"], "keep_last")[0]


def _lm_head(b: _Builder, model: Any, h: str) -> None:
    """logits: the tied head reads the embedding once; a final soft-cap is tanh(x / c) · c."""
    cap = getattr(model.config, "final_logit_softcapping", None)
    out = "logits_uncapped" if cap else "logits"
    head = model.lm_head.weight
    if head.data_ptr() == model.model.embed_tokens.weight.data_ptr():
        # tied: read the embedding transposed instead of storing a second copy (quantize unties it)
        b.node("FusedMatMul", [h, "embed_tokens.weight"], [out], "lm_head", MS, transB=1, alpha=1.0)
    else:
        b.node("MatMul", [h, b.init("lm_head.weight", _weight(head).T)], [out], "lm_head")
    if cap:
        c = b.init("final_softcap", np.array(float(cap), np.float32))
        scaled = b.node("Div", [out, c], ["logits_scaled"], "softcap_div")[0]
        bounded = b.node("Tanh", [scaled], ["logits_tanh"], "softcap_tanh")[0]
        b.node("Mul", [bounded, c], ["logits"], "softcap_mul")


def _model_proto(b: _Builder, family: Family, s: DecoderShape, opset: int) -> Any:
    """Inputs, outputs and opsets around the collected nodes."""
    from onnx import TensorProto, helper

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [helper.make_tensor_value_info("input_ids", i64, ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", i64, ["batch_size", "total_sequence_length"]),
              helper.make_tensor_value_info("position_ids", i64, ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info(LOGITS_TO_KEEP, i64, [1])]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch_size", "logits_length", s.vocab])]
    for i in range(s.layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", f32,
                                                        ["batch_size", s.kv_heads, "past_sequence_length", s.head_dim]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", f32,
                                                         ["batch_size", s.kv_heads, "total_sequence_length", s.head_dim]))
    graph = helper.make_graph(b.nodes, f"ortrefine_{family.name}", inputs, outputs, b.inits)
    # IR 10, not the onnx package's newest: older onnxruntime builds (onnxruntime-gpu tops out at
    # 1.31 on this index, which reads IR ≤ 13) refuse newer IR versions outright
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)],
                             producer_name="ortrefine", ir_version=IR_VERSION)


def build_decoder_graph(model: Any, opset: int = 17) -> Any:
    """The fused ModelProto of a transformers causal LM of a known family (weights as fp32 initializers)."""
    family = family_of(model.config)
    s = DecoderShape.from_config(model.config)
    b = _Builder()
    ropes = _rotary_inputs(b, model, family, s)
    seqlens, total, bias = _preamble(b)
    c = _Context(family, s, model.config, seqlens, total, bias)
    core = model.model
    x = _embed(b, core, family)
    h, residual = _norm(b, c, "layers.0.input_norm", x, None, core.layers[0].input_layernorm.weight)
    for i, layer in enumerate(core.layers):
        nxt = core.layers[i + 1].input_layernorm if i + 1 < s.layers else core.norm
        h, residual = _layer(b, c, i, layer, h, residual, ropes[i], nxt)
    _lm_head(b, model, _keep_last_positions(b, h))
    return _model_proto(b, family, s, opset)
