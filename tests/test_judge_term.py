"""The judge term: log P of the output's text under another bundle with its own tokenizer, exact
in J, pruning kept (it is ≤ 0), refused where it cannot work, and seen by eval as inside J."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fakelm import CHARS, FakeLM, table_lm
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
