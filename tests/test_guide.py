"""The keyword guide: which logits it moves, when it ends a sentence, and that a guided refinement
stays exact (J is the model's own, and the scorer's suffixes are the guide's choices)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Sequence

import numpy as np
import pytest

from fakelm import FakeLM
from ortrefine.errors import ConfigError
from ortrefine.runtime.guide import Guide, GuideConfig, guided_decode
from ortrefine.runtime.refine import RefineConfig, refine
from ortrefine.runtime.refine.api import evaluate_objective

WORDS = ["", "A", " dog", " cat", " sat", " sits", " on", " the", " mat", ".", " park", " wat", "er", " water", " ran", " in", "\n"]
ID = {w: i for i, w in enumerate(WORDS)}


class WordTokenizer:
    """One token per entry of WORDS; id 0 is eos (decodes to nothing); encoding is greedy longest match."""

    vocab_size = len(WORDS)

    def encode(self, text: str, chat: bool = False, system: str | None = None) -> list[int]:
        return self.encode_plain(text)

    def encode_plain(self, text: str) -> list[int]:
        out, i = [], 0
        while i < len(text):
            best = max((w for w in WORDS[1:] if text.startswith(w, i)), key=len, default=None)
            if best is None:
                i += 1
                continue
            out.append(ID[best])
            i += len(best)
        return out

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(WORDS[int(i)] for i in ids)

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        return [WORDS[int(i)] for i in ids]


class WordLM(FakeLM):
    def __init__(self, next_logprobs):
        super().__init__(next_logprobs)
        self.tokenizer = WordTokenizer()
        self.bundle = SimpleNamespace(pad_id=0, eos_ids=(0,), context_length=64, path="fake-words", manifest={})

    @property
    def vocab_size(self) -> int:
        return len(WORDS)

    def encode_prompt(self, prompt, chat=False, max_new_tokens=0, system=None):
        return [ID["\n"]] if isinstance(prompt, str) else list(prompt)


def bigram_lm(table: dict[str, dict[str, float]]) -> WordLM:
    """log p(next | last token) from {last: {next: p}}; unlisted tokens share a small mass."""

    def next_logprobs(ctx: list[int]) -> np.ndarray:
        p = np.full(len(WORDS), 1e-4)
        for w, q in table.get(WORDS[ctx[-1]], {}).items():
            p[ID[w]] = q
        return np.log(p / p.sum()).astype(np.float32)

    return WordLM(next_logprobs)


# the prompt is "\n"; "A dog ran." is greedy; the keyword "cat" only enters if something pushes it
STORY = {"\n": {"A": 0.9}, "A": {" dog": 0.6, " cat": 0.3}, " dog": {" ran": 0.7, " sat": 0.2}, " cat": {" sat": 0.8, " ran": 0.1},
         " ran": {".": 0.8, " on": 0.1}, " sat": {" on": 0.7, ".": 0.2}, " on": {" the": 0.9}, " the": {" mat": 0.6, " park": 0.3},
         " mat": {".": 0.9}, " park": {".": 0.9}, ".": {"": 0.9}}


def guide(keywords, **kw) -> Guide:
    return Guide(WordTokenizer(), (0,), keywords, GuideConfig(**kw))


def test_bias_goes_to_missing_keywords_in_every_inflection_and_never_to_the_first_token():
    g = guide(["sit", "dog"], bias=5.0, end_penalty=0.0, no_repeat_ngram=0)
    flat = np.zeros(len(WORDS), dtype=np.float32)
    assert np.array_equal(g.adjusted([], flat), flat)  # the output's first token is the model's
    x = g.adjusted([ID["A"]], flat)
    assert {WORDS[i] for i in np.flatnonzero(x == 5.0)} == {" sat", " sits", " dog"}
    x = g.adjusted([ID["A"], ID[" dog"]], flat)  # dog covered: only sit's forms now
    assert {WORDS[i] for i in np.flatnonzero(x == 5.0)} == {" sat", " sits"}


def test_a_begun_keyword_is_carried_on():
    g = guide(["water"], bias=2.0, end_penalty=0.0, no_repeat_ngram=0)
    x = g.adjusted([ID["A"], ID[" wat"]], np.zeros(len(WORDS), dtype=np.float32))
    assert x[ID["er"]] == 2.0 and x[ID[" water"]] == 2.0 and x[ID[" dog"]] == 0.0


def test_ending_costs_while_a_keyword_is_missing_and_not_after():
    g = guide(["cat"], bias=0.0, end_penalty=3.0, no_repeat_ngram=0)
    flat = np.zeros(len(WORDS), dtype=np.float32)
    x = g.adjusted([ID["A"], ID[" dog"]], flat)
    assert x[ID["."]] == -3.0 and x[0] == -3.0 and x[ID["\n"]] == -3.0 and x[ID[" ran"]] == 0.0
    assert np.array_equal(g.adjusted([ID["A"], ID[" cat"]], flat), flat)
    done = guide(["cat"], bias=0.0, end_penalty=3.0, end_bonus=2.0, no_repeat_ngram=0).adjusted([ID["A"], ID[" cat"]], flat)
    assert done[ID["."]] == 2.0 and done[ID["\n"]] == 2.0 and done[ID[" ran"]] == 0.0


def test_no_repeated_ngram():
    g = guide(["cat"], bias=0.0, end_penalty=0.0, no_repeat_ngram=3)
    ids = [ID[w] for w in ("A", " dog", " sat", " on", " the", " dog", " sat")]
    x = g.adjusted(ids, np.zeros(len(WORDS), dtype=np.float32))
    assert x[ID[" on"]] == -np.inf and np.isfinite(np.delete(x, ID[" on"])).all()  # "dog sat on" again


def test_one_sentence_ends_at_the_first_sentence_end_of_three_words_or_more():
    g = guide(["cat"])
    assert not g.ends([ID["A"], ID["."]])  # too short to be the sentence
    assert g.ends([ID["A"], ID[" dog"], ID[" ran"], ID["."]])
    assert g.ends([ID["A"], ID[" dog"], 0])
    assert not guide(["cat"], one_sentence=False).ends([ID["A"], ID[" dog"], ID[" ran"], ID["."]])


@pytest.mark.parametrize("kw, match", [(dict(bias=-1.0), "bias"), (dict(end_penalty=float("nan")), "end-penalty"),
                                       (dict(no_repeat_ngram=-2), "no-repeat-ngram"), (dict(bias=True), "bias")])
def test_bad_guide_settings(kw, match):
    with pytest.raises(ConfigError, match=match):
        GuideConfig(**kw)


def test_guide_is_on_for_keywords_in_regenerate_mode_only_unless_asked():
    assert RefineConfig(keywords=("cat",)).guide_config == GuideConfig()
    assert RefineConfig(keywords=("cat",), mode="keep").guide_config is None
    assert RefineConfig(keywords=("cat",), guide=False).guide_config is None
    assert RefineConfig(keywords=("cat",), guide={"bias": 2.0}).guide_config == GuideConfig(bias=2.0)
    assert RefineConfig().guide_config is None
    with pytest.raises(ConfigError, match="needs keywords"):
        RefineConfig(guide=True)
    with pytest.raises(ConfigError, match="guide must be"):
        RefineConfig(keywords=("cat",), guide="strong")
    with pytest.raises(ConfigError, match="mode keep regenerates none"):
        RefineConfig(keywords=("cat",), guide=True, mode="keep")
    with pytest.raises(ConfigError, match="unknown guide setting.*'bais'.*known: bias"):
        RefineConfig(keywords=("cat",), guide={"bais": 1.0})
    with pytest.raises(ConfigError, match="one-sentence"):
        GuideConfig(one_sentence="no")


def test_an_explicit_off_survives_a_rebuilt_config():
    """dataclasses.replace re-runs __post_init__ (refine() does it for batch-dependent bundles)."""
    from dataclasses import replace

    cfg = replace(RefineConfig(keywords=("cat",), guide=False), max_rows=1)
    assert cfg.guide_config is None
    lm = bigram_lm(STORY)
    lm.bundle.manifest["batch_invariant"] = False
    r = refine(lm, "x", RefineConfig(keywords=("cat",), guide=False, max_new_tokens=8))
    assert r.initial.text == "A dog ran."  # greedy, not the guided "A cat sat on the mat."


def test_short_pieces_and_whole_words_are_not_taken_for_a_keyword():
    g = guide(["theater", "apple"], bias=5.0, end_penalty=0.0, no_repeat_ngram=0)
    x = g.adjusted([ID["A"], ID[" the"]], np.zeros(len(WORDS), dtype=np.float32))
    assert x[ID[" the"]] == 0.0  # " the" is 3 letters: not a piece of "theater"
    assert not g._continuations("A dog ate a", "apple") and not g._continuations("I saw the", "theater")


def test_guided_decode_puts_the_keyword_in_where_greedy_drops_it():
    lm = bigram_lm(STORY)
    ids, why = guided_decode(lm, [ID["\n"]], guide(["cat"], bias=2.0), 8)
    assert lm.tokenizer.decode(ids) == "A cat sat on the mat." and why == "stop"
    unguided = refine(lm, "A", RefineConfig(keywords=("cat",), guide=False, max_new_tokens=8, sweeps=1))
    assert "cat" not in unguided.initial.text


def test_guided_refinement_is_exact_and_never_worse():
    """Y⁰ is the guided decode; the final J is the model's own J of the final text, and no lower
    than Y⁰'s: the guide only picks which suffixes are tried."""
    lm = bigram_lm(STORY)
    cfg = RefineConfig(keywords=("cat", "park"), guide=GuideConfig(bias=2.0), max_new_tokens=8, screen=0, sweeps=2)
    r = refine(lm, "A", cfg)
    ids, _ = guided_decode(lm, [ID["\n"]], guide(["cat", "park"], bias=2.0), 8)
    assert r.initial.ids == ids
    assert r.objective_after["total"] >= r.objective_before["total"] - 1e-9
    again = evaluate_objective(lm, "A", r.final.ids, RefineConfig(keywords=("cat", "park"), guide=False, max_new_tokens=8))
    assert again["total"] == pytest.approx(r.objective_after["total"], abs=1e-5)
    assert "cat" in r.final.text and "park" in r.final.text and r.final.text.endswith(".")


def test_the_scorers_suffix_is_the_guides_choice():
    """Every regenerated row the scorer finishes is, after the candidate's own token, what the
    guide picks from the model's logits, and it stops where the guide ends the sentence."""
    lm = bigram_lm(STORY)
    g = guide(["cat", "park"], bias=2.0)
    seen = []
    from ortrefine.runtime.refine import scorer as scorer_mod

    orig = scorer_mod._Scorer._judge_finished

    def spy(self, state, rows, best, offset):
        seen.extend((rows.ids(r), rows.cands[r].start) for r in rows.finished)
        return orig(self, state, rows, best, offset)

    scorer_mod._Scorer._judge_finished = spy
    try:
        refine(lm, "A", RefineConfig(keywords=("cat", "park"), guide=GuideConfig(bias=2.0), max_new_tokens=8, screen=0, prune=False))
    finally:
        scorer_mod._Scorer._judge_finished = orig
    assert len(seen) > 3
    for row, start in seen:
        for t in range(start + 1, len(row)):
            assert not g.ends(row[:t]), lm.tokenizer.decode(row)
            assert row[t] == g.pick(row[:t], lm.next_logprobs([ID["\n"], *row[:t]])), lm.tokenizer.decode(row)
        assert g.ends(row) or len(row) == 8


@pytest.mark.parametrize("args, ok", [(["--keywords", "dog", "--no-guide"], True), (["--no-guide"], False),
                                      (["--keywords", "dog", "--mode", "keep", "--no-guide"], False)])
def test_no_guide_in_the_cli_only_where_the_guide_would_run(tmp_path, args, ok):
    from click.testing import CliRunner

    from ortrefine.cli.refine_cmd import refine as refine_cmd

    r = CliRunner().invoke(refine_cmd, ["x", *args, "-m", str(tmp_path / "none")])
    if ok:
        assert r.exit_code == 1 and "no bundle at" in r.output  # accepted; only the missing bundle stops it
    else:
        assert r.exit_code == 2 and "--no-guide only applies with --keywords" in r.output


def test_j_of_a_sentence_at_the_cap_is_the_same_with_the_guide_off():
    """finish counts the keyword sentence's end as an ending whether or not the guide steered,
    so `--no-guide`, keep mode and evaluate_objective score the refined text as refine did."""
    lm = bigram_lm(STORY)
    cfg = RefineConfig(keywords=("cat", "park"), guide=GuideConfig(bias=2.0), max_new_tokens=7, screen=0, sweeps=2)
    r = refine(lm, "A", cfg)
    assert len(r.final.ids) == 7 and r.final.text.endswith(".") and r.objective_after["finish"] == 0.0
    for other in (RefineConfig(keywords=("cat", "park"), guide=False, max_new_tokens=7), RefineConfig(keywords=("cat", "park"), mode="keep", max_new_tokens=7)):
        again = evaluate_objective(lm, "A", r.final.ids, other)
        assert again["total"] == pytest.approx(r.objective_after["total"], abs=1e-5)
