"""The answered keyword turns put before a keyword chat prompt (ortrefine/runtime/examples.py)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from ortrefine.errors import ConfigError
from ortrefine.evaluate.data import EvalItem, parse_system
from ortrefine.runtime.examples import DEFAULT_EXAMPLE_COUNT, KEYWORD_EXAMPLES, default_examples, example_messages
from ortrefine.runtime.refine import RefineConfig

DATA = Path(__file__).resolve().parents[1] / "data" / "commongen-dev-120.jsonl"


@pytest.mark.parametrize("kw,on", [
    (dict(keywords=("dog", "park"), chat=True), True),
    (dict(keywords=("dog", "park")), False),  # not a chat prompt: the examples are chat turns
    (dict(chat=True), False),  # no keywords: not the keyword task
    (dict(keywords=("dog", "park"), chat=True, examples=False), False),
    (dict(keywords=("dog", "park"), chat=True, examples=True), True),
    (dict(keywords=("dog", "park"), chat=True, examples=0), False),
])
def test_the_examples_go_in_for_a_keyword_chat_prompt_only(kw, on):
    assert RefineConfig(**kw).example_turns == (default_examples() if on else ())


def test_a_count_takes_the_first_examples():
    assert RefineConfig(keywords=("dog",), chat=True, examples=1).example_turns == KEYWORD_EXAMPLES[:1]
    assert RefineConfig(keywords=("dog",), chat=True, examples=len(KEYWORD_EXAMPLES)).example_turns == KEYWORD_EXAMPLES
    assert 0 < DEFAULT_EXAMPLE_COUNT <= len(KEYWORD_EXAMPLES) and default_examples() == KEYWORD_EXAMPLES[:DEFAULT_EXAMPLE_COUNT]
    assert parse_system({"name": "g", "strategy": "greedy", "examples": 2}, "s").example_turns(
        EvalItem("a", "keywords", "p", keywords=("dog",))) == KEYWORD_EXAMPLES[:2]


@pytest.mark.parametrize("kw", [dict(keywords=("dog",), examples=True), dict(chat=True, examples=True)])
def test_asking_for_the_examples_where_they_cannot_apply_is_an_error(kw):
    with pytest.raises(ConfigError, match="need a chat prompt and keywords"):
        RefineConfig(**kw)
    for bad in ("yes", -1, len(KEYWORD_EXAMPLES) + 1):
        with pytest.raises(ConfigError, match="true, false or a count"):
            RefineConfig(keywords=("dog",), chat=True, examples=bad)


def test_a_rebuilt_config_resolves_the_examples_again():
    cfg = RefineConfig(keywords=("dog",), chat=True)
    assert replace(cfg, keywords=()).example_turns == ()
    assert replace(RefineConfig(chat=True), keywords=("dog",)).example_turns == default_examples()
    assert replace(RefineConfig(keywords=("dog",), chat=True, examples=False), max_new_tokens=8).example_turns == ()


def test_the_examples_use_no_concept_of_the_commongen_sets():
    """An example holding a set's concept would hand the model part of that set's answer."""
    concepts = {k for line in DATA.read_text().splitlines() for k in json.loads(line)["keywords"]}
    words = {w.lower() for user, answer in KEYWORD_EXAMPLES for w in re.findall(r"[A-Za-z]+", user.split(":", 1)[1] + " " + answer)}
    assert words and not words & concepts


def test_each_example_answer_uses_its_words_in_one_sentence():
    from ortrefine.lexicon import covered_keywords, is_keyword_list

    for user, answer in KEYWORD_EXAMPLES:
        words = [w.strip() for w in user.split(":", 1)[1].rstrip(".").split(",")]
        assert sorted(covered_keywords(answer, words)) == sorted(words), answer
        assert not is_keyword_list(answer, words) and answer.count(".") == 1 and answer.endswith(".")
    msgs = example_messages(KEYWORD_EXAMPLES)
    assert [m["role"] for m in msgs] == ["user", "assistant"] * len(KEYWORD_EXAMPLES)


def test_no_examples_needs_keywords_and_chat_in_the_cli(tmp_path):
    from ortrefine.cli.refine_cmd import refine as refine_cmd

    r = CliRunner().invoke(refine_cmd, ["x", "--keywords", "dog", "--no-examples", "-m", str(tmp_path / "none")])
    assert r.exit_code == 2 and "--no-examples only applies with --keywords and --chat" in r.output
    r = CliRunner().invoke(refine_cmd, ["x", "--chat", "--keywords", "dog", "--no-examples", "-m", str(tmp_path / "none")])
    assert r.exit_code == 1 and "no bundle at" in r.output  # accepted; only the missing bundle stops it


def test_an_eval_system_puts_the_examples_before_keyword_chat_prompts_only():
    greedy = parse_system({"name": "g", "strategy": "greedy", "examples": True}, "s")
    keywords, cont = EvalItem("a", "keywords", "p", keywords=("dog",)), EvalItem("b", "continue", "p")
    assert greedy.example_turns(keywords) == default_examples() and greedy.example_turns(cont) == ()
    assert parse_system({"name": "g", "strategy": "greedy"}, "s").example_turns(keywords) == ()
    assert greedy.generation_config(8).max_new_tokens == 8  # the option is not a GenerationConfig field
    for bad in ("yes", 9):
        with pytest.raises(ConfigError, match="examples must be true, false or a count"):
            parse_system({"name": "g", "strategy": "greedy", "examples": bad}, "s")
    refine = parse_system({"name": "r", "strategy": "refine", "examples": True}, "s")
    assert refine.refine_config(8, keywords).example_turns == default_examples()
    assert refine.refine_config(8, cont).example_turns == ()  # not refused: the setting is for keyword prompts
    assert parse_system({"name": "r", "strategy": "refine"}, "s").refine_config(8, keywords).example_turns == default_examples()


def test_the_server_takes_examples():
    from ortrefine.serve.schemas import APIError
    from ortrefine.serve.schemas import parse_refine
    from ortrefine.serve.settings import ServeSettings

    settings = ServeSettings(port=0)
    req = parse_refine({"model": "m", "prompt": "x", "keywords": "dog", "examples": False}, settings)
    assert req.config["examples"] is False
    with pytest.raises(APIError):
        parse_refine({"model": "m", "prompt": "x", "examples": "no"}, settings)


SHORT = (("Use: a, b.", "A b."),)  # fits the tiny model's 256-token context, which the real examples do not


def test_refine_reads_j_after_the_examples(tiny_bundles, monkeypatch):
    import ortrefine
    from ortrefine.runtime.refine import evaluate_objective, refine

    monkeypatch.setattr("ortrefine.runtime.refine.config.default_examples", lambda: SHORT)
    lm = ortrefine.load(tiny_bundles["llama"], provider="cpu")
    prompt = "Write one sentence that uses all of these words: dog, park."
    cfg = RefineConfig(chat=True, keywords=("dog", "park"), max_new_tokens=4, screen=0)
    r = refine(lm, prompt, cfg)
    with_examples = lm.tokenizer.encode_messages(example_messages(SHORT) + [{"role": "user", "content": prompt}])
    assert r.prompt_ids == with_examples and r.prompt == prompt
    plain = refine(lm, prompt, replace(cfg, examples=False))
    assert plain.prompt_ids == lm.tokenizer.encode(prompt, chat=True) and len(plain.prompt_ids) < len(r.prompt_ids)
    # J of the result, evaluated afresh, is read in the same context the search read it in
    again = evaluate_objective(lm, prompt, r.final.ids, cfg, initial_len=len(r.initial.ids))
    assert again["total"] == pytest.approx(r.objective_after["total"], abs=1e-3)
    without = evaluate_objective(lm, prompt, r.final.ids, replace(cfg, examples=False), initial_len=len(r.initial.ids))
    assert without["total"] != pytest.approx(again["total"], abs=1e-3)


def test_examples_that_do_not_fit_the_context_are_left_out_not_the_prompt_refused(tiny_bundles):
    import ortrefine
    from ortrefine.runtime.refine import refine

    lm = ortrefine.load(tiny_bundles["llama"], provider="cpu")
    prompt = "Write one sentence that uses all of these words: dog, park."
    full = lm.tokenizer.encode_messages(example_messages(default_examples()) + [{"role": "user", "content": prompt}])
    assert len(full) + 4 > lm.bundle.context_length  # the premise: the real examples overflow this model
    r = refine(lm, prompt, RefineConfig(chat=True, keywords=("dog", "park"), max_new_tokens=4, screen=0))
    assert r.prompt_ids == lm.tokenizer.encode(prompt, chat=True)
    assert r.config["examples"] is False and not r.config["example_turns"]  # the result says what J read
    # so does an eval greedy system that asks for them
    from ortrefine.evaluate.run import _decode

    greedy = parse_system({"name": "g", "strategy": "greedy", "examples": True}, "s")
    text, ids, _, _ = _decode(lm, EvalItem("a", "keywords", prompt, keywords=("dog", "park")), greedy, 4)
    assert text == lm.generate(lm.tokenizer.encode(prompt, chat=True), max_new_tokens=4).text


def test_a_prompt_given_as_ids_records_that_it_had_no_examples(tiny_bundles, monkeypatch):
    import ortrefine
    from ortrefine.runtime.refine import evaluate_objective, refine

    monkeypatch.setattr("ortrefine.runtime.refine.config.default_examples", lambda: SHORT)
    lm = ortrefine.load(tiny_bundles["llama"], provider="cpu")
    prompt = "Write one sentence that uses all of these words: dog, park."
    cfg = RefineConfig(chat=True, keywords=("dog", "park"), max_new_tokens=4, screen=0)
    r = refine(lm, lm.tokenizer.encode(prompt, chat=True), cfg)
    assert r.config["examples"] is False and r.prompt_ids == lm.tokenizer.encode(prompt, chat=True)
    again = evaluate_objective(lm, prompt, r.final.ids, replace(cfg, examples=r.config["examples"]), initial_len=len(r.initial.ids))
    assert again["total"] == pytest.approx(r.objective_after["total"], abs=1e-3)


def test_a_batch_job_can_leave_the_examples_out():
    from ortrefine.batch.config import BatchConfig

    job = BatchConfig.from_dict({"task": "refine", "chat": True, "examples": False})
    assert replace(job.refine, keywords=("dog",)).example_turns == ()
