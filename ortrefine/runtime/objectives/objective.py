"""J(Y) = Σₖ wₖ · termₖ(Y): the one scoring interface of the refiner, and the bound on J that
exact pruning compares partial candidates against."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ortrefine.errors import ConfigError, ObjectiveError
from ortrefine.runtime.objectives.base import Batch, Context, Term
from ortrefine.runtime.objectives.registry import term_class
from ortrefine.runtime.objectives.spec import ObjectiveSpec


def check_spec(spec: ObjectiveSpec) -> type[Term]:
    """The term class a spec names, once its options and weight pass; options are checked before
    the weight so a misspelt option is what the user hears about first."""
    cls = term_class(spec.name)
    cls.check_options(spec.options)
    weight = spec.weight
    if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating)):
        raise ConfigError(f"objective {spec.name!r}: weight must be a finite number, got {weight!r}")
    cls.check_weight(float(weight))
    return cls


def build_term(spec: ObjectiveSpec, ctx: Context) -> Term:
    """The term a spec names, built on its context (some terms load a model here)."""
    return check_spec(spec)(float(spec.weight), ctx, **spec.options)


def _parsed(specs: Sequence[ObjectiveSpec | str]) -> list[ObjectiveSpec]:
    if not specs:
        raise ConfigError("at least one objective term is needed (e.g. --objective logprob)")
    return [ObjectiveSpec.parse(s) if isinstance(s, str) else s for s in specs]


def _check_once(name: str, names: list[str]) -> None:
    # `evaluate` keys each term's values by name, so a second term of a name would take the first's entry
    if name in names:
        raise ConfigError(f"objective {name!r} is given twice; give each term once (add the weights up)")


def check_specs(specs: Sequence[ObjectiveSpec | str]) -> list[ObjectiveSpec]:
    """Every check of J that needs no context and loads no model (known terms, their options and
    weights, each term once), in the order Objective makes them; the parsed specs."""
    parsed = _parsed(specs)
    names: list[str] = []
    for spec in parsed:
        check_spec(spec)
        _check_once(spec.name, names)
        names.append(spec.name)
    return parsed


def has_guard(terms: Sequence[Term | ObjectiveSpec]) -> bool:
    """Whether J holds a guard of positive weight (built terms or checked specs): the end repair
    runs only then, and `refine --no-end-repair` means something only then."""
    return any(t.name == "guard" and t.weight > 0 for t in terms)


class Objective:
    """The weighted sum; evaluates every term on a batch and bounds partial candidates."""

    def __init__(self, specs: Sequence[ObjectiveSpec | str], ctx: Context) -> None:
        self.terms: list[Term] = []
        for spec in _parsed(specs):
            term = build_term(spec, ctx)
            _check_once(term.name, [t.name for t in self.terms])
            self.terms.append(term)
        self.ctx = ctx
        self.needs_reference = any(t.needs_reference for t in self.terms)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.terms]

    def evaluate(self, batch: Batch) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(K,) totals and the raw value of each term."""
        parts = {t.name: t.evaluate(batch) for t in self.terms}
        with np.errstate(over="ignore", invalid="ignore"):
            total = np.asarray(sum(t.weight * parts[t.name] for t in self.terms), dtype=np.float64)
        if not np.all(np.isfinite(total)):
            terms = ", ".join(f"{t.describe()} ({float(np.min(parts[t.name])):g})" for t in self.terms)
            raise ObjectiveError(f"the objective is not a finite number ({terms}); use smaller weights")
        return total, parts

    def can_prune(self) -> bool:
        """Exact pruning needs every non-LM term bounded above."""
        return all(t.lm or math.isfinite(t.max_value()) for t in self.terms)

    def upper_bound(self, lp_sum: np.ndarray, ref_sum: np.ndarray, length: np.ndarray, lm_only: bool = False) -> np.ndarray:
        """Largest J any completion of these partial candidates can reach.

        lm_only: the LM terms alone (for ranking candidates against each other, where a text
        term's bound is the same constant for every row, or infinite for an unbounded reward).
        """
        bound = np.zeros_like(lp_sum, dtype=np.float64)
        for t in self.terms:
            if t.lm:
                bound = bound + t.weight * t.upper_bound(lp_sum, ref_sum, length)
            elif not lm_only:
                bound = bound + t.weight * t.max_value()
        return bound

    def propose(self, prefix_ids: Sequence[int]) -> list[int]:
        out: list[int] = []
        for t in self.terms:
            out.extend(t.propose(prefix_ids))
        return out
