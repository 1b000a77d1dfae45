"""The contrastive term: prefer what the model finds likely and a weaker "amateur" does not.

Contrastive decoding (Li et al. 2023) scores text by log p_expert − β · log p_amateur: the
failures a small model shares with a weaker copy of itself (loops, generic filler, echoes) score
low, and humans preferred its outputs to greedy's. Here it is one more term of J, so the refiner's
exact scoring applies it to whole candidates: J = logprob + β · contrastive with
contrastive(Y) = −Σₜ log p_amateur(yₜ | X, y<t). The amateur is another bundle with the same
tokenizer (the model's own int4 bundle, or its distilled student), loaded once per process.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ortrefine.errors import ConfigError
from ortrefine.runtime.objectives.base import Term
from ortrefine.runtime.objectives.options import Option
from ortrefine.runtime.objectives.other_model import check_folder, rows_per_pass
from ortrefine.runtime.objectives.other_model import load_bundle as load_amateur
from ortrefine.runtime.objectives.registry import register
from ortrefine.runtime.tokenizer import cached_on


def _token_table(tok: Any) -> tuple[str, ...]:
    return cached_on(tok, "token_strings", lambda: tuple(tok.token_strings(list(range(tok.vocab_size)))))


def same_vocabulary(a: Any, b: Any) -> bool:
    """Whether two tokenizers map every id to the same token (the amateur scores the model's ids).
    Each side's table is read once per tokenizer, not on every refine()."""
    return a.vocab_size == b.vocab_size and _token_table(a) == _token_table(b)


@register
class Contrastive(Term):
    """contrastive(Y) = −Σₜ log p_amateur(yₜ | X, y<t) (per token with `mean=1`). It is ≥ 0 and
    has no useful bound, so it switches exact pruning off."""

    name, value_option = "contrastive", "amateur"
    options = {
        "amateur": Option(str, missing="objective 'contrastive' needs an amateur bundle: contrastive=path/to/bundle "
                                       "(the model's int4 bundle or its distilled student), or contrastive:amateur=PATH,weight=0.3"),
        "mean": Option(bool, False),
    }
    amateur: str
    mean: bool

    def configure(self) -> None:
        self.lm_amateur = None
        if self.ctx is None:  # a spec checked without a task: the bundle is opened when one runs
            return
        check_folder(self.name, self.amateur)
        self.lm_amateur = load_amateur(self.amateur)
        if not same_vocabulary(self.lm_amateur.tokenizer, self.ctx.tokenizer):
            raise ConfigError(f"objective 'contrastive': the amateur {self.amateur} has another tokenizer; "
                              "use a bundle of the same model (its int4 bundle or distilled student)")

    def evaluate(self, batch):
        if self.lm_amateur is None or not batch.ids:
            return np.zeros(len(batch), dtype=np.float64)
        step = rows_per_pass(self.lm_amateur, len(batch.ids))
        totals = np.concatenate([np.asarray(self.lm_amateur.score(self.ctx.prompt_ids, batch.ids[i:i + step]).totals, dtype=np.float64)
                                 for i in range(0, len(batch.ids), step)])
        values = -totals
        if self.mean:
            values = values / np.maximum([len(i) for i in batch.ids], 1)
        return values

    def max_value(self) -> float:
        return math.inf
