"""Objective terms J(Y) = Σₖ wₖ · termₖ(Y), evaluated on a batch of candidate outputs.

Two kinds of term:
- *LM terms* (logprob, mean-logprob, reference: `lm_terms`) are functions of sums of per-token
  log-probabilities, each term ≤ 0 — so a partial sum bounds the final value from above, which
  is what lets the refiner drop a candidate exactly before it is fully scored.
- *Text terms* (length, repetition, echo, finish, coverage, meta, guard: `text_terms`; reward: `reward`; contrastive: another
  bundle's log P of the same ids, `contrastive`; judge: another model's log P of the text,
  `judge_term`) are computed on finished candidates; each states the largest value it can take
  (`max_value`), +inf when unknown (reward, contrastive).
All terms go through `Objective.evaluate`, the one scoring interface of the refiner.

A new term is one class: subclass `Term`, set `name` and `options` (name -> `Option`), write
`evaluate` (and `upper_bound` or `max_value`), and decorate it with `register`.
"""

from ortrefine.runtime.objectives.base import Batch, Context, Term
from ortrefine.runtime.objectives.options import Option, opt_bool, opt_float, opt_int
from ortrefine.runtime.objectives.registry import TERMS, register, term_class
from ortrefine.runtime.objectives.text import STOPWORDS, content_words
from ortrefine.runtime.objectives.lm_terms import LogProb, MeanLogProb, Reference
from ortrefine.runtime.objectives.text_terms import Coverage, Echo, Finish, Guard, Length, Meta, Repetition
from ortrefine.runtime.objectives.reward import Reward
from ortrefine.runtime.objectives.contrastive import Contrastive
from ortrefine.runtime.objectives.judge_term import Judge
from ortrefine.runtime.objectives.spec import ObjectiveSpec
from ortrefine.runtime.objectives.objective import Objective, build_term, check_specs, has_guard

__all__ = [
    "Batch", "Context", "Term", "Option", "opt_bool", "opt_float", "opt_int", "TERMS", "register", "term_class",
    "STOPWORDS", "content_words", "LogProb", "MeanLogProb", "Reference", "Coverage", "Echo", "Finish", "Guard", "Length", "Meta", "Repetition", "Reward", "Contrastive", "Judge",
    "ObjectiveSpec", "Objective", "build_term", "check_specs", "has_guard",
]
