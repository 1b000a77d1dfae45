"""The fused Gemma-3 graph: built from the same decoder builder as llama's, checked against Optimum's
export and torch on prompts longer than the sliding window, cached steps, left-padded batches and
greedy decoding; options it does not write are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.integration  # needs torch: the conftest skips it without the export extra

WINDOW = 4
LAYER_TYPES = ("sliding_attention", "full_attention", "sliding_attention", "sliding_attention")
ATOL = 1e-4  # the llama graph's tolerance (tests/test_llama_graph.py, the tiny catalog entries)


def build_tiny_gemma3(seed: int = 0, **overrides):
    """(torch Gemma3ForCausalLM in eval mode, tokenizer): random weights, norm gains off their zero init.

    Gemma initializes its RMSNorm weights to 0 (a gain of 1 + 0); drawing them makes a missing
    ``1 + w`` visible. Sliding window, local rope base, linear rope scaling and the query scalar all
    differ from their global / head_dim counterparts so that mixing them up shows.
    """
    import torch
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    from ortrefine.export.tiny import build_tokenizer

    tok = build_tokenizer(add_bos=True, chat=False)
    config = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=len(LAYER_TYPES),
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=WINDOW, layer_types=list(LAYER_TYPES),
        query_pre_attn_scalar=24, rope_theta=10000.0, rope_local_base_freq=100.0, rope_scaling={"rope_type": "linear", "factor": 2.0},
        max_position_embeddings=256, initializer_range=0.2, bos_token_id=0, eos_token_id=2, pad_token_id=0, **overrides,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.5)
    for key, value in (("eos_token_id", 2), ("pad_token_id", 0), ("bos_token_id", 0)):
        setattr(model.generation_config, key, value)
    return model.eval(), tok


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """(torch model, tokenizer, bundle path): exported like any checkpoint, Optimum's graph then the fused one."""
    from ortrefine.export.onnx_export import ExportConfig, write_bundle
    from ortrefine.export.sources import Source

    model, tok = build_tiny_gemma3()
    out = tmp_path_factory.mktemp("gemma") / "tiny-gemma3"
    result = write_bundle(model, tok, Source("local", "tiny-gemma3", validate_atol=ATOL), out, ExportConfig("tiny-gemma3", output=out))
    return model, tok, result.path


@pytest.fixture(scope="module")
def gemma_lm(gemma):
    import ortrefine

    return ortrefine.load(gemma[2], provider="cpu")


def _torch_logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


def test_gemma_export_is_fused_and_checked(gemma):
    import onnx

    manifest = json.loads((gemma[2] / "ortrefine.json").read_text())
    g = manifest["graph"]
    assert g["kind"] == "fused" and g["family"] == "gemma3"
    ops = g["ops_after"]
    assert ops["GroupQueryAttention"] == ops["FastGelu"] == len(LAYER_TYPES) and "RotaryEmbedding" not in ops
    assert g["nodes_after"] < g["nodes_before"] / 4
    vs = g["vs_optimum"]
    assert vs["max_abs_diff"] <= ATOL and vs["max_kv_diff"] <= ATOL and vs["greedy_equal"]
    assert all(c["ok"] for c in manifest["validation"]["checks"])
    proto = onnx.load(str(gemma[2] / "model.onnx"), load_external_data=False)
    windows = [next((a.i for a in n.attribute if a.name == "local_window_size"), -1) for n in proto.graph.node if n.op_type == "GroupQueryAttention"]
    assert windows == [WINDOW if t == "sliding_attention" else -1 for t in LAYER_TYPES]
    inits = {t.name for t in proto.graph.initializer}
    assert {"rotary.cos", "rotary_local.cos", "embed_scale"} <= inits and "lm_head.weight" not in inits  # tied: stored once


def test_prompt_longer_than_the_window_matches_torch(gemma, gemma_lm):
    """Every position of a prompt several windows long: the local layers see only the last WINDOW keys."""
    ids = [[0, *range(40, 40 + 4 * WINDOW)]]
    np.testing.assert_allclose(gemma_lm.forward(np.array(ids)).logits, _torch_logits(gemma[0], ids), atol=ATOL, rtol=ATOL)


def test_cached_steps_match_torch(gemma, gemma_lm):
    """A prefix, then one and three tokens on its cache: the window slides over cached keys too."""
    full = [0, *range(50, 50 + 11)]
    head = gemma_lm.forward(np.array([full[:7]]))
    one = gemma_lm.forward(np.array([full[7:8]]), head.kv)
    three = gemma_lm.forward(np.array([full[8:]]), one.kv)
    got = np.concatenate([head.logits[0], one.logits[0], three.logits[0]])
    np.testing.assert_allclose(got, _torch_logits(gemma[0], [full])[0], atol=ATOL, rtol=ATOL)


def test_left_padded_rows_then_cached_steps_match_torch(gemma, gemma_lm):
    """Left-padded prompts of different lengths, then cached steps: each row as if alone."""
    rows = [[0, 7, 8], [0, 10, 11, 12, 13, 14, 15, 16]]
    steps = [[[21], [22]], [[23, 24], [25, 26]]]
    width = max(map(len, rows))
    ids = np.array([[0] * (width - len(r)) + r for r in rows])
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    out = gemma_lm.forward(ids, attention_mask=mask)
    got = [[out.logits[b, -1]] for b in range(2)]
    kv = out.kv
    for step in steps:
        mask = np.concatenate([mask, np.ones((2, len(step[0])), np.int64)], axis=1)
        out = gemma_lm.forward(np.array(step), kv, attention_mask=mask)
        kv = out.kv
        for b in range(2):
            got[b].extend(out.logits[b])
    for b, r in enumerate(rows):
        full = r + [t for step in steps for t in step[b]]
        np.testing.assert_allclose(np.stack(got[b]), _torch_logits(gemma[0], [full])[0, len(r) - 1:], atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("prompt", ["Once upon a time", "Why is the sky blue? Sunlight is scattered"])
def test_greedy_matches_generate(gemma, gemma_lm, prompt):
    import torch

    model, tok, _ = gemma
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, do_sample=False, max_new_tokens=20, pad_token_id=0, eos_token_id=2)
    ref = out[0, ids["input_ids"].shape[1]:].tolist()
    ref = ref[: ref.index(2) + 1] if 2 in ref else ref
    assert gemma_lm.generate(prompt, max_new_tokens=20).ids == ref


def test_final_softcap_is_written_and_attention_softcap_follows_transformers():
    """final_logit_softcapping becomes tanh(x / c) · c; attn_logit_softcapping is ignored by
    transformers' Gemma-3 attention, so the graph ignores it too (and still matches torch)."""
    import onnxruntime as ort

    from ortrefine.export.decoder_graph import build_decoder_graph

    model, _ = build_tiny_gemma3(seed=1, final_logit_softcapping=2.0, attn_logit_softcapping=3.0)
    proto = build_decoder_graph(model)
    assert "Tanh" in {n.op_type for n in proto.graph.node}
    assert not any(a.name == "softcap" for n in proto.graph.node for a in n.attribute)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.array([[0, *range(60, 60 + 3 * WINDOW)]])
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None]}
    feed.update({f"past_key_values.{i}.{k}": np.zeros((1, 2, 0, 16), np.float32) for i in range(len(LAYER_TYPES)) for k in ("key", "value")})
    got = session.run(["logits"], feed)[0]
    ref = _torch_logits(model, ids)
    assert np.abs(ref).max() < 2.0  # the cap binds
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("change,message", [
    (dict(use_bidirectional_attention=True), "bidirectional"),
    (dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}), "rope scaling"),
    (dict(hidden_activation="relu"), "gelu_pytorch_tanh MLP only"),
])
def test_unwritable_gemma_options_are_refused(change, message):
    from transformers import Gemma3TextConfig

    from ortrefine.errors import ExportError
    from ortrefine.export.families import family_of

    assert family_of(Gemma3TextConfig()).name == "gemma3"
    with pytest.raises(ExportError, match=message):
        family_of(Gemma3TextConfig(**change))
