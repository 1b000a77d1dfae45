"""Refiner invariants on tiny random ONNX models (real KV slicing, real batching)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ortrefine.runtime.refine import RefineConfig, _Refiner, refine

WORDS = ["Once", "upon", "a", "time", "the", "quick", "fox", "sky", "blue", "park", "dog", "river"]


def test_mid_padded_suffix_scoring_equals_full_recomputation(tiny):
    """Rows with different prefix lengths share one batch (padding between prefix and suffix)."""
    _, lm, _, _ = tiny
    prompt = lm.encode_prompt("Once upon a time")
    y = lm.generate(prompt, max_new_tokens=12).ids
    r = _Refiner(lm, "x", RefineConfig())
    full = lm.prefill(prompt + y)
    starts = np.array([2, 5, 9, 0])
    tails = [[7, 8, 9], [11], [12, 13], [5, 6, 7, 8]]
    kv, mask = r._stack_prefix(full.kv, len(prompt) + starts)
    width = max(map(len, tails))
    tok = np.zeros((len(tails), width), dtype=np.int64)
    new = np.zeros_like(tok)
    for q, t in enumerate(tails):
        tok[q, : len(t)], new[q, : len(t)] = t, 1
    out = lm.forward(tok, kv, np.concatenate([mask, new], axis=1))
    for q, (s, t) in enumerate(zip(starts, tails)):
        ref = lm.prefill(prompt + y[:s] + t).logits[0, -len(t):]
        np.testing.assert_allclose(out.logits[q, : len(t)], ref, atol=1e-4)


def brute_force_best(lm, r, prompt_ids, ids, cfg):
    """J of every single allowed edit among the proposals at every position, scored from scratch."""
    best = -np.inf
    state = r.build_state(ids)
    for i in range(len(ids)):
        for c in r.proposals(state, i):
            cand = ids[: c.start] + c.pending
            if not r.canonical(cand, c.start):
                continue
            lps = lm.score(prompt_ids, [cand]).token_logprobs[0].astype(np.float64)
            J, _ = r.judge([cand], [lps], None)
            best = max(best, float(J[0]))
    return best, state.J


@pytest.mark.parametrize("objectives", [["logprob"], ["mean-logprob:alpha=0.7", "repetition=0.5"]])
def test_converged_keep_refinement_is_coordinatewise_optimal(tiny, objectives):
    _, lm, _, _ = tiny
    cfg = RefineConfig(objectives=objectives, mode="keep", top_k=4, edits=("substitute", "insert", "delete"),
                       sweeps=100, max_new_tokens=10)
    res = refine(lm, "The quick fox", cfg)
    assert res.stop_reason == "converged"
    r = _Refiner(lm, "The quick fox", cfg)
    prompt_ids = res.prompt_ids
    r.build_context("The quick fox", len(res.initial.ids))
    r.start(prompt_ids)
    best_edit, J = brute_force_best(lm, r, prompt_ids, res.final.ids, cfg)
    assert J == pytest.approx(res.objective_after["total"], abs=1e-4)
    assert best_edit <= J + 1e-4


@pytest.mark.parametrize("mode", ["keep", "regenerate"])
def test_pruning_is_exact(tiny, mode):
    _, lm, _, _ = tiny
    for prompt in ["Once upon a time", "The sky is blue"]:
        a = refine(lm, prompt, RefineConfig(mode=mode, top_k=4, max_new_tokens=12, positions_per_batch=2, chunk=3, screen=0))
        b = refine(lm, prompt, RefineConfig(mode=mode, top_k=4, max_new_tokens=12, positions_per_batch=2, chunk=3, screen=0, prune=False))
        assert a.final.ids == b.final.ids
        assert a.objective_after["total"] == pytest.approx(b.objective_after["total"], abs=1e-6)
        assert b.cost.pruned == 0 and a.cost.forward_tokens <= b.cost.forward_tokens


def test_drafting_is_exact(tiny):
    """Verifying drafted tokens gives the same regenerated suffixes as one greedy step at a time."""
    _, lm, _, _ = tiny
    accepted = []
    for prompt in ["Once upon a time", "The sky is blue", "The quick fox"]:
        cfgs = [RefineConfig(top_k=4, max_new_tokens=14, positions_per_batch=3, draft=d, sweeps=2) for d in (0, 3, 8)]
        runs = [refine(lm, prompt, c) for c in cfgs]
        assert runs[0].cost.draft_tokens == 0
        accepted.append(sum(r.cost.draft_accepted for r in runs[1:]))
        for other in runs[1:]:
            assert other.final.ids == runs[0].final.ids
            assert [e.position for e in other.edits] == [e.position for e in runs[0].edits]
            assert other.objective_after["total"] == pytest.approx(runs[0].objective_after["total"], abs=1e-5)
    assert sum(accepted) > 0  # some drafts were really verified and kept


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=5),
    mode=st.sampled_from(["keep", "regenerate"]),
    order=st.sampled_from(["l2r", "r2l", "random", "worst-first"]),
    top_k=st.integers(1, 5),
    ppb=st.integers(1, 3),
    objective=st.sampled_from([["logprob"], ["mean-logprob"], ["logprob", "repetition=2"], ["logprob", "length=0.5"]]),
    screen=st.sampled_from([0, 0, 1, 3]),
)
def test_refined_objective_never_below_initial(tiny_bundles, words, mode, order, top_k, ppb, objective, screen):
    import ortrefine

    lm = ortrefine.load(tiny_bundles["llama"], provider="cpu")
    res = refine(lm, " ".join(words), RefineConfig(objectives=objective, mode=mode, order=order, top_k=top_k,
                                                  positions_per_batch=ppb, max_new_tokens=8, seed=1,
                                                  screen=screen, screen_keep=2))
    assert res.objective_after["total"] >= res.objective_before["total"] - 1e-9
    assert res.gain == pytest.approx(sum(e.delta for e in res.edits), abs=1e-4)
    # J after is the J of the final ids, scored from scratch
    lps = lm.score(res.prompt_ids, [res.final.ids]).token_logprobs[0]
    if objective == ["logprob"]:
        assert res.objective_after["logprob"] == pytest.approx(float(lps.sum()), abs=1e-4)


def test_coverage_proposes_missing_keyword_tokens(tiny):
    _, lm, _, _ = tiny
    res = refine(lm, "Say something", RefineConfig(objectives=["logprob", "coverage=50"], keywords=("dog",),
                                                  mode="keep", top_k=1, max_new_tokens=6, initial=" the sky is blue"))
    assert res.objective_before["coverage"] == 0
    # with a heavy weight the keyword's first token is proposed and accepted somewhere
    first_tokens = {lm.tokenizer.encode_plain(" dog")[0], lm.tokenizer.encode_plain("dog")[0]}
    assert any(e.new_id in first_tokens for e in res.edits)


def test_same_seed_same_result(tiny):
    _, lm, _, _ = tiny
    cfg = RefineConfig(order="random", seed=3, top_k=3, max_new_tokens=8)
    assert refine(lm, "Once upon", cfg).to_dict()["edits"] == refine(lm, "Once upon", cfg).to_dict()["edits"]


def test_reference_term_scores_reference_along_prefixes(tiny):
    _, lm, _, _ = tiny
    ref = " the quick fox"
    res = refine(lm, "Say", RefineConfig(objectives=["reference:overlap=0"], reference=ref, mode="keep", top_k=3,
                                         max_new_tokens=6, initial=" the sky is"))
    # J(Y0) = Σ_t log p(R_t | X, Y0<t) / |R| over min(|Y0|, |R|) positions, checked by direct scoring
    p = res.prompt_ids
    y0, r_ids = res.initial.ids, lm.tokenizer.encode_plain(ref)
    n = min(len(y0), len(r_ids))
    manual = sum(float(lm.score(p + y0[:t], [[r_ids[t]]]).totals[0]) for t in range(n)) / len(r_ids)
    assert res.objective_before["reference"] == pytest.approx(manual, abs=1e-4)
    assert res.objective_after["total"] >= res.objective_before["total"]


def test_batch_dependent_bundle_scores_one_by_one(tiny_bundles, tmp_path):
    """A bundle marked batch_invariant=false (dynamic int8) never batches candidates."""
    import json
    import shutil

    import ortrefine

    b = shutil.copytree(tiny_bundles["llama"], tmp_path / "dyn")
    manifest = json.loads((b / "ortrefine.json").read_text())
    manifest["batch_invariant"] = False
    (b / "ortrefine.json").write_text(json.dumps(manifest))
    lm_dyn, lm = ortrefine.load(b, provider="cpu"), ortrefine.load(tiny_bundles["llama"], provider="cpu")
    cfg = RefineConfig(top_k=3, max_new_tokens=8)
    seen = []
    original = lm_dyn.forward
    lm_dyn.forward = lambda ids, *a, **k: (seen.append(ids.shape[0]), original(ids, *a, **k))[1]
    a, b_ = refine(lm_dyn, "Once upon", cfg), refine(lm, "Once upon", cfg)
    assert a.config["max_rows"] == 1 and max(seen) == 1
    assert a.final.ids == b_.final.ids  # fp32 underneath: same answer, just unbatched


@pytest.mark.parametrize("strategy", ["greedy", "beam", "guided"])
def test_the_prompt_pass_is_run_once_and_left_unchanged_by_the_initial_decode(tiny_bundles, monkeypatch, strategy):
    """Y⁰'s decode and the search share one pass over the prompt. The decode must leave it as it
    was: the same run with the pass forgotten after the decode (the search then runs it again)
    ends on the same Y* with the same J."""
    import ortrefine
    from ortrefine.runtime.decoding import GenerationConfig
    from ortrefine.runtime.refine.api import _retokenized

    lm = ortrefine.load(tiny_bundles["llama"], provider="cpu")
    opts = {"max_new_tokens": 10, "top_k": 4}
    if strategy == "guided":
        opts["keywords"] = ("river", "dog")
    else:
        opts["initial_strategy"] = GenerationConfig(strategy=strategy, num_beams=3 if strategy == "beam" else 1, max_new_tokens=10)
    cfg = RefineConfig(**opts)
    prompt = lm.encode_prompt("Once upon a time the quick fox")
    calls = []
    real = type(lm).prefill
    monkeypatch.setattr(type(lm), "prefill", lambda self, ids, keep_last=None: calls.append(list(ids)) or real(self, ids, keep_last))
    shared = refine(lm, prompt, cfg)
    once = calls.count(prompt)
    assert once == (2 if strategy == "beam" else 1)  # beam's decode scores its output from the prompt again
    assert shared.cost.initial_forward_tokens >= len(prompt)

    calls.clear()
    text = lm.tokenizer.decode(prompt)  # what refine() gives J as the prompt's text
    r = _Refiner(lm, text, cfg)
    y0 = r.initial_output(prompt)
    r._head = None  # forgotten: start() runs its own pass
    r.build_context(text, len(y0), prompt)
    first, final, _, _, _ = r.run(prompt, y0)
    _retokenized(r, final)  # refine()'s last pass, so that the costs compare
    assert calls.count(prompt) == once + 1
    assert first.ids == shared.initial.ids and final.ids == shared.final.ids
    assert final.J == shared.objective_after["total"]
    # the search counts the prompt's pass where it ran it, and only there
    assert r.cost.forward_tokens == shared.cost.forward_tokens + len(prompt)
    assert r.cost.passes == shared.cost.passes + 1
