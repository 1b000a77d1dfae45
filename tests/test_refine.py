"""Refiner: exact traces on a scripted LM, invariants on a tiny ONNX model, bad input."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import pytest

from fakelm import CHARS, table_lm
from ortrefine.errors import ConfigError, ObjectiveError, UnknownNameError
from ortrefine.runtime.refine import ORDERS, RefineConfig, refine

TRAP = {"a": {"b": 0.5, "c": 0.4}, "b": {"d": 0.35, "e": 0.33, "f": 0.3}, "c": {"d": 0.9}, "e": {"d": 0.9}}


def lp(lm, context: str, nxt: str) -> float:
    ids = [CHARS.index(c) for c in context]
    return float(lm.next_logprobs(ids)[CHARS.index(nxt)])


def seq_lp(lm, prompt: str, out: str) -> float:
    return sum(lp(lm, prompt + out[:t], out[t]) for t in range(len(out)))


@pytest.mark.parametrize("mode", ["keep", "regenerate"])
def test_exact_trace_greedy_trap(mode):
    lm = table_lm(TRAP)
    r = refine(lm, "a", RefineConfig(mode=mode, top_k=3, max_new_tokens=2))
    assert r.initial.text == "bd"  # greedy: b (0.5) then d (0.35)
    assert r.final.text == "cd"  # c (0.4) then d (0.9) is more likely overall
    assert [(e.position, e.kind, e.old_token, e.new_token) for e in r.edits] == [(0, "substitute", "b", "c")]
    expected = seq_lp(lm, "a", "cd") - seq_lp(lm, "a", "bd")
    assert r.edits[0].delta == pytest.approx(expected, abs=1e-5)
    assert r.objective_after["total"] == pytest.approx(seq_lp(lm, "a", "cd"), abs=1e-5)
    assert r.final_retokenized["same_ids"] and r.stop_reason == "sweeps"


class LayoutDependentLM:
    """The TRAP table, except that a plain pass (no attention mask: how the refiner rebuilds its
    state) finds 'd' after 'c' far less likely than the refiner's batched candidate passes do: a
    stand-in for kernels whose numerics depend on the batch layout (int4 MatMulNBits differs by
    ~0.1 nats on SmolLM2)."""

    def __init__(self) -> None:
        self.inner = table_lm(TRAP)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def forward(self, input_ids, past=None, attention_mask=None, keep_last=None):
        out = self.inner.forward(input_ids, past, attention_mask)
        if attention_mask is None:
            after_c = np.asarray(input_ids) == CHARS.index("c")
            out.logits[after_c, CHARS.index("d")] -= 5.0
        if keep_last is not None:
            out.logits = out.logits[:, -keep_last:]
        return out


@pytest.mark.parametrize("mode", ["keep", "regenerate"])
def test_edit_accepted_only_if_the_full_pass_agrees(mode):
    """Batched scoring says b → c gains (as in the trap); the full pass says "cd" is worse: no edit."""
    lm = LayoutDependentLM()
    r = refine(lm, "a", RefineConfig(mode=mode, top_k=3, max_new_tokens=2, sweeps=3))
    assert r.initial.text == "bd"
    assert r.final.text == "bd" and r.edits == []
    assert r.cost.rescore_rejected >= 1 and r.stop_reason == "converged"
    assert r.objective_after["total"] == r.objective_before["total"]


def test_keep_mode_delete():
    lm = table_lm(TRAP)
    r = refine(lm, "a", RefineConfig(objectives=["logprob"], mode="keep", edits=("delete",), initial="bed", max_new_tokens=3))
    assert [(e.position, e.kind, e.old_token, e.new_token) for e in r.edits] == [(1, "delete", "e", None)]
    assert r.final.text == "bd"
    assert r.edits[0].delta == pytest.approx(seq_lp(lm, "a", "bd") - seq_lp(lm, "a", "bed"), abs=1e-5)


def test_keep_mode_insert():
    lm = table_lm({"a": {"b": 0.5}, "b": {"e": 0.9}, "e": {"d": 0.9}})
    r = refine(lm, "a", RefineConfig(mode="keep", edits=("insert",), initial="bd", top_k=2, max_new_tokens=3))
    assert [(e.position, e.kind, e.old_token, e.new_token) for e in r.edits] == [(1, "insert", None, "e")]
    assert r.final.text == "bed"
    # the length cap forbids inserting past it
    r2 = refine(lm, "a", RefineConfig(mode="keep", edits=("insert",), initial="bd", top_k=2, max_new_tokens=2))
    assert r2.edits == []


def test_orders_visit_positions_as_named():
    lm = table_lm(TRAP)
    # two independent improvable positions: which is taken first shows the order
    state = type("S", (), {"ids": [1, 2, 3, 4], "lp": np.array([-1.0, -3.0, -0.5, -2.0])})()
    rng = np.random.default_rng(0)
    assert ORDERS.get("l2r")(state, rng) == [0, 1, 2, 3]
    assert ORDERS.get("r2l")(state, rng) == [3, 2, 1, 0]
    assert ORDERS.get("worst-first")(state, rng) == [1, 3, 0, 2]
    assert sorted(ORDERS.get("random")(state, rng)) == [0, 1, 2, 3]
    for order in [o for o in ORDERS.names() if o != "gradient-norm"]:
        r = refine(lm, "a", RefineConfig(order=order, mode="keep", top_k=3, max_new_tokens=2, sweeps=3))
        assert r.final.text == "cd", order


def test_random_order_is_seeded():
    lm = table_lm(TRAP)
    runs = [refine(lm, "a", RefineConfig(order="random", seed=5, initial="bed", mode="keep", edits=("substitute", "delete"), max_new_tokens=3)) for _ in range(2)]
    assert runs[0].to_dict()["edits"] == runs[1].to_dict()["edits"]
    assert runs[0].final.ids == runs[1].final.ids


def test_budgets_stop_where_they_should():
    lm = table_lm(TRAP)
    r = refine(lm, "a", RefineConfig(mode="keep", top_k=3, max_new_tokens=2, budget_tokens=1))
    assert r.stop_reason == "budget-tokens" and r.edits == [] and r.final.ids == r.initial.ids
    r = refine(lm, "a", RefineConfig(mode="keep", top_k=3, max_new_tokens=2, budget_seconds=1e-9))
    assert r.stop_reason == "budget-seconds" and r.edits == []
    # a budget that allows the first position but not the second: exactly one group scored
    r = refine(lm, "a", RefineConfig(mode="keep", top_k=3, max_new_tokens=2, budget_tokens=4, positions_per_batch=1))
    assert r.stop_reason == "budget-tokens" and r.cost.positions_visited == 1


def test_convergence_stops_when_nothing_accepted():
    lm = table_lm(TRAP)
    r = refine(lm, "a", RefineConfig(mode="regenerate", top_k=3, max_new_tokens=2, sweeps=10))
    assert r.stop_reason == "converged" and r.sweeps == 2 and len(r.edits) == 1


# -- bad input -------------------------------------------------------------------------------
def raises_value_error(pairs):
    raise ValueError("boom")


def returns_nan(pairs):
    return [math.nan] * len(pairs)


def returns_short(pairs):
    return [1.0]


def text_length(pairs):
    return [float(len(t)) for _, t in pairs]


@pytest.mark.parametrize("spec,err,match", [
    ("nonesuch", UnknownNameError, "unknown objective 'nonesuch'; known: contrastive, coverage, echo, finish, guard, judge, length, logprob, mean-logprob, meta"),
    ("logprob=nan", ConfigError, "finite"),
    ("logprob=-1", ConfigError, "negative weight"),
    ("coverage=abc", ConfigError, "not a number"),
    ("mean-logprob:alpha=-2", ConfigError, "alpha"),
    ("reward=nomodule_xyz:f", ConfigError, "cannot load reward function"),
    ("reward=test_refine:raises_value_error", ObjectiveError, "reward function test_refine:raises_value_error raised ValueError: boom"),
    ("reward=test_refine:returns_nan", ObjectiveError, "NaN"),
    ("reward=test_refine:returns_short", ObjectiveError, "returned 1 values for 1 texts|returned 1 values"),
])
def test_bad_objectives(spec, err, match):
    lm = table_lm(TRAP)
    with pytest.raises(err, match=match):
        refine(lm, "a", RefineConfig(objectives=["logprob", spec], top_k=3, max_new_tokens=2))


def test_reward_wrong_length_named():
    lm = table_lm(TRAP)
    with pytest.raises(ObjectiveError, match=r"returned 1 values for \d+ texts; return one float per text"):
        refine(lm, "a", RefineConfig(objectives=["reward=test_refine:returns_short"], mode="keep", top_k=3, max_new_tokens=2, prune=False))


def test_reward_function_drives_refinement():
    lm = table_lm(TRAP)
    r = refine(lm, "a", RefineConfig(objectives=["reward=test_refine:text_length"], mode="keep", edits=("insert",), initial="bd", top_k=3, max_new_tokens=3))
    assert len(r.final.text) == 3 and r.objective_after["reward"] == 3.0


@pytest.mark.parametrize("kw,match", [
    (dict(initial="   "), "--initial text is empty"),
    (dict(budget_seconds=0), "budget-seconds must be > 0"),
    (dict(budget_tokens=-5), "budget-tokens must be > 0"),
    (dict(top_k=0), "top-k"),
    (dict(mode="frozen"), "unknown mode"),
    (dict(edits=("swap",)), "unknown edit kind"),
    (dict(sweeps=0), "sweeps must be >= 1"),
    (dict(screen=-1), "screen must be >= 0"),
    (dict(screen_keep=0), "screen-keep must be >= 1"),
])
def test_bad_config(kw, match):
    with pytest.raises((ConfigError, UnknownNameError), match=match):
        RefineConfig(**kw)


def test_unknown_order_lists_known():
    with pytest.raises(UnknownNameError, match="known: gradient-norm, l2r, r2l, random, worst-first"):
        RefineConfig(order="zigzag")


# --- the approximate screen (RefineConfig.screen) ------------------------------------------------
# Bigram model, keep mode: a substitution at i changes the log-probs of y_i and y_{i+1} only, so
# after the edit and one more token the screen's estimate (the incumbent's log-probs for the rest)
# is exact, and keeping one candidate per batch must find the exact search's edit.
CHAIN = {"a": {"b": 0.5, "c": 0.45}, "b": {"d": 0.4, "e": 0.35}, "c": {"d": 0.9}, "d": {"f": 0.5, "g": 0.45},
         "e": {"f": 0.9}, "f": {"h": 0.6, "b": 0.35}, "g": {"h": 0.95}, "h": {"b": 0.5, "c": 0.45}}


@pytest.mark.parametrize("ppb", [1, 3, 8])
def test_screen_keeps_the_best_when_its_estimate_is_exact(ppb):
    lm = table_lm(CHAIN)
    base = dict(mode="keep", top_k=4, max_new_tokens=6, positions_per_batch=ppb, sweeps=5, prune=False)
    exact = refine(lm, "a", RefineConfig(**base, screen=0))
    screened = refine(lm, "a", RefineConfig(**base, screen=1, screen_keep=1))
    assert exact.edits, "the chain must leave the exact search something to fix"
    assert screened.final.ids == exact.final.ids
    assert [(e.position, e.new_token) for e in screened.edits] == [(e.position, e.new_token) for e in exact.edits]
    assert screened.objective_after["total"] == pytest.approx(exact.objective_after["total"], abs=1e-6)
    assert screened.cost.screened_out > 0 and exact.cost.screened_out == 0
    assert screened.cost.forward_tokens < exact.cost.forward_tokens


# Regenerate: c's first greedy step looks best (g, p 0.9) but leads nowhere; d's is weaker and its
# tail wins. The screen keeps c and misses the edit the exact search makes; J still never falls.
FORK = {"a": {"b": 0.4, "c": 0.3, "d": 0.3}, "b": {"h": 0.3, "e": 0.3, "f": 0.3}, "h": {"h": 0.3, "e": 0.3, "f": 0.3},
        "c": {"g": 0.9}, "g": {"b": 0.12, "c": 0.12, "d": 0.12, "e": 0.12, "f": 0.12, "h": 0.12},
        "d": {"e": 0.6}, "e": {"f": 0.95}, "f": {"e": 0.95}}


def test_screen_is_approximate_and_says_so():
    lm = table_lm(FORK)
    exact = refine(lm, "a", RefineConfig(mode="regenerate", top_k=3, max_new_tokens=4))
    screened = refine(lm, "a", RefineConfig(mode="regenerate", top_k=3, max_new_tokens=4, screen=1, screen_keep=1))
    assert exact.initial.text == screened.initial.text == "befe"
    assert exact.final.text == "defe" and exact.gain > 0.5
    assert screened.final.text == "befe" and screened.gain == 0.0
    assert screened.cost.screened_out == 2 and screened.cost.forward_tokens < exact.cost.forward_tokens
    wide = refine(lm, "a", RefineConfig(mode="regenerate", top_k=3, max_new_tokens=4, screen=1, screen_keep=2))
    assert wide.final.text == "defe"  # keeping two finishes d as well


@pytest.mark.parametrize("seed", range(6))
def test_screen_estimate_is_exact_on_random_bigrams(seed):
    """Same property on random bigram tables (5 per seed, with pruning): the first batch's best
    edit gains exactly as much. (Whole traces may part on ties: Y⁰ often repeats a token, and equal
    edits at two positions are then both best.)"""
    rng = np.random.default_rng(seed)
    letters = CHARS[1:]
    for _ in range(5):
        table = {a: {b: float(p) for b, p in zip(letters, rng.dirichlet(np.full(len(letters), 1.0)))} for a in letters}
        lm = table_lm(table)
        for ppb in (3, 8):
            base = dict(mode="keep", top_k=6, max_new_tokens=7, positions_per_batch=ppb, objectives=["logprob"])
            exact = refine(lm, "a", RefineConfig(**base, screen=0))
            screened = refine(lm, "a", RefineConfig(**base, screen=1, screen_keep=1))
            assert bool(screened.edits) == bool(exact.edits)
            if exact.edits:
                assert screened.edits[0].delta == pytest.approx(exact.edits[0].delta, abs=1e-6)


def test_screen_estimate_equals_the_candidates_log_prob_on_bigrams(monkeypatch):
    """Directly: every screened row's estimate is its exact log P (bigram, keep, screen 1)."""
    from ortrefine.runtime import refine as refine_mod

    seen = []
    original = refine_mod._Refiner._screen_estimate

    def spy(self, state, cands, alive, tails, tail_lp, tail_ref, pending, *rest):
        est = original(self, state, cands, alive, tails, tail_lp, tail_ref, pending, *rest)
        seen.extend((state.ids[: cands[r].start] + tails[r] + pending[r], float(e)) for r, e in zip(alive, est))
        return est

    monkeypatch.setattr(refine_mod._Refiner, "_screen_estimate", spy)
    lm = table_lm(CHAIN)
    refine(lm, "a", RefineConfig(mode="keep", top_k=4, max_new_tokens=6, positions_per_batch=8, sweeps=3, screen=1, screen_keep=1))
    assert len(seen) > 5
    for ids, est in seen:
        text = "".join(CHARS[i] for i in ids)
        assert est == pytest.approx(seq_lp(lm, "a", text), abs=1e-5), text


def test_keep_mode_never_feeds_a_candidates_final_token():
    """A candidate's last token is only a target. One chunk per candidate (chunk 64) must then feed
    exactly as many tokens as one token per pass (chunk 1), which never fed it; unpruned, so both
    score the same rows to the end."""
    table = {"a": {"b": 0.4, "c": 0.35, "d": 0.25}, "b": {"c": 0.5, "d": 0.5}, "c": {"d": 0.6, "b": 0.4},
             "d": {"b": 0.5, "c": 0.5}}
    runs = {chunk: refine(table_lm(table), "a", RefineConfig(mode="keep", top_k=3, max_new_tokens=6, prune=False, chunk=chunk))
            for chunk in (1, 64)}
    one, whole = runs[1], runs[64]
    assert one.cost.candidates == whole.cost.candidates > 0
    assert whole.final.ids == one.final.ids and whole.objective_after["total"] == pytest.approx(one.objective_after["total"])
    assert whole.cost.forward_tokens == one.cost.forward_tokens


def test_default_objective_counts_repetition():
    """The default J is log P plus the guards against loops, echoes of the prompt, ending early and
    whatever the evaluation calls degenerate."""
    cfg = RefineConfig()
    assert [str(o) for o in cfg.objectives] == ["logprob", "repetition=1.0", "echo=4.0", "length=2.0:short=1", "guard=100.0"]


@pytest.mark.parametrize("kw,term", [(dict(keywords=("dog", "park")), "coverage"), (dict(reference="a dog in a park"), "reference")])
def test_task_inputs_switch_their_term_on(kw, term):
    """--keywords / --reference alone: the user need not know the term names."""
    from ortrefine.runtime.objectives import ObjectiveSpec

    names = [ObjectiveSpec.parse(str(o)).name for o in RefineConfig(**kw).objectives]
    # keywords get the keyword task's J (per-token log P: summed log P cut sentences to fragments)
    assert names == (["mean-logprob", "repetition", term, "finish"] if term == "coverage" else ["logprob", "repetition", "echo", "length", "guard", term])
    added = [str(o) for o in RefineConfig(objectives=["logprob"], **kw).objectives]
    assert added == ["logprob", "coverage=2.0" if term == "coverage" else "reference"]  # the task's term joins a J the user named
    explicit = RefineConfig(objectives=["logprob", f"{term}=3.0"], **kw).objectives
    assert [str(o) for o in explicit] == ["logprob", f"{term}=3.0"]  # a term the user named is not added twice


def test_coverage_counts_inflections_and_not_lists():
    """A comma list of the concepts uses none of them; sat covers sit, hands covers hand."""
    from ortrefine.runtime.objectives import Batch, Context, Coverage

    lm = table_lm({})
    ctx = Context(prompt="p", tokenizer=lm.tokenizer, eos_ids=(0,), max_len=8, keywords=("sit", "hand", "pocket"))
    term = Coverage(1.0, ctx)
    texts = ["The girl sat with her hands in her pocket.", "sit, hand, pocket.", "A hand, a pocket, and a sit.", "She sits."]
    assert term.evaluate(Batch("p", [[1]] * 4, [np.zeros(1)] * 4, texts)).tolist() == [3.0, 0.0, 0.0, 1.0]


def test_inflections_of_a_missing_concept_are_proposed():
    from ortrefine.runtime.keywords import inflections

    assert {"sat", "sits", "sitting"} <= set(inflections("sit"))
    assert {"stood", "stands", "standing"} <= set(inflections("stand")) and "standed" not in inflections("stand")
    assert {"caught", "catches"} <= set(inflections("catch")) and "catched" not in inflections("catch")
    assert inflections("frisbee")[0] == "frisbee" and "frisbees" in inflections("frisbee")


def test_coverage_proposes_a_missing_concepts_first_tokens_where_the_guide_does_not_run():
    from dataclasses import replace

    from fakelm import CHARS
    from ortrefine.runtime.objectives import Context, Coverage

    lm = table_lm({})
    ctx = Context(prompt="p", tokenizer=lm.tokenizer, eos_ids=(0,), max_len=8, keywords=("bad", "head"))
    guided = replace(ctx, guided=True)
    ids = lambda letters: {CHARS.index(c) for c in letters}  # noqa: E731
    # this vocabulary has no capitals, so "Bad" encodes as "ad": its first token is "a"
    assert set(Coverage(1.0, ctx).propose([CHARS.index("c")])) == ids("bahe")
    assert set(Coverage(1.0, ctx).propose([CHARS.index(c) for c in "bad"])) == ids("he")  # "bad" is covered now
    assert Coverage(1.0, guided).propose([CHARS.index("c")]) == []  # the guide steers the suffixes instead
    assert set(Coverage(1.0, guided, forms=True).propose([CHARS.index("c")])) == ids("bahe")
    assert Coverage(1.0, ctx, forms=False).propose([CHARS.index("c")]) == []


def test_guided_refinement_gets_no_coverage_proposals_and_unguided_does():
    from ortrefine.runtime.refine import RefineConfig, refine

    lm = table_lm({"a": {"b": 0.6, "c": 0.3}, "b": {"d": 0.9}, "c": {"d": 0.9}, "d": {"_": 0.9}})
    cfg = RefineConfig(keywords=("hhh",), max_new_tokens=3, screen=0, top_k=1)
    guided, plain = refine(lm, "a", cfg), refine(lm, "a", RefineConfig(keywords=("hhh",), max_new_tokens=3, screen=0, top_k=1, guide=False))
    assert plain.cost.candidates > guided.cost.candidates


def test_keywords_alone_turn_coverage_on_in_the_cli(tmp_path):
    from click.testing import CliRunner

    from ortrefine.cli.refine_cmd import refine as refine_cmd

    r = CliRunner().invoke(refine_cmd, ["x", "--keywords", "dog", "-m", str(tmp_path / "none")])
    assert r.exit_code == 1 and "no bundle at" in r.output  # options accepted; only the missing bundle stops it


def test_keywords_given_as_one_string_are_refused_not_split_into_letters():
    from ortrefine.errors import ConfigError
    from ortrefine.runtime.refine import RefineConfig

    with pytest.raises(ConfigError, match="not one string"):
        RefineConfig(keywords="dog,frisbee")
    assert RefineConfig(keywords=["dog", "frisbee"]).keywords == ("dog", "frisbee")


def test_finish_counts_an_output_that_stops_without_ending():
    from ortrefine.runtime.objectives import Batch, Context, Finish

    lm = table_lm({})
    ids = [[1, 2, 0], [1, 2, 3], [1, 2], [1, 3, 6], [1, 2, 3, 4]]  # eos; cut at the cap; shorter, no eos; the task's end; over the cap
    batch = Batch("p", ids, [np.zeros(len(i)) for i in ids], ["ab", "abc", "ab", "acf", "abcd"])
    plain = Context(prompt="p", tokenizer=lm.tokenizer, eos_ids=(0,), max_len=3)
    assert Finish(1.0, plain).evaluate(batch).tolist() == [0.0, -1.0, -1.0, -1.0, -1.0]
    task = Context(prompt="p", tokenizer=lm.tokenizer, eos_ids=(0,), max_len=3, finished=lambda i: i[-1] == 6)
    assert Finish(1.0, task).evaluate(batch).tolist() == [0.0, -1.0, -1.0, 0.0, -1.0]
    assert Finish(1.0, plain).max_value() == 0.0


def test_deleting_a_token_of_a_cut_off_output_does_not_finish_it():
    """keep mode: a capped output one token shorter is still cut off, so finish rewards no delete."""
    lm = table_lm({"_": {"a": .9}, "a": {"b": .9}, "b": {"c": .9}, "c": {"d": .9}, "d": {"a": .9}})
    r = refine(lm, "a", RefineConfig(keywords=("zzz",), mode="keep", edits=("delete",), top_k=1, max_new_tokens=6, screen=0))
    assert r.final.ids == r.initial.ids and r.objective_after["finish"] == -1.0


def test_a_config_copied_with_keywords_gets_the_keyword_j():
    """batch records and compare prompts add their keywords with dataclasses.replace."""
    from dataclasses import replace

    from ortrefine.runtime.refine import KEYWORD_OBJECTIVES

    copied = replace(RefineConfig(max_new_tokens=8), keywords=("dog",))
    assert [str(o) for o in copied.objectives] == list(KEYWORD_OBJECTIVES)
    assert [str(o) for o in replace(copied, keywords=()).objectives] == [str(o) for o in RefineConfig().objectives]
    named = replace(RefineConfig(objectives=["logprob"]), keywords=("dog",))
    assert [str(o) for o in named.objectives] == ["logprob", "coverage=2.0"]  # a J the user named stays theirs


def test_meta_penalises_an_editors_remark_unless_editing_was_asked():
    from ortrefine.runtime.objectives import Batch, Context, Meta

    lm = table_lm({})
    texts = [" and barked at the mailman.", "\n\nI made a few tweaks to the original text to improve its clarity."]
    batch = Batch("p", [[1], [1]], [np.zeros(1)] * 2, texts)
    story = Context(prompt="The dog ran across the street", tokenizer=lm.tokenizer, eos_ids=(0,), max_len=8)
    assert Meta(1.0, story).evaluate(batch).tolist() == [0.0, -1.0]
    edit = Context(prompt="Please rewrite: the dog run.", tokenizer=lm.tokenizer, eos_ids=(0,), max_len=8)
    assert Meta(1.0, edit).evaluate(batch).tolist() == [0.0, 0.0]
    assert Meta(1.0, story).max_value() == 0.0


def test_guard_refuses_what_the_evaluation_calls_degenerate():
    from ortrefine.evaluate.metrics import text_report
    from ortrefine.runtime.objectives import Batch, Context, Guard

    lm = table_lm({})
    story = "The dog ran across the street"
    texts = [" and barked at the mailman.", " and ran and ran and ran and ran and ran.", "",
             "\n\nIn the context of your story, the dog is a symbol.", " The dog ran across the street again.",
             " bone, park, ball.", ".\n\nIn this example, the sentence is structured in a passive voice.",
             ".\n\nThe story of the dog is a classic trope in literature."]
    batch = Batch("p", [[1]] * len(texts), [np.zeros(1)] * len(texts), texts)
    ctx = Context(prompt=story, tokenizer=lm.tokenizer, eos_ids=(0,), max_len=8)
    values = Guard(1.0, ctx).evaluate(batch).tolist()
    assert values == [0.0, -1.0, -1.0, -1.0, -1.0, 0.0, -1.0, -1.0]  # the analyst and the critic count too
    assert values == [-1.0 if text_report(t, story).degenerate else 0.0 for t in texts]  # one definition
    kw = Context(prompt="Use: bone, park, ball.", tokenizer=lm.tokenizer, eos_ids=(0,), max_len=8, keywords=("bone", "park", "ball"))
    assert Guard(1.0, kw).evaluate(batch).tolist()[5] == -1.0  # a keyword list only counts on the keyword task
    assert Guard(1.0, ctx).max_value() == 0.0


def test_guard_keeps_refinement_from_making_a_loop(monkeypatch):
    """Under log P alone refinement swaps a clean Y⁰ for the likelier loop 'abab…'; with the
    guard at a large weight it keeps a clean output. The fake model's text has no words, so a
    stand-in detector calls 'abab' degenerate; what is tested is the term inside the search."""
    import ortrefine.runtime.objectives.text_terms as tt

    monkeypatch.setattr(tt, "is_degenerate", lambda text, prompt, keywords=(): "abab" in text)
    side = {"a": 0.3}
    table = {"c": {"d": 0.5, "a": 0.45}, "d": {"e": 0.5, **side}, "e": {"f": 0.5, **side}, "f": {"g": 0.5, **side},
             "g": {"h": 0.5, **side}, "h": {"c": 0.5, **side}, "a": {"b": 0.99}, "b": {"a": 0.99}}
    free = refine(table_lm(table), "c", RefineConfig(objectives=["logprob"], max_new_tokens=8, top_k=3))
    held = refine(table_lm(table), "c", RefineConfig(objectives=["logprob", "guard=100.0"], max_new_tokens=8, top_k=3))
    assert "abab" not in free.initial.text and "abab" in free.final.text  # log P prefers the loop
    assert "abab" not in held.final.text and held.objective_after["total"] >= held.objective_before["total"]


_SIDE = {"e": 0.01, "f": 0.01, "g": 0.01}  # the top-3 proposals after the best are letters, never eos
LOOP_TABLE = {"c": {"d": 0.9, **_SIDE}, "d": {"a": 0.9, **_SIDE}, "a": {"b": 0.9, **_SIDE}, "b": {"a": 0.9, **_SIDE},
              **{ch: {"a": 0.9, **_SIDE} for ch in "efgh"}}


def _loops_and_sentence_ends(monkeypatch):
    """The fake text has no words or full stops, so stand-ins: a text with two 'a's is degenerate
    (every continuation of LOOP_TABLE regrows 'abab…' from any edit), as is an empty one, and 'b' or 'd'
    ends a sentence."""
    import re

    import ortrefine.runtime.objectives.text_terms as tt
    import ortrefine.runtime.refine.loop as loop

    monkeypatch.setattr(tt, "is_degenerate", lambda text, prompt, keywords=(): not text or text.count("a") >= 2)
    monkeypatch.setattr(loop, "_ends_at", lambda head, rest: bool(re.search(r"[bd]$", head)))


def test_end_repair_ends_a_regrowing_loop_at_a_sentence_end(monkeypatch):
    """No substitution breaks the loop (every re-decoded suffix regrows it), so the sweep leaves Y*
    degenerate; ending Y* at a sentence end before the loop's second turn is clean, and the guard
    makes J prefer it to the likelier loop."""
    _loops_and_sentence_ends(monkeypatch)
    cfg = RefineConfig(objectives=["logprob", "guard=100.0"], max_new_tokens=8, top_k=3)
    off = refine(table_lm(LOOP_TABLE), "c", replace(cfg, end_repair=False))
    on = refine(table_lm(LOOP_TABLE), "c", cfg)
    assert off.initial.text == "dabababa" and off.final.text.count("a") >= 2 and off.cost.end_repairs == 0
    assert on.final.text in ("d", "dab") and on.final.ids[-1] == 0  # ended with eos, at a sentence end
    assert on.cost.end_repairs == 1 and on.edits[-1].new_id == 0 and on.edits[-1].position == len(on.final.ids) - 1
    assert on.edits[-1].kind == "end" and on.edits[-1].old_id == off.final.ids[on.edits[-1].position]
    assert [e.kind for e in on.edits[:-1]] == [e.kind for e in off.edits] and "end" not in [e.kind for e in off.edits]
    assert on.objective_after["guard"] == 0.0 and on.objective_after["total"] > off.objective_after["total"]
    assert on.edits[-1].delta == pytest.approx(on.objective_after["total"] - off.objective_after["total"], abs=1e-4)
    from ortrefine.cli.refine_cmd import render

    tok = table_lm(LOOP_TABLE).tokenizer
    assert "it was ended at a sentence end" in render(on, tok) and "sentence end" not in render(off, tok)


def test_end_repair_keeps_y_when_no_ending_is_clean(monkeypatch):
    """Every sentence end falls inside the loop: the endings are tried, none is clean, and J (the
    guard fires on all of them, and eos is unlikely) keeps the loop."""
    import ortrefine.runtime.refine.loop as loop
    from ortrefine.cli.refine_cmd import render

    _loops_and_sentence_ends(monkeypatch)
    monkeypatch.setattr(loop, "_ends_at", lambda head, rest: head.endswith("aba"))
    r = refine(table_lm(LOOP_TABLE), "c", RefineConfig(objectives=["logprob", "guard=100.0"], max_new_tokens=8, top_k=3))
    assert r.cost.end_repairs == 1 and r.final.text == r.initial.text == "dabababa" and not r.edits
    assert "no ending at one of its sentence ends raised J" in render(r, table_lm(LOOP_TABLE).tokenizer)


def test_end_repair_needs_a_guard_and_a_degenerate_output(monkeypatch):
    """Without a guard term (or with a weightless one) J has no say on degeneracy, and a clean Y* is
    never cut: the step runs only where the guard still fires."""
    _loops_and_sentence_ends(monkeypatch)
    no_guard = refine(table_lm(LOOP_TABLE), "c", RefineConfig(objectives=["logprob"], max_new_tokens=8, top_k=3))
    assert no_guard.cost.end_repairs == 0 and no_guard.final.text.count("a") >= 2
    clean = {"c": {"d": 0.9}, "d": {"e": 0.9}, "e": {"f": 0.9}, "f": {"g": 0.9}, "g": {"h": 0.9}, "h": {"b": 0.9}}
    r = refine(table_lm(clean), "c", RefineConfig(objectives=["logprob", "guard=100.0"], max_new_tokens=8, top_k=3))
    # ending at "d" would raise log P here (the eos after "b" is unlikely too), so a repair that ran
    # on clean outputs would cut this one
    assert r.cost.end_repairs == 0 and r.final.text == r.initial.text == "defghb"
    weightless = refine(table_lm(LOOP_TABLE), "c", RefineConfig(objectives=["logprob", "guard=0.0"], max_new_tokens=8, top_k=3))
    assert weightless.cost.end_repairs == 0 and weightless.final.text.count("a") >= 2


@pytest.mark.parametrize("text, ends", [
    (" moon.", True), (" woods.\"", True), (" really?", True), ("Hi!", True), (" it.", True), (" (see above).", True),
    (" said \"yes.\"", True), (" moon.\n", False), (" moon. ", False), (" Dr.", False), (" 3.", False), (" 1.", False),
    (" e.", False), (" U.S.", False), (" below:\n", False), (" wait...", False), (".", False), (" a.", False), ("", False),
    (" the price was 3", False), (" Neither do I.", True), (" so-called.", True), (" the 1990s.", True), (" I don't.", True),
    (" on Jan.", False), (" We climbed Mt.", False)])
def test_ends_sentence(text, ends):
    """Where the end repair may put eos: a finished sentence, never a number's or an abbreviation's
    full stop (ending " office of Dr." or " 3." cuts the output mid-sentence)."""
    from ortrefine.lexicon import ends_sentence

    assert ends_sentence(text) is ends


def test_end_repair_never_ends_inside_a_word():
    """"example." of "example.com" ends a sentence by its text alone; the token after it goes on
    in the same word, so it is no place to end."""
    from ortrefine.runtime.refine.loop import _ends_at

    assert _ends_at(" Visit example.", "com") is False and _ends_at(" Visit example.", " today") is True
    assert _ends_at(" It runs on Node.", "js") is False and _ends_at(" fly.", "\n\n") is True
    assert _ends_at(" She said \"fly.", "\"") is False and _ends_at(" She said \"fly.\"", " Then") is True


def test_end_repair_waits_for_no_budget_and_says_so(monkeypatch):
    """A budget spent by the sweeps skips the end repair, and the stop reason names the budget
    (the run did not end because the sweeps were done)."""
    _loops_and_sentence_ends(monkeypatch)
    r = refine(table_lm(LOOP_TABLE), "c", RefineConfig(objectives=["logprob", "guard=100.0"], max_new_tokens=8, top_k=3,
                                                        budget_tokens=10))
    assert r.cost.end_repairs == 0 and r.final.text.count("a") >= 2 and r.stop_reason == "budget-tokens"


def test_end_repair_must_be_a_bool():
    with pytest.raises(ConfigError, match="end_repair must be true or false"):
        RefineConfig(end_repair="false")


@pytest.mark.parametrize("settings", [
    {},
    {"keywords": ("cat", "dog"), "chat": True},
    {"keywords": ("cat",), "guide": {"bias": 5.0}, "examples": 1, "chat": True},
    {"keywords": ("cat",), "guide": False, "objectives": ["mean-logprob", "coverage=3.0"]},
    {"objectives": ["logprob", "repetition=2.0", "mean-logprob:alpha=0.8"], "mode": "keep", "edits": ("substitute", "delete")},
    {"initial_strategy": {"strategy": "beam", "num_beams": 3, "max_new_tokens": 2}, "relax": {"steps": 3}, "top_k": np.int64(2),
     "tol": np.float32(0.5), "seed": np.int64(4)},
])
def test_a_result_config_goes_through_json_and_rebuilds_the_same_run(settings):
    """The `--json` trace's config is what a user keeps to run a refinement again: it must be
    JSON (numpy numbers the API took included) and RefineConfig.from_dict must read it back to
    the config that ran, down to the same refinement."""
    import json

    from ortrefine.runtime.decoding import GenerationConfig
    from ortrefine.runtime.guide import GuideConfig
    from ortrefine.runtime.refine.config import _config_dict
    from ortrefine.runtime.relax import RelaxConfig

    s = dict(settings, max_new_tokens=2)
    if isinstance(s.get("initial_strategy"), dict):
        s["initial_strategy"] = GenerationConfig(**s["initial_strategy"])
    if isinstance(s.get("relax"), dict):
        s["relax"] = RelaxConfig(**s["relax"])
    if isinstance(s.get("guide"), dict):
        s["guide"] = GuideConfig(**s["guide"])
    cfg = RefineConfig(**s)
    lm = table_lm(TRAP)
    first = refine(lm, "a", cfg) if not cfg.keywords else None
    kept = json.loads(json.dumps(_config_dict(cfg)))
    again = RefineConfig.from_dict(kept)
    assert _config_dict(again) == kept and again == cfg
    assert again.example_turns == cfg.example_turns and again.guide_config == cfg.guide_config
    # objectives the config derived are derived again: a copy with other task inputs derives its own J
    for inputs in ({"keywords": ("cat", "dog")}, {"keywords": ()}, {"reference": "a cat"}):
        try:
            want = replace(cfg, **inputs).objectives
        except ConfigError:  # e.g. a guide without keywords: the rebuilt config refuses it too
            with pytest.raises(ConfigError):
                replace(again, **inputs)
            continue
        assert replace(again, **inputs).objectives == want
    if first is not None:
        second = refine(lm, "a", again)
        assert second.final.ids == first.final.ids and second.objective_after == first.objective_after
        assert RefineConfig.from_dict(json.loads(json.dumps(second.config))) == again


@pytest.mark.parametrize("bad, says", [
    ({"top_kk": 3}, "unknown refine setting(s) 'top_kk'"),
    ({"relax": {"stepz": 3}}, "stepz"),
    ({"objectives": [{"name": "logprob", "wieght": 1.0}]}, "wieght"),
    ({"guide": {"bais": 2.0}, "keywords": ["a"]}, "unknown guide setting(s) 'bais'"),
    ({"initial_strategy": {"num_beamz": 3}}, "unknown initial_strategy setting(s) 'num_beamz'; known: strategy,"),
    ({"relax": 3}, "a relax must be an object"),
    ({"top_k": "3"}, "refine settings: a value has the wrong type"),
    (["top_k", 3], "refine settings must be an object of names and values, got list"),
])
def test_from_dict_names_the_unknown_setting(bad, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        RefineConfig.from_dict(bad)


def test_budget_tokens_counts_the_prompt_pass_whether_or_not_the_decode_shared_it():
    """The search starts from the pass Y⁰'s decode ran; the budget must still count it, or a
    decoded Y⁰ would get len(prompt) more tokens of search than the same Y⁰ given as `initial`."""
    lm = table_lm(TRAP)
    cfg = RefineConfig(mode="keep", top_k=3, max_new_tokens=2, budget_tokens=11, positions_per_batch=1)
    decoded = refine(lm, "gggggggga", cfg)
    given = refine(lm, "gggggggga", replace(cfg, initial=decoded.initial.text))
    assert decoded.initial.ids == given.initial.ids
    assert decoded.stop_reason == given.stop_reason == "budget-tokens"
    assert decoded.final.ids == given.final.ids and len(decoded.edits) == len(given.edits)
