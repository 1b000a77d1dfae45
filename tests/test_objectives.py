"""Objective terms declare their options; the shared code converts, checks and lists them."""

from __future__ import annotations

import numpy as np
import pytest

from fakelm import table_lm
from ortrefine.errors import ConfigError
from ortrefine.runtime.objectives import TERMS, Batch, Context, LogProb, Objective, ObjectiveSpec, Option, Term, term_class


def ctx(**kw) -> Context:
    return Context(prompt="Write about dogs", tokenizer=table_lm({}).tokenizer, eos_ids=(0,), max_len=8, **kw)


def batch() -> Batch:
    return Batch("p", [[1, 2, 0], [3, 0]], [np.array([-0.5, -0.5, -1.0]), np.array([-2.0, -1.0])], ["dogs", "a"])


@pytest.mark.parametrize("name", TERMS.names())
def test_unknown_option_lists_the_declared_ones(name):
    known = ", ".join(sorted(term_class(name).options)) or "none"
    with pytest.raises(ConfigError, match=f"unknown option\\(s\\) 'zz'; it takes: {known}$"):
        Objective([f"{name}:zz=1"], ctx())


class ScaledLogProb(Term):
    """A term written the way the README tells users to: one class, options declared."""

    name, lm = "scaled-logprob", True
    options = {"k": Option(int, 2, low=1), "half": Option(bool, False)}

    def evaluate(self, batch):
        return LogProb(1.0).evaluate(batch) * self.k * (0.5 if self.half else 1.0)

    def upper_bound(self, lp_sum, ref_sum, length):
        return lp_sum * self.k * (0.5 if self.half else 1.0)


@pytest.fixture
def scaled(monkeypatch):
    monkeypatch.setitem(TERMS._entries, ScaledLogProb.name, ScaledLogProb)


def test_a_new_term_is_one_class(scaled):
    obj = Objective(["scaled-logprob=0.5:k=3,half=yes"], ctx())
    (term,) = obj.terms
    assert (term.k, term.half, term.weight) == (3, True, 0.5)
    total, parts = obj.evaluate(batch())
    assert parts["scaled-logprob"].tolist() == [-3.0, -4.5] and total.tolist() == [-1.5, -2.25]
    assert obj.upper_bound(np.array([-1.0]), np.zeros(1), np.ones(1)).tolist() == [-0.75]
    assert Objective(["scaled-logprob"], ctx()).terms[0].k == 2  # the declared default


@pytest.mark.parametrize("spec,text", [
    ("scaled-logprob:k=0", "objective 'scaled-logprob': option k must be >= 1, got '0'"),
    ("scaled-logprob:k=2.5", "option k must be a whole number"),
    ("scaled-logprob:half=maybe", "option half must be 1/0"),
    ("scaled-logprob:kk=1", "unknown option(s) 'kk'; it takes: half, k"),
])
def test_a_new_terms_options_are_checked_by_the_shared_code(scaled, spec, text):
    with pytest.raises(ConfigError, match=text.replace("(", r"\(").replace(")", r"\)")):
        Objective([spec], ctx())


def test_value_option_takes_name_equals_value():
    """reward=m:f sets fn (its colon is not the options'); other terms read =VALUE as the weight."""
    assert ObjectiveSpec.parse("reward=m:f:label=2") == ObjectiveSpec("reward", 1.0, {"fn": "m:f:label=2"})
    assert ObjectiveSpec.parse("coverage=2:x=1") == ObjectiveSpec("coverage", 2.0, {"x": "1"})


def test_text_option_refuses_other_types():
    with pytest.raises(ConfigError, match="objective 'reward': fn must be module:function or a folder, got 5"):
        Objective([ObjectiveSpec("reward", 1.0, {"fn": 5})], ctx())
    with pytest.raises(TypeError, match="float, int, bool or str"):
        Option(list)


@pytest.mark.parametrize("specs", [["coverage", "coverage=2"], [ObjectiveSpec("logprob"), "logprob=2"]])
def test_two_terms_of_one_name_are_refused_in_the_library(specs):
    """The parts dict is keyed by term name: a second term of a name is refused rather than sharing its entry."""
    with pytest.raises(ConfigError, match="given twice"):
        Objective(specs, ctx(keywords=("dog",)))


def test_every_term_has_its_own_part():
    obj = Objective(["logprob", "mean-logprob", "repetition:n=1", "length:target=2"], ctx())
    _, parts = obj.evaluate(batch())
    assert list(parts) == obj.names == ["logprob", "mean-logprob", "repetition", "length"]


def test_echo_counts_the_prompts_word_ngrams_the_output_copies():
    from ortrefine.runtime.objectives import Batch, Context, Objective

    ctx = Context(prompt="The boy needed a swim suit", tokenizer=None, eos_ids=(0,), max_len=32)
    obj = Objective(["echo"], ctx)
    texts = ['. In the sentence "The boy needed a swim suit," the boy', ". He went to the pool.", "the BOY needed a"]
    total, parts = obj.evaluate(Batch("p", [[1]] * 3, [np.zeros(1)] * 3, texts))
    assert parts["echo"].tolist() == [-3.0, 0.0, -1.0]  # 4-grams: the boy needed a / boy needed a swim / needed a swim suit
    assert obj.can_prune() and Objective(["echo:n=2"], ctx).evaluate(Batch("p", [[1]], [np.zeros(1)], ["a swim"]))[1]["echo"][0] == -1.0


def test_length_short_only_counts_falling_short():
    from ortrefine.runtime.objectives import Batch, Context, Objective

    ctx = Context(prompt="p", tokenizer=None, eos_ids=(0,), max_len=32, initial_len=5)
    ids = [[1] * 2, [1] * 5, [1] * 9]
    batch = Batch("p", ids, [np.zeros(len(i)) for i in ids], ["x"] * 3)
    assert Objective(["length:short=1"], ctx).evaluate(batch)[1]["length"].tolist() == [-3.0, 0.0, 0.0]
    assert Objective(["length"], ctx).evaluate(batch)[1]["length"].tolist() == [-3.0, 0.0, -4.0]


def test_evaluate_objective_measures_the_length_term_against_the_initial_output():
    from fakelm import table_lm
    from ortrefine.runtime.refine import RefineConfig
    from ortrefine.runtime.refine.api import evaluate_objective

    lm = table_lm({"a": {"b": 0.9}, "b": {"c": 0.9}})
    cfg = RefineConfig(objectives=["logprob", "length=2.0:short=1"], max_new_tokens=4)
    assert evaluate_objective(lm, "a", [2], cfg)["length"] == 0.0  # no Y⁰ given: measured against itself
    assert evaluate_objective(lm, "a", [2], cfg, initial_len=3)["length"] == -2.0
