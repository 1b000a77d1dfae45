"""The contrastive term: −log P of the output under an amateur bundle, exact in J, refused where
it cannot work (no amateur, another tokenizer, over HTTP)."""

from __future__ import annotations

import numpy as np
import pytest

from fakelm import CHARS, make_batch_dependent, table_lm
from ortrefine.errors import ConfigError
from ortrefine.runtime.objectives import contrastive as contrastive_mod
from ortrefine.runtime.refine import RefineConfig, refine
from ortrefine.runtime.refine.api import evaluate_objective

EXPERT = {"a": {"b": 0.5, "c": 0.4}, "b": {"d": 0.35, "e": 0.33, "f": 0.3}, "c": {"d": 0.9}, "e": {"d": 0.9}, "d": {"_": 0.9}, "f": {"_": 0.9}}
# the amateur likes what the expert likes after "c": contrast should push the refiner away from "cd"
AMATEUR = {"a": {"b": 0.3, "c": 0.6}, "b": {"d": 0.2, "e": 0.2, "f": 0.5}, "c": {"d": 0.95}, "e": {"d": 0.5}, "d": {"_": 0.9}, "f": {"_": 0.9}}


def seq_lp(lm, prompt: str, out: str) -> float:
    ids = [CHARS.index(c) for c in prompt + out]
    return float(sum(lm.next_logprobs(ids[:t])[ids[t]] for t in range(len(prompt), len(ids))))


@pytest.fixture
def amateur(monkeypatch, tmp_path):
    am = table_lm(AMATEUR)
    monkeypatch.setattr(contrastive_mod, "load_amateur", lambda path: am)
    return am


def test_the_term_is_minus_the_amateurs_log_prob_of_the_output(amateur):
    lm = table_lm(EXPERT)
    cfg = RefineConfig(objectives=["logprob", "contrastive:amateur=am,weight=0.5"], max_new_tokens=3, screen=0)
    ids = [CHARS.index(c) for c in "cd_"]
    got = evaluate_objective(lm, "a", ids, cfg)
    want_c = -seq_lp(amateur, "a", "cd_")
    assert got["contrastive"] == pytest.approx(want_c, abs=1e-5)
    assert got["total"] == pytest.approx(seq_lp(lm, "a", "cd_") + 0.5 * want_c, abs=1e-5)
    mean = evaluate_objective(lm, "a", ids, RefineConfig(objectives=["contrastive:amateur=am,mean=1"], max_new_tokens=3))
    assert mean["contrastive"] == pytest.approx(want_c / 3, abs=1e-5)


def test_contrast_changes_what_refinement_picks_and_j_never_falls(amateur):
    lm = table_lm(EXPERT)
    plain = refine(lm, "a", RefineConfig(objectives=["logprob"], top_k=3, max_new_tokens=3, screen=0))
    assert plain.final.text == "cd"  # the expert alone: c (0.4) then d (0.9)
    r = refine(lm, "a", RefineConfig(objectives=["logprob", "contrastive=am"], top_k=3, max_new_tokens=3, screen=0, sweeps=2))
    assert r.final.text != "cd"  # the amateur likes "cd" even more, so the contrast prefers another output
    assert r.objective_after["total"] >= r.objective_before["total"] - 1e-9
    again = evaluate_objective(lm, "a", r.final.ids, RefineConfig(objectives=["logprob", "contrastive=am"], max_new_tokens=3))
    assert again["total"] == pytest.approx(r.objective_after["total"], abs=1e-5)


def test_contrast_switches_exact_pruning_off(amateur):
    from ortrefine.runtime.objectives import Context, Objective

    ctx = Context(prompt="a", tokenizer=table_lm(EXPERT).tokenizer, eos_ids=(0,), max_len=4)
    assert not Objective(["logprob", "contrastive:amateur=am,weight=0.3"], ctx).can_prune()


def test_no_amateur_or_another_tokenizer_is_a_one_line_error(monkeypatch, tmp_path):
    lm = table_lm(EXPERT)
    with pytest.raises(ConfigError, match="needs an amateur bundle"):
        refine(lm, "a", RefineConfig(objectives=["logprob", "contrastive"], max_new_tokens=2))
    with pytest.raises(ConfigError, match="no bundle folder at"):
        refine(lm, "a", RefineConfig(objectives=["logprob", f"contrastive:amateur={tmp_path}/missing"], max_new_tokens=2))

    class Other:
        vocab_size = len(CHARS)

        def token_strings(self, ids):
            return [f"<{i}>" for i in ids]

    other = table_lm(EXPERT)
    other.tokenizer = Other()
    monkeypatch.setattr(contrastive_mod, "load_amateur", lambda path: other)
    with pytest.raises(ConfigError, match="another tokenizer"):
        refine(lm, "a", RefineConfig(objectives=["logprob", "contrastive:amateur=am"], max_new_tokens=2))


def test_the_server_refuses_contrastive_terms():
    from ortrefine.serve.schemas import parse_refine
    from ortrefine.serve.settings import ServeSettings

    with pytest.raises(Exception, match="contrastive and judge terms import code or open files"):
        parse_refine({"model": "m", "prompt": "p", "objectives": ["logprob", "contrastive:amateur=/tmp/x"]}, ServeSettings())


def test_a_batch_dependent_amateur_scores_each_candidate_alone(amateur):
    from ortrefine.runtime.objectives import Batch, Context, Objective

    make_batch_dependent(amateur)

    def value(rows):
        ctx = Context(prompt="a", tokenizer=table_lm(EXPERT).tokenizer, eos_ids=(0,), max_len=3, prompt_ids=[1])
        ids = [[CHARS.index(c) for c in t] for t in rows]
        return Objective(["contrastive=am"], ctx).evaluate(Batch("a", ids, [np.zeros(len(i)) for i in ids], rows))[0][0]

    assert value(["cd"]) == value(["cd", "bf", "be"])
