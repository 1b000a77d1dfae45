"""Parity with transformers' torch model on tiny random llama and gpt2 models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

PROMPTS = ["Once upon a time", "The quick brown fox", "Why is the sky blue?"]


def hf_generate(model, tok, prompt: str, **kw) -> list[int]:
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, pad_token_id=0, eos_token_id=2, **kw)
    gen = out[0, ids["input_ids"].shape[1]:].tolist()
    return gen[: gen.index(2) + 1] if 2 in gen else gen


def test_logits_match_torch(tiny):
    arch, lm, model, tok = tiny
    for prompt in PROMPTS:
        ids = tok(prompt)["input_ids"]
        assert ids == lm.encode_prompt(prompt)
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0].numpy()
        got = lm.prefill(ids).logits[0]
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_greedy_matches_generate(tiny):
    arch, lm, model, tok = tiny
    for prompt in PROMPTS:
        ref = hf_generate(model, tok, prompt, do_sample=False, max_new_tokens=20)
        got = lm.generate(prompt, max_new_tokens=20).ids
        assert got == ref, (arch, prompt)


@pytest.mark.parametrize("length_penalty,early_stopping", [(1.0, False), (0.0, "never"), (2.0, True)])
def test_beam_matches_generate(tiny, length_penalty, early_stopping):
    arch, lm, model, tok = tiny
    for prompt in PROMPTS:
        ref = hf_generate(model, tok, prompt, do_sample=False, num_beams=4, max_new_tokens=16,
                          length_penalty=length_penalty, early_stopping=early_stopping)
        got = lm.generate(prompt, strategy="beam", num_beams=4, max_new_tokens=16,
                          length_penalty=length_penalty, early_stopping=early_stopping).ids
        assert got == ref, (arch, prompt)


def test_left_padded_batch_equals_one_by_one(tiny):
    arch, lm, model, tok = tiny
    seqs = [lm.encode_prompt(p) + lm.tokenizer.encode_plain(" and then it rained") for p in PROMPTS]
    plens = [len(lm.encode_prompt(p)) for p in PROMPTS]
    batched = lm.score_many(seqs, plens)
    for s, p, b in zip(seqs, plens, batched):
        single = lm.score(s[:p], [s[p:]]).token_logprobs[0]
        np.testing.assert_allclose(b, single, atol=1e-4)


def test_score_batch_of_continuations_equals_single(tiny):
    arch, lm, model, tok = tiny
    prompt = lm.encode_prompt(PROMPTS[0])
    conts = [lm.tokenizer.encode_plain(t) for t in [" there", " lived a cat who", " !"]]
    batched = lm.score(prompt, conts)
    for c, lp in zip(conts, batched.token_logprobs):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + c])).logits[0]
        ref = torch.log_softmax(logits, -1)[len(prompt) - 1 : -1].gather(1, torch.tensor(c)[:, None])[:, 0].numpy()
        np.testing.assert_allclose(lp, ref, atol=1e-4)
        np.testing.assert_allclose(lm.score(prompt, [c]).token_logprobs[0], lp, atol=1e-5)


def test_score_feeds_last_tokens_only_when_asked(tiny):
    """The last token of a continuation is a target only; asking for KV or logits feeds it."""
    arch, lm, model, tok = tiny
    prompt = lm.encode_prompt(PROMPTS[1])
    conts = [lm.tokenizer.encode_plain(t) for t in [" jumps over the lazy dog", " ran"]]
    conts.append(conts[0][:1])  # a one-token continuation next to longer ones: nothing of it is fed
    before = lm.forward_tokens
    lean = lm.score(prompt, conts)
    assert lm.forward_tokens - before == len(prompt) + len(conts) * (max(map(len, conts)) - 1)
    full = lm.score(prompt, conts, return_kv=True, return_logits=True)
    width = max(map(len, conts))
    assert full.kv.length == len(prompt) + width and full.logits.shape[:2] == (len(conts), width)
    for a, b in zip(lean.token_logprobs, full.token_logprobs):
        np.testing.assert_allclose(a, b, atol=1e-5)
    with torch.no_grad():  # the logits after the whole of the longest continuation: what was fed extra
        ref = model(torch.tensor([prompt + conts[0]])).logits[0, -1].numpy()
    np.testing.assert_allclose(full.logits[0, len(conts[0]) - 1], ref, atol=1e-4)
    only_first = lm.score(prompt, [c[:1] for c in conts])
    np.testing.assert_allclose([lp[0] for lp in only_first.token_logprobs], [lp[0] for lp in lean.token_logprobs], atol=1e-5)


def test_score_many_edges(tiny):
    arch, lm, model, tok = tiny
    seq = lm.encode_prompt(PROMPTS[2])
    out = lm.score_many([seq, seq], [len(seq), len(seq) - 1])
    assert len(out[0]) == 0 and len(out[1]) == 1
    np.testing.assert_allclose(out[1], lm.score(seq[:-1], [seq[-1:]]).token_logprobs[0], atol=1e-5)
    with pytest.raises(ValueError, match="prompt length"):
        lm.score_many([seq], [0])
    with pytest.raises(ValueError, match="one prompt length per sequence"):
        lm.score_many([seq, seq], [1])
    before = lm.forward_tokens
    out = lm.score_many([seq[:1], seq], [1, 2])  # a one-token sequence has nothing to score: not fed at all
    assert len(out[0]) == 0 and lm.forward_tokens - before == len(seq) - 1
    np.testing.assert_allclose(out[1], lm.score(seq[:2], [seq[2:]]).token_logprobs[0], atol=1e-5)


def test_io_binding_path_matches_a_plain_run(tiny):
    """The CUDA path (IO binding, present KV kept as OrtValues) run on the CPU: same numbers, and
    `keep_last` still honoured where the graph's logits_to_keep cannot be bound."""
    import onnxruntime as ort

    arch, lm, model, tok = tiny
    ids = lm.encode_prompt(PROMPTS[0])
    ref_head = lm.prefill(ids, keep_last=1)
    ref_step = lm.forward(np.array([[5]]), ref_head.kv)
    ref_greedy = lm.generate(PROMPTS[1], max_new_tokens=8).ids
    lm.use_io_binding = True
    try:
        head = lm.prefill(ids, keep_last=1)
        assert head.logits.shape == ref_head.logits.shape
        assert all(isinstance(a, ort.OrtValue) for a in head.kv.arrays)
        np.testing.assert_allclose(head.logits, ref_head.logits, atol=1e-5)
        np.testing.assert_allclose(lm.forward(np.array([[5]]), head.kv).logits, ref_step.logits, atol=1e-5)
        assert lm.generate(PROMPTS[1], max_new_tokens=8).ids == ref_greedy
    finally:
        lm.use_io_binding = False


def test_decode_steps_on_a_shared_kv_buffer_match_forward(tiny):
    """Fused graph on the CPU: GroupQueryAttention appends to one preallocated buffer bound as both
    past and present; the logits equal plain `forward` steps and torch's. Other graphs step through
    `forward`."""
    from ortrefine.runtime.session import PlainSteps, SharedKVSteps

    arch, lm, model, tok = tiny
    ids = lm.encode_prompt(PROMPTS[2])
    fed = [5, 17, 3, 40, 9]
    head = lm.prefill(ids, keep_last=1)
    steps = lm.steps(head.kv, len(fed))
    fused = (lm.bundle.manifest.get("graph") or {}).get("kind") == "fused"
    assert isinstance(steps, SharedKVSteps if fused else PlainSteps)
    plain = PlainSteps(lm, head.kv)
    before = lm.forward_tokens
    got = [steps.step(t) for t in fed]
    want = [plain.step(t) for t in fed]
    np.testing.assert_allclose(np.array(got), np.array(want), atol=1e-5)
    assert lm.forward_tokens - before == 2 * len(fed)
    with torch.no_grad():
        ref = model(torch.tensor([ids + fed])).logits[0, -1].numpy()
    np.testing.assert_allclose(got[-1], ref, atol=1e-4)
    if fused:
        # the buffer holds what plain steps return as the present cache, written in place
        np.testing.assert_allclose(steps.buffers[0][:, :, : len(ids) + len(fed)], plain.kv.arrays[0], atol=1e-5)
        with pytest.raises(ValueError, match="all are used"):
            steps.step(1)  # capacity: the prompt + 5
        assert isinstance(lm.steps(head.kv.repeat(2), 5), PlainSteps)  # one row only


def test_sampling_is_seeded(tiny):
    arch, lm, model, tok = tiny
    a = lm.generate("Once upon", strategy="sample", seed=3, top_k=20, top_p=0.9, max_new_tokens=12).ids
    b = lm.generate("Once upon", strategy="sample", seed=3, top_k=20, top_p=0.9, max_new_tokens=12).ids
    c = [lm.generate("Once upon", strategy="sample", seed=s, max_new_tokens=12).ids for s in range(4, 9)]
    assert a == b
    assert any(x != a for x in c)


def test_generate_logprobs_equal_rescoring(tiny):
    """Greedy/sample log-probs come from the decode loop's own logits; they equal a fresh scoring pass."""
    arch, lm, model, tok = tiny
    for strategy in ("greedy", "sample", "beam"):
        out = lm.generate("Once upon a time", strategy=strategy, seed=1, max_new_tokens=10)
        rescored = lm.score(out.prompt_ids, [out.ids]).token_logprobs[0]
        np.testing.assert_allclose(out.token_logprobs, rescored, atol=1e-4)
