"""The judge term: prefer what another model, with its own tokenizer, finds likely.

A real use is refining a small model's draft against a bigger model's taste: the small model
proposes and re-decodes, the bigger one only reads finished candidates. judge(Y) is
log p_judge(text(Y) | X) through the same path as `ortrefine eval`'s judge (the decoded text,
re-encoded by the judge; a chat prompt's answer on the next line), plus the judge's own end of
text when Y ended, so that stopping early is not free. An evaluation whose judge is this bundle
is not independent, and `ortrefine eval` says so.
"""

from __future__ import annotations

import math

import numpy as np

from ortrefine.errors import ConfigError
from ortrefine.runtime.judging import JudgeScore, judge_context, judge_texts
from ortrefine.runtime.objectives.base import Term
from ortrefine.runtime.objectives.options import Option
from ortrefine.runtime.objectives.other_model import check_folder, load_bundle, rows_per_pass
from ortrefine.runtime.objectives.registry import register


@register
class Judge(Term):
    """judge(Y) = Σ log p_judge over the judge's tokens of Y's text (per token with `mean=1`).
    It is ≤ 0, so exact pruning stays on. Texts are scored once per refine()."""

    name, value_option = "judge", "bundle"
    options = {
        "bundle": Option(str, missing="objective 'judge' needs a bundle: judge=path/to/bundle "
                                      "(another model, any tokenizer), or judge:bundle=PATH,weight=0.5,mean=1"),
        "mean": Option(bool, False),
    }
    bundle: str
    mean: bool

    def configure(self) -> None:
        self.lm_judge = None
        self._seen: dict[tuple[str, bool], JudgeScore] = {}
        if self.ctx is None:  # a spec checked without a task: the bundle is opened when one runs
            return
        check_folder(self.name, self.bundle)
        self.lm_judge = load_bundle(self.bundle)
        self.context = judge_context(self.ctx.prompt, self.ctx.chat)
        room = self.lm_judge.bundle.context_length - len(self.lm_judge.tokenizer.encode(self.context))
        if room < self.ctx.max_len + 1:  # else long outputs would be judged on a prefix, without their end
            raise ConfigError(f"objective 'judge': {self.bundle} reads {self.lm_judge.bundle.context_length} tokens, too few for "
                              f"this prompt and {self.ctx.max_len} new tokens; shorten the prompt or --max-new-tokens")
        self.rows = rows_per_pass(self.lm_judge, 4)
        # a text the judge reads no token of (only special tokens, not ended) scores as if every
        # position were a token drawn at random: never better than a text it can read
        floor = -math.log(max(self.lm_judge.tokenizer.vocab_size, 2))
        self.empty_value = floor if self.mean else floor * self.ctx.max_len

    def evaluate(self, batch):
        if self.lm_judge is None or not batch.ids:
            return np.zeros(len(batch), dtype=np.float64)
        # a whole answer (ctx.ended) has the judge read its own end of text after it
        keys = [(text, self.ctx.ended(ids)) for text, ids in zip(batch.texts, batch.ids)]
        todo = [k for k in dict.fromkeys(keys) if k not in self._seen]
        if todo:
            scores = judge_texts(self.lm_judge, self.context, [t for t, _ in todo], batch=self.rows, ended=[e for _, e in todo])
            self._seen.update(zip(todo, scores))
        return np.array([self._value(self._seen[k]) for k in keys], dtype=np.float64)

    def _value(self, score: JudgeScore) -> float:
        if not score.tokens:
            return self.empty_value
        return score.total / score.tokens if self.mean else score.total

    def max_value(self) -> float:
        return 0.0
