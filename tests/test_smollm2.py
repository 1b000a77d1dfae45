"""The default model really works: export SmolLM2-135M from its GGUF and match torch greedy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol_torch():
    from ortrefine.export.sources import load_source, resolve_source

    torch.set_num_threads(1)  # torch's pool fights ORT's on small boxes (FACTS.md)
    return load_source(resolve_source("smollm2-135m"))


@pytest.fixture(scope="module")
def smol_lm(smollm2_bundle):
    import ortrefine

    return ortrefine.load(smollm2_bundle, provider="cpu")


def test_manifest_records_special_tokens(smol_lm):
    m = smol_lm.bundle.manifest
    assert m["special_tokens"]["eos_ids"] == [2]  # generation_config's <|im_end|>, not the tokenizer's id 1
    assert m["context_length"] == 8192 and m["chat_template"] is True
    assert m["validation"]["checks"] and all(c["max_abs_diff"] < 1e-3 for c in m["validation"]["checks"])


def test_greedy_16_equals_torch(smol_lm, smol_torch):
    model, tok = smol_torch
    prompt = "Once upon a time, in a small village by the sea, there lived"
    ids = tok(prompt, return_tensors="pt")
    assert ids["input_ids"][0].tolist() == smol_lm.encode_prompt(prompt)
    with torch.no_grad():
        ref = model.generate(**ids, do_sample=False, max_new_tokens=16)[0, ids["input_ids"].shape[1]:].tolist()
    got = smol_lm.generate(prompt, max_new_tokens=16)
    assert got.ids == ref
    with torch.no_grad():
        logits = model(ids["input_ids"]).logits[0].numpy()
    np.testing.assert_allclose(smol_lm.prefill(smol_lm.encode_prompt(prompt)).logits[0], logits, atol=1e-3)


def test_chat_prompt_has_single_bos_and_stops_at_end_of_turn(smol_lm, smol_torch):
    model, tok = smol_torch
    q = "What is the capital of France?"
    ref = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
    ids = smol_lm.encode_prompt(q, chat=True)
    assert ids == list(ref) and ids[:2] != [1, 1]
    out = smol_lm.generate(q, chat=True, max_new_tokens=48)
    assert "Paris" in out.text
    if out.finish_reason == "eos":
        assert out.ids[-1] == 2 and "<|im_end|>" not in out.text


def test_int4_from_the_gguf_blocks_is_the_files_model(smollm2_bundle, tmp_path):
    """The default int4 of a GGUF-exported bundle takes the file's Q4_1 and Q8_0 blocks: the same model
    to within MatMulNBits' int8 activations, where re-quantizing the floats (rtn) is far off (KL ~0.3)."""
    from ortrefine.export.quantize import QuantizeConfig, quantize

    r = quantize(QuantizeConfig(smollm2_bundle, "int4", out=tmp_path / "int4"))
    q = r.manifest["quantization"]
    assert q["algo"] == "gguf" and q["gguf"]["layout"] == "exact"
    assert q["gguf"]["types"] == {"Q4_1": 120, "Q8_0": 1} and q["gguf"]["fallback"] == []
    assert q["gguf"]["correction_matmuls"] == 120 and r.ops["MatMulNBits"] == 121
    assert q["gguf"]["embedding_gathers"] == {"embed": "lm_head"} and r.ops["GatherBlockQuantized"] == 1
    assert r.size_bytes < 0.25 * r.parent_size_bytes      # the embedding stored once, in 8 bits
    assert r.gate.mean_kl < 0.01 and r.gate.top1_agreement > 0.9 and r.gate.ppl_ratio < 1.02


def test_int4_with_fp32_compute_but_the_8bit_head_agrees_with_itself(smollm2_bundle, tmp_path):
    """--accuracy-level 1 --accuracy-level-8bit 4: fp32 compute for the 120 Q4_1 projections, int8
    activations for the Q8_0 head alone. The head's rounding is row by row, so a text's log-probs
    are the same from a full pass and from decode steps (level 4 everywhere: 0.04 nats/token apart,
    as int8 rounding inside the layers amplifies the passes' float differences)."""
    from collections import Counter

    from nbits import levels

    import ortrefine
    from ortrefine.export.quantize import QuantizeConfig, quantize

    r = quantize(QuantizeConfig(smollm2_bundle, "int4", accuracy_level=1, accuracy_level_8bit=4, out=tmp_path / "l1-head4"))
    assert levels(r.path) == Counter({(4, 1): 120, (8, 4): 1})
    assert r.gate.mean_kl < 0.002 and r.gate.top1_agreement > 0.95
    lm = ortrefine.load(r.path, provider="cpu")
    g = lm.generate("The woman rides a bicycle", max_new_tokens=24)
    full = np.asarray(lm.score(g.prompt_ids, [g.ids]).token_logprobs[0], dtype=np.float64)
    assert np.abs(full - np.asarray(g.token_logprobs, dtype=np.float64)).mean() < 1e-3


def test_the_end_repair_ends_a_loop_the_sweep_regrows(smol_lm):
    """The default refine of this prompt keeps greedy's loop ("I'll be sitting on the floor." four
    times: every re-decoded suffix regrows it); the end repair ends it at a real sentence end,
    with the model's own eos, as a clean prefix of what the sweep left."""
    from ortrefine import RefineConfig, refine
    from ortrefine.degeneration import is_degenerate

    prompt = "I will sit on the floor and"
    off = refine(smol_lm, prompt, RefineConfig(end_repair=False))
    on = refine(smol_lm, prompt, RefineConfig())
    assert is_degenerate(off.final.text, prompt) and off.cost.end_repairs == 0
    assert not is_degenerate(on.final.text, prompt) and on.objective_after["guard"] == 0.0
    assert on.final.ids[-1] in smol_lm.eos_ids and on.edits[-1].kind == "end" and on.cost.end_repairs == 1
    assert off.final.text.startswith(on.final.text) and on.final.text.endswith(".") and len(on.final.text.split()) >= 3


def test_a_keyword_chat_prompt_is_refined_after_the_answered_examples(smol_lm):
    """The default keyword refine reads the prompt after the answered example turns, and still
    puts every concept into one real sentence; --no-examples gives the plain chat prompt."""
    from ortrefine import RefineConfig, refine
    from ortrefine.lexicon import covered_keywords, is_keyword_list
    from ortrefine.runtime.examples import default_examples

    prompt, kw = "Write one sentence that uses all of these words: accept, award, stage, walk.", ("accept", "award", "stage", "walk")
    r = refine(smol_lm, prompt, RefineConfig(chat=True, keywords=kw))
    shown = smol_lm.tokenizer.decode(r.prompt_ids)
    assert all(answer in shown for _, answer in default_examples()) and shown.rstrip().endswith("assistant")
    assert sorted(covered_keywords(r.final.text, kw)) == sorted(kw) and not is_keyword_list(r.final.text, kw)
    assert r.final.text.count(".") == 1 and r.final.text.endswith(".")
    plain = refine(smol_lm, prompt, RefineConfig(chat=True, keywords=kw, examples=False))
    assert plain.prompt_ids == smol_lm.tokenizer.encode(prompt, chat=True)
