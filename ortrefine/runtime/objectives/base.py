"""What every objective term shares: the batch it judges, the task context, and the `Term` base
whose constructor checks the weight and the declared options, so a term holds only its formula."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from ortrefine.errors import ConfigError
from ortrefine.runtime.objectives.options import Option

if TYPE_CHECKING:
    from ortrefine.runtime.tokenizer import TextTokenizer


@dataclass
class Batch:
    """Finished candidates to judge, all continuations of one prompt.

    ids[k]: candidate k's output tokens (the eos that ended it included).
    lp[k]: (len,) float64 log p(y_t | X, y_<t). ref_lp[k]: (min(len, |R|),) log p(R_t | X, y_<t),
    present only when a reference term exists. texts: decoded outputs (special tokens skipped).
    """

    prompt: str
    ids: list[list[int]]
    lp: list[np.ndarray]
    texts: list[str]
    ref_lp: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Context:
    """What terms may need about the task: the prompt, tokenizer, eos ids, output length cap."""

    prompt: str
    tokenizer: "TextTokenizer"
    eos_ids: tuple[int, ...]
    max_len: int
    keywords: tuple[str, ...] = ()
    reference: str | None = None
    reference_ids: list[int] = field(default_factory=list)
    initial_len: int | None = None
    prompt_ids: list[int] = field(default_factory=list)  # the encoded prompt (chat template applied), for terms that score with another model
    chat: bool = False  # the prompt is a chat turn (a judge of another family reads the answer on the next line)
    guided: bool = False  # the keyword guide steers every re-decoded suffix toward the missing keywords
    finished: Callable[[Sequence[int]], bool] | None = None  # where the task ends an output without eos (the guide's sentence stop)

    def ended(self, ids: Sequence[int]) -> bool:
        """Y is a whole answer: it ended with eos, or where the task ends it (a keyword sentence's end)."""
        return bool(ids) and (ids[-1] in self.eos_ids or (self.finished is not None and self.finished(ids)))


class Term:
    """One weighted term. Subclasses set `name`, `lm` (True for log-prob-sum terms), `options`
    (name -> Option; each converted value becomes the attribute of that name before `configure`
    runs), and evaluate."""

    name = ""
    lm = False
    needs_reference = False
    options: ClassVar[Mapping[str, Option]] = {}
    value_option: ClassVar[str | None] = None  # the option "NAME=VALUE" sets instead of the weight

    def __init__(self, weight: float = 1.0, ctx: Context | None = None, **options: Any) -> None:
        self.check_weight(weight)
        self.weight = weight
        self.ctx = ctx
        if options and not self.options:
            raise ConfigError(f"objective {self.name!r} takes no option(s) {sorted(options)}")
        self.check_options(options)
        for key, opt in self.options.items():  # in declared order: the first bad option is the one named
            setattr(self, key, opt.convert(self.name, key, options.get(key, opt.default)))
        self.configure()

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Refuse option names the term does not declare, listing the ones it does."""
        unknown = sorted(set(options) - set(cls.options))
        if unknown:
            known = ", ".join(sorted(cls.options)) or "none"
            raise ConfigError(f"objective {cls.name!r}: unknown option(s) {', '.join(map(repr, unknown))}; it takes: {known}")

    @classmethod
    def check_weight(cls, weight: float) -> None:
        if not math.isfinite(weight):
            raise ConfigError(f"objective {cls.name!r}: weight must be a finite number, got {weight}")
        if weight < 0 and not cls.allows_negative_weight():
            raise ConfigError(
                f"objective {cls.name!r}: a negative weight ({weight}) is meaningless here "
                f"(it would reward what the term penalises); use a weight >= 0"
            )

    @classmethod
    def allows_negative_weight(cls) -> bool:
        return False

    def configure(self) -> None:
        """Checks and set-up beyond the options' own (the context a term needs, a model to load)."""

    def evaluate(self, batch: Batch) -> np.ndarray:
        """(K,) float64 raw values (unweighted)."""
        raise NotImplementedError

    def upper_bound(self, lp_sum: np.ndarray, ref_sum: np.ndarray, length: np.ndarray) -> np.ndarray:
        """LM terms: the largest final value given partial sums so far (future terms ≤ 0)."""
        raise NotImplementedError

    def max_value(self) -> float:
        """Text terms: the largest value the term can ever take."""
        return math.inf

    def propose(self, prefix_ids: Sequence[int]) -> list[int]:
        """Extra candidate tokens this term suggests at a position (default none)."""
        return []

    def describe(self) -> str:
        return f"{self.name}={self.weight:g}"
