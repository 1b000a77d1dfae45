"""Terms that are functions of sums of per-token log-probabilities, each ≤ 0: a partial sum bounds
the final value from above, which is what lets the refiner drop a candidate exactly before it is
fully scored (`upper_bound`)."""

from __future__ import annotations

import numpy as np

from ortrefine.errors import ConfigError
from ortrefine.runtime.objectives.base import Batch, Term
from ortrefine.runtime.objectives.options import Option
from ortrefine.runtime.objectives.registry import register
from ortrefine.runtime.objectives.text import f1, words


@register
class LogProb(Term):
    """logprob(Y) = Σₜ log p(yₜ | X, y<t)."""

    name, lm = "logprob", True

    def evaluate(self, batch: Batch) -> np.ndarray:
        return np.array([lp.sum() for lp in batch.lp], dtype=np.float64)

    def upper_bound(self, lp_sum, ref_sum, length):
        return lp_sum


@register
class MeanLogProb(Term):
    """mean-logprob(Y) = logprob(Y) / |Y|^α  (α = 1: per-token mean; `gnmt=1`: / ((5+|Y|)/6)^α)."""

    name, lm = "mean-logprob", True
    options = {
        "alpha": Option(float, 1.0, low=0.0, error="mean-logprob: alpha must be a finite number >= 0, got {value}"),
        "gnmt": Option(bool, False),
    }
    alpha: float
    gnmt: bool

    def _norm(self, n: np.ndarray) -> np.ndarray:
        n = np.maximum(np.asarray(n, dtype=np.float64), 1)
        return ((5 + n) / 6) ** self.alpha if self.gnmt else n**self.alpha

    def evaluate(self, batch):
        return np.array([lp.sum() for lp in batch.lp]) / self._norm(np.array([len(i) for i in batch.ids]))

    def upper_bound(self, lp_sum, ref_sum, length):
        # lp_sum ≤ 0 only falls and the length can grow to max_len: the largest denominator bounds it
        return lp_sum / self._norm(np.full_like(lp_sum, self.ctx.max_len if self.ctx else 1))


@register
class Reference(Term):
    """reference(Y) = Σ_{t<min(|Y|,|R|)} log p(Rₜ | X, y<t) / |R|  +  overlap · F1(words(Y), words(R)).

    The first part is the (negated) cross-entropy of the reference along Y's prefixes: high when, at
    every step, the model would still continue Y the way R goes. The second rewards shared words.
    """

    name, lm, needs_reference = "reference", True, True
    options = {"overlap": Option(float, 1.0, low=0.0, error="reference: overlap must be a finite number >= 0, got {value}")}
    overlap: float

    def configure(self) -> None:
        if self.ctx is not None and not (self.ctx.reference or "").strip():
            raise ConfigError("objective 'reference' needs a reference text: pass --reference TEXT")
        if self.ctx is not None and not self.ctx.reference_ids:
            raise ConfigError("the reference text encodes to no tokens; pass a reference with some text")

    def _n(self) -> int:
        return max(1, len(self.ctx.reference_ids)) if self.ctx else 1

    def evaluate(self, batch):
        ce = np.array([r.sum() for r in batch.ref_lp or [np.zeros(0)] * len(batch)]) / self._n()
        ref_words = words(self.ctx.reference or "") if self.ctx else []
        overlap = np.array([f1(words(t), ref_words) for t in batch.texts])
        return ce + self.overlap * overlap

    def upper_bound(self, lp_sum, ref_sum, length):
        return ref_sum / self._n() + self.overlap * 1.0
