"""The judge term: log P of the output's text under another bundle with its own tokenizer, exact
in J, pruning kept (it is ≤ 0), refused where it cannot work, and seen by eval as inside J."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fakelm import CHARS, FakeLM, make_batch_dependent, table_lm
from ortrefine.errors import ConfigError
from ortrefine.runtime.objectives import judge_term as judge_mod
from ortrefine.runtime.refine import RefineConfig, refine
from ortrefine.runtime.refine.api import evaluate_objective

MODEL = {"a": {"b": 0.5, "c": 0.4}, "b": {"d": 0.35, "e": 0.33, "f": 0.3}, "c": {"d": 0.9}, "e": {"d": 0.9}, "d": {"_": 0.9}, "f": {"_": 0.9}}
# the judge dislikes "cd" and likes "bf": weighted enough, it should move the refiner off "cd"
JUDGE = {"a": {"b": 0.6, "c": 0.1}, "b": {"f": 0.8, "d": 0.05}, "c": {"d": 0.05}, "d": {"_": 0.5}, "f": {"_": 0.9}}
LETTERS = CHARS[1:]


class ReversedTokenizer:
    """Another vocabulary over the same text: eos stays 0, letters are numbered backwards, so a
    term that handed the judge the model's ids (not the text) would score the wrong tokens."""

    vocab_size = len(CHARS)

    def encode(self, text, chat=False, system=None):
        return self.encode_plain(text)

    def encode_plain(self, text):
        return [len(CHARS) - CHARS.index(c) for c in text if c in LETTERS]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(CHARS[len(CHARS) - int(i)] for i in ids if int(i) != 0)


def to_char(i: int) -> str:
    return "_" if i == 0 else CHARS[len(CHARS) - i]


def judge_lm() -> FakeLM:
    def next_lp(ctx):
        row = JUDGE.get(to_char(ctx[-1]), {})
        p = np.full(len(CHARS), 1e-3)
        for ch, prob in row.items():
            p[0 if ch == "_" else len(CHARS) - CHARS.index(ch)] = prob
        return np.log(p / p.sum()).astype(np.float32)

    lm = FakeLM(next_lp)
    lm.tokenizer = ReversedTokenizer()
    return lm


def judge_lp(prompt: str, out: str, ended: bool) -> float:
    """Σ log p_judge(text | prompt) by hand, + log p(eos) when the output ended."""
    total, prev = 0.0, prompt[-1]
    for ch in out + ("_" if ended else ""):
        row = JUDGE.get(prev, {})
        p = {c: row.get(c, 1e-3) for c in CHARS}
        total += math.log(p[ch] / sum(p.values()))
        prev = ch
    return total


@pytest.fixture
def judge(monkeypatch):
    lm = judge_lm()
    monkeypatch.setattr(judge_mod, "load_bundle", lambda path: lm)
    return lm


def test_the_term_is_the_judges_log_prob_of_the_text_and_its_end(judge):
    lm = table_lm(MODEL)
    ended = [CHARS.index(c) for c in "cd_"]
    got = evaluate_objective(lm, "a", ended, RefineConfig(objectives=["logprob", "judge:bundle=j,weight=0.5"], max_new_tokens=3, screen=0))
    assert got["judge"] == pytest.approx(judge_lp("a", "cd", ended=True), abs=1e-5)
    own = float(sum(lm.next_logprobs([CHARS.index(c) for c in "acd_"][:t])[CHARS.index("acd_"[t])] for t in range(1, 4)))
    assert got["total"] == pytest.approx(own + 0.5 * got["judge"], abs=1e-5)
    cut = evaluate_objective(lm, "a", ended[:2], RefineConfig(objectives=["judge=j"], max_new_tokens=2))
    assert cut["judge"] == pytest.approx(judge_lp("a", "cd", ended=False), abs=1e-5)  # no eos read: Y was cut at the cap
    mean = evaluate_objective(lm, "a", ended, RefineConfig(objectives=["judge:bundle=j,mean=1"], max_new_tokens=3))
    assert mean["judge"] == pytest.approx(judge_lp("a", "cd", ended=True) / 3, abs=1e-5)


def test_the_judge_changes_what_refinement_picks_and_j_never_falls(judge):
    lm = table_lm(MODEL)
    plain = refine(lm, "a", RefineConfig(objectives=["logprob"], top_k=3, max_new_tokens=3, screen=0))
    assert plain.final.text == "cd"
    objectives = ["logprob", "judge:bundle=j,weight=2"]
    r = refine(lm, "a", RefineConfig(objectives=objectives, top_k=3, max_new_tokens=3, screen=0, sweeps=2))
    assert r.final.text == "bf"  # the judge's favourite among the model's proposals
    assert r.objective_after["total"] >= r.objective_before["total"] - 1e-9
    again = evaluate_objective(lm, "a", r.final.ids, RefineConfig(objectives=objectives, max_new_tokens=3))
    assert again["total"] == pytest.approx(r.objective_after["total"], abs=1e-5)


def test_each_text_is_judged_once_per_refine(judge):
    from ortrefine.runtime.objectives import Batch, Context, Objective

    ctx = Context(prompt="a", tokenizer=table_lm(MODEL).tokenizer, eos_ids=(0,), max_len=4)
    obj = Objective(["logprob", "judge=j"], ctx)
    ids = [[2, 4, 0], [3, 4, 0], [2, 4, 0]]
    batch = Batch("a", ids, [np.zeros(3)] * 3, ["bd", "cd", "bd"])
    first = obj.evaluate(batch)
    calls = judge.calls
    again = obj.evaluate(batch)
    assert judge.calls == calls and np.allclose(first[0], again[0])
    assert obj.can_prune()  # log P ≤ 0 bounds the term, so exact pruning stays on


def test_a_chat_prompts_answer_is_read_on_the_next_line(judge):
    from ortrefine.runtime.objectives import Context, Objective

    def judge_reads(chat: bool) -> str:
        ctx = Context(prompt="a", tokenizer=table_lm(MODEL).tokenizer, eos_ids=(0,), max_len=4, chat=chat)
        (term,) = [t for t in Objective(["judge=j"], ctx).terms if t.name == "judge"]
        return term.context

    assert judge_reads(chat=True) == "a\n" and judge_reads(chat=False) == "a"  # as `ortrefine eval`'s judge reads them


def test_refine_tells_the_judge_whether_the_prompt_was_a_chat_turn(judge, monkeypatch):
    seen = []
    real = judge_mod.judge_texts
    monkeypatch.setattr(judge_mod, "judge_texts", lambda lm, context, *a, **k: seen.append(context) or real(lm, context, *a, **k))
    for chat in (False, True):
        refine(table_lm(MODEL), "a", RefineConfig(objectives=["logprob", "judge=j"], max_new_tokens=3, chat=chat, screen=0))
    assert seen and set(seen) == {"a", "a\n"}


def test_no_bundle_is_a_one_line_error(tmp_path):
    lm = table_lm(MODEL)
    with pytest.raises(ConfigError, match="needs a bundle"):
        refine(lm, "a", RefineConfig(objectives=["logprob", "judge"], max_new_tokens=2))
    with pytest.raises(ConfigError, match="no bundle folder at"):
        refine(lm, "a", RefineConfig(objectives=["logprob", f"judge={tmp_path}/missing"], max_new_tokens=2))


def test_the_server_refuses_judge_terms():
    from ortrefine.serve.schemas import parse_refine
    from ortrefine.serve.settings import ServeSettings

    with pytest.raises(Exception, match="judge terms import code or open files"):
        parse_refine({"model": "m", "prompt": "p", "objectives": ["logprob", "judge=/tmp/x"]}, ServeSettings())


def test_eval_marks_a_judge_term_as_the_judge_inside_j(tmp_path):
    from ortrefine.evaluate.data import System
    from ortrefine.evaluate.run import EvalConfig, independence

    model, judge = tmp_path / "model", tmp_path / "judge"
    for d in (model, judge):
        d.mkdir()
        (d / "ortrefine.json").write_text("{}")
    cfg = EvalConfig(model=str(model), judges=[str(judge)], systems=[System("r", "refine", {"objectives": ["logprob", f"judge={judge}"]})])
    assert independence(cfg, str(judge))["independent"] is False


class SpaceTokenizer(ReversedTokenizer):
    """The reversed vocabulary with a real space token (id 1, where "h" was): an output of
    blanks is text the judge can read."""

    def encode_plain(self, text):
        return [1 if c == " " else len(CHARS) - CHARS.index(c) for c in text if c == " " or c in LETTERS[:-1]]


def test_an_output_of_blanks_is_judged_as_text_not_given_a_mild_floor(judge):
    from ortrefine.runtime.judging import judge_texts
    from ortrefine.runtime.objectives import Batch, Context, Objective

    judge.tokenizer = SpaceTokenizer()
    ctx = Context(prompt="a", tokenizer=table_lm(MODEL).tokenizer, eos_ids=(0,), max_len=3)
    got = Objective(["judge=j"], ctx).evaluate(Batch("a", [[1, 1, 1]], [np.zeros(3)], ["   "]))[0]
    want = float(judge.score(judge.tokenizer.encode("a"), [[1, 1, 1]]).totals[0])
    assert got == pytest.approx(want, abs=1e-5) and got < -10  # three unlikely tokens, not one
    assert judge_texts(judge, "a", ["   "])[0].tokens == 0  # eval still reports blanks as nothing read


def test_a_judge_too_short_for_the_prompt_and_the_cap_is_refused(judge):
    judge.bundle.context_length = 4
    with pytest.raises(ConfigError, match="too few for this prompt and 3 new tokens"):
        refine(table_lm(MODEL), "a", RefineConfig(objectives=["logprob", "judge=j"], max_new_tokens=3))


def test_a_batch_dependent_judge_scores_each_text_alone(judge):
    from ortrefine.runtime.objectives import Batch, Context, Objective

    make_batch_dependent(judge)

    def value(texts):
        ctx = Context(prompt="a", tokenizer=table_lm(MODEL).tokenizer, eos_ids=(0,), max_len=3)
        ids = [[CHARS.index(c) for c in t] for t in texts]
        return Objective(["judge=j"], ctx).evaluate(Batch("a", ids, [np.zeros(len(i)) for i in ids], texts))[0][0]

    assert value(["bf"]) == value(["bf", "cd", "bd"])


def test_an_output_the_guide_ended_pays_the_judges_end_of_text(judge):
    from ortrefine.runtime.objectives import Batch, Context, Objective

    def value(finished):
        ctx = Context(prompt="a", tokenizer=table_lm(MODEL).tokenizer, eos_ids=(0,), max_len=3, finished=finished)
        return Objective(["judge=j"], ctx).evaluate(Batch("a", [[2, 6]], [np.zeros(2)], ["bf"]))[0]

    assert value(None) == pytest.approx(judge_lp("a", "bf", ended=False), abs=1e-5)
    assert value(lambda ids: ids[-1] == 6) == pytest.approx(judge_lp("a", "bf", ended=True), abs=1e-5)


def test_refine_hands_the_guides_sentence_stop_to_the_terms(monkeypatch):
    from ortrefine.runtime.refine import loop

    seen = {}
    real = loop.Context

    def spy(**kw):
        seen.update(kw)
        return real(**kw)

    monkeypatch.setattr(loop, "Context", spy)
    refine(table_lm(MODEL), "a", RefineConfig(keywords=("bad",), max_new_tokens=3, screen=0))
    assert seen["guided"] and seen["finished"] is not None
    refine(table_lm(MODEL), "a", RefineConfig(keywords=("bad",), max_new_tokens=3, screen=0, guide={"bias": 0.0}))
    assert not seen["guided"]  # a guide that steers nowhere leaves the coverage proposals on
    refine(table_lm(MODEL), "a", RefineConfig(max_new_tokens=3, screen=0))
    assert not seen["guided"] and seen["finished"] is None


def test_eval_sees_a_judge_named_with_a_tilde(tmp_path, monkeypatch):
    from ortrefine.evaluate.data import System
    from ortrefine.evaluate.run import EvalConfig, independence

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "ortrefine.json").write_text("{}")
    (tmp_path / "m").mkdir()
    cfg = EvalConfig(model=str(tmp_path / "m"), judges=[str(tmp_path / "j")], systems=[System("r", "refine", {"objectives": ["logprob", "judge=~/j"]})])
    reasons = independence(cfg, str(tmp_path / "j"))["reasons"]
    assert any("system 'r' has the judge inside J" in r for r in reasons)
