"""Single-step output optimisation: coordinate descent over the tokens of an output Y.

Y⁰ comes from a decoding strategy (or the user). A sweep visits positions in an order; at each
position i it proposes candidates (top-k of p(· | X, Y[:i]), objective proposals, optional
insert/delete), scores them all in batched passes on top of the prefix KV sliced from the last
full pass of Y, and accepts the best (of equal J, the one proposed first) if it raises J by more
than `tol`.

Suffix handling:
- `keep`: the other coordinates stay fixed: candidate = Y[:i] + edit + Y[i+1:].
- `regenerate`: the candidate's suffix is re-decoded greedily (batched across candidates) and
  the candidate is judged on its whole new sequence.

Pruning is exact: LM terms only fall as tokens are added, so a candidate whose upper bound
(`Objective.upper_bound`) drops to the incumbent's J or below is dropped before it is finished.

Modules, each importing only those above it: orders (visit orders), config (RefineConfig),
result (what a run returns), state (the incumbent), proposals (candidate edits), rows (the scorer's batch state), scorer
(batched candidate scoring), relax_sweep (the gradient optimizer's sweep), loop (_Refiner: set-up
and the sweep loop), api (refine, evaluate_objective). Callers import everything from here.
"""

from ortrefine.runtime.refine.api import evaluate_objective, refine
from ortrefine.runtime.refine.config import (
    DEFAULT_OBJECTIVES,
    EDIT_KINDS,
    KEYWORD_OBJECTIVES,
    MODES,
    OPTIMIZERS,
    PROPOSALS,
    TASK_TERMS,
    RefineConfig,
)
from ortrefine.runtime.refine.loop import _Refiner
from ortrefine.runtime.refine.orders import ORDERS
from ortrefine.runtime.refine.proposals import _Candidate
from ortrefine.runtime.refine.result import Cost, Edit, Output, RefineResult
from ortrefine.runtime.refine.state import _State

__all__ = [
    "refine", "evaluate_objective",
    "RefineConfig", "MODES", "PROPOSALS", "OPTIMIZERS", "EDIT_KINDS", "ORDERS",
    "DEFAULT_OBJECTIVES", "KEYWORD_OBJECTIVES", "TASK_TERMS",
    "RefineResult", "Output", "Edit", "Cost",
    # private, for tests that drive a run step by step or spy on one
    "_Refiner", "_State", "_Candidate",
]
