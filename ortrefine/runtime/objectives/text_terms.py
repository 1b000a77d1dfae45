"""Terms computed on finished candidates' tokens or text. Each states the largest value it can
take (`max_value`), which is all exact pruning needs of it."""

from __future__ import annotations

import numpy as np

from ortrefine.degeneration import comments_on_text, is_degenerate
from ortrefine.errors import ConfigError
from ortrefine.runtime.keywords import covered as keyword_coverage, is_list, surface_forms
from ortrefine.runtime.objectives.base import Term
from ortrefine.runtime.objectives.options import Option
from ortrefine.runtime.objectives.registry import register
from ortrefine.runtime.objectives.text import content_words, words


@register
class Length(Term):
    """length(Y) = −|len(Y) − target| (in tokens, eos included; target defaults to the initial
    output's length, so the term holds the refined output near Y⁰'s length). With `short=1`
    only falling short counts, −max(0, target − len(Y)): a guard against summed log P's reward
    for ending early ("." scored above a whole continuation), which leaves longer outputs free."""

    name = "length"
    options = {"target": Option(int, None, low=1, high=1 << 31), "short": Option(bool, False)}
    target: int | None
    short: bool

    def evaluate(self, batch):
        target = self.target if self.target is not None else (self.ctx.initial_len or self.ctx.max_len)
        gap = np.array([len(i) for i in batch.ids], dtype=np.float64) - target
        return np.minimum(gap, 0.0) if self.short else -np.abs(gap)

    def max_value(self) -> float:
        return 0.0


@register
class Finish(Term):
    """finish(Y) = −1 when Y stops without ending (no eos, and not where the task ends it: a
    keyword sentence's end), else 0. A sentence cut off at the token cap is not the sentence
    asked for, however likely its words. Any length counts, so deleting a token of a cut-off
    output (keep mode) does not finish it."""

    name = "finish"

    def evaluate(self, batch):
        return np.array([0.0 if self.ctx.ended(ids) else -1.0 for ids in batch.ids], dtype=np.float64)

    def max_value(self) -> float:
        return 0.0


@register
class Repetition(Term):
    """repetition(Y) = −#(repeated token n-grams): every n-gram occurrence after its first counts 1."""

    name = "repetition"
    options = {"n": Option(int, 3, low=1, error="repetition: n must be a whole number >= 1, got {value}")}
    n: int

    def evaluate(self, batch):
        out = []
        for ids in batch.ids:
            grams = [tuple(ids[i : i + self.n]) for i in range(len(ids) - self.n + 1)]
            out.append(-(len(grams) - len(set(grams))))
        return np.array(out, dtype=np.float64)

    def max_value(self) -> float:
        return 0.0


@register
class Coverage(Term):
    """coverage(Y) = #{keywords Y uses in some inflection}, and 0 when Y only lists them.

    Matching is simplemma's (sat covers sit, mice covers mouse: `runtime.keywords`, the same
    matcher `ortrefine eval` reports with). A comma list of the concepts ("dog, frisbee, park.")
    scored full marks under log P + coverage and was most of what refinement "covered"; asked
    for a sentence, a list uses no concept. Keywords come from --keywords, else the content
    words of the prompt. Proposes, at every position, the first token of every inflection of
    each keyword still missing (with and without a leading space, and capitalised). By default
    it does so only where the keyword guide does not run: the guide already steers every
    re-decoded suffix toward the missing concepts, and on the CommonGen tuning sets the forms
    made guided refinement 3.4x slower for the same rate (benchmarks/eval). `forms=1` or `forms=0`
    forces it.
    """

    name = "coverage"
    options = {"forms": Option(bool, None)}  # None: unless the guide runs
    forms: bool | None

    def configure(self) -> None:
        ctx = self.ctx
        given = bool(ctx and ctx.keywords)
        raw = ctx.keywords if given else content_words(ctx.prompt if ctx else "")
        self.keywords = tuple(dict.fromkeys(k.strip().lower() for k in raw if isinstance(k, str) and k.strip()))
        for k in self.keywords:
            if not words(k):
                raise ConfigError(f"coverage: keyword {k!r} has no letters or digits, so no text can cover it; drop it from --keywords")
        if ctx is not None and not self.keywords:
            raise ConfigError("objective 'coverage' has no keywords: " + ("--keywords names none" if given else
                              "the prompt has no content words") + "; pass --keywords a,b,c")
        tok = ctx.tokenizer if ctx else None
        self._first_tokens = {k: self._first_tokens_of(tok, k) for k in self.keywords} if tok is not None else {}

    @staticmethod
    def _first_tokens_of(tok, keyword: str) -> list[int]:
        """The tokens that can start `keyword` in any inflection: what `propose` offers while it is missing."""
        firsts = set()
        for form in surface_forms(keyword):
            for text in (" " + form, form, " " + form.capitalize()):
                ids = tok.encode_plain(text)
                if ids:
                    firsts.add(ids[0])
        return sorted(firsts)

    def covered(self, text: str) -> list[bool]:
        return keyword_coverage(text, self.keywords)

    def evaluate(self, batch):
        return np.array([0.0 if is_list(t, self.keywords) else float(sum(self.covered(t))) for t in batch.texts], dtype=np.float64)

    def max_value(self) -> float:
        return float(len(self.keywords))

    def propose(self, prefix_ids):
        if self.ctx is None or not (self.forms if self.forms is not None else not self.ctx.guided):
            return []
        have = self.covered(self.ctx.tokenizer.decode(prefix_ids))
        return [t for k, c in zip(self.keywords, have) if not c for t in self._first_tokens.get(k, [])]


@register
class Echo(Term):
    """echo(Y) = −#(word n-grams of Y that occur in the prompt), n = 4 by default (lower-cased
    words). Copying the prompt is cheap under log P, so refinement drifted into quoting it ("In the
    context of the original sentence, "The boy needed a swim suit," …"), which the evaluation
    flags as an echo."""

    name = "echo"
    options = {"n": Option(int, 4, low=1, error="echo: n must be a whole number >= 1, got {value}")}
    n: int

    def configure(self) -> None:
        prompt = words(self.ctx.prompt) if self.ctx is not None else []
        self.prompt_grams = {tuple(prompt[i : i + self.n]) for i in range(len(prompt) - self.n + 1)}

    def evaluate(self, batch):
        out = []
        for text in batch.texts:
            w = words(text)
            out.append(-sum(tuple(w[i : i + self.n]) in self.prompt_grams for i in range(len(w) - self.n + 1)))
        return np.array(out, dtype=np.float64)

    def max_value(self) -> float:
        return 0.0


@register
class Meta(Term):
    """meta(Y) = −1 when Y talks about a text as its editor, or explains the prompt as "a classic
    example of" something, though the prompt asked for no editing; else 0. An instruct model
    finds that voice likely after a one-sentence prompt ("I made a few minor tweaks to the text
    to improve its clarity and grammar."), and refining a continuation under its own log P
    turned 7 of 59 continuations into such remarks. The same detector is the evaluation's
    meta_comment flag."""

    name = "meta"

    def evaluate(self, batch):
        prompt = self.ctx.prompt if self.ctx is not None else ""
        return np.array([-1.0 if comments_on_text(t, prompt) else 0.0 for t in batch.texts], dtype=np.float64)

    def max_value(self) -> float:
        return 0.0


@register
class Guard(Term):
    """guard(Y) = −1 when the text checks call Y degenerate (a word 3-gram 3+ times, distinct-2
    below 0.7, a character run of 8+, the prompt's opening echoed, keywords listed instead of
    used, an editor's remark nobody asked for, no words at all; ortrefine.degeneration), else 0.
    The graded terms (repetition, echo) weigh loops against log P and lose where an instruct
    model finds the loop or the remark likely enough: at a large weight this term refuses any
    edit that makes a clean output degenerate, and the first clean candidate beats a degenerate
    Y⁰. It is the evaluation's own definition, so read the texts too: a near miss (a phrase
    twice) passes it."""

    name = "guard"

    def evaluate(self, batch):
        prompt, keywords = (self.ctx.prompt, self.ctx.keywords) if self.ctx is not None else ("", ())
        return np.array([-1.0 if is_degenerate(t, prompt, keywords) else 0.0 for t in batch.texts], dtype=np.float64)

    def max_value(self) -> float:
        return 0.0
