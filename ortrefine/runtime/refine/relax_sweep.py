"""The gradient optimizer's sweep: relax Y (runtime/relax.py), then verify its projections exactly.

The relaxation ascends an approximation of log P alone (first-order, straight-through), not J, so
it only proposes: each projection is scored by a full pass under the real J and accepted only if
J rises.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ortrefine.runtime.refine.proposals import _encode_roundtrip
from ortrefine.runtime.refine.result import Edit
from ortrefine.runtime.relax import relax

if TYPE_CHECKING:
    from ortrefine.runtime.gradient import GradientModel
    from ortrefine.runtime.refine.config import RefineConfig
    from ortrefine.runtime.refine.result import Cost
    from ortrefine.runtime.refine.state import _State
    from ortrefine.runtime.session import LM


class _RelaxSweep:
    """Mixed into _Refiner (loop.py), which sets these attributes and provides `build_state`."""

    cfg: RefineConfig
    lm: LM
    cost: Cost
    eos: set[int]
    grad_model: GradientModel
    prompt_ids: list[int]

    def relax_sweep(self, state: _State, sweep: int) -> tuple[_State, Edit | None]:
        """One sweep of the gradient optimizer: relax, project, verify exactly, accept if J rises."""
        ended = state.ids[-1] in self.eos
        body, tail = (state.ids[:-1], state.ids[-1:]) if ended else (state.ids, [])
        if not body:
            return state, None
        t0 = time.perf_counter()
        before = self.grad_model.forward_tokens
        projections = relax(self.grad_model, self.prompt_ids, body, self.cfg.relax, banned=sorted(self.eos))
        self.cost.gradient_calls += self.cfg.relax.steps
        self.cost.gradient_seconds += time.perf_counter() - t0
        self.cost.forward_tokens += self.grad_model.forward_tokens - before
        tok = self.lm.tokenizer
        best = state
        for ids in projections:
            self.cost.candidates += 1
            if _encode_roundtrip(tok, tok.decode(ids, skip_special_tokens=False)) != ids:
                self.cost.noncanonical += 1
                continue
            cand = self.build_state(ids + tail)
            if cand.J > best.J:
                best = cand
        if best is state or best.J <= state.J + self.cfg.tol:
            return state, None
        i = next(k for k, (a, b) in enumerate(zip(state.ids, best.ids)) if a != b)
        names = tok.token_strings([state.ids[i], best.ids[i]])
        return best, Edit(sweep, i, "relax", state.ids[i], best.ids[i], names[0], names[1], best.J - state.J, best.J)
