"""The incumbent: Y together with what one full pass over X ⧺ Y gives.

Every sweep reads it (proposals from its distributions, candidates scored on its sliced KV, the
visit orders from its log-probs), so it is computed once per accepted edit, never per candidate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ortrefine.runtime.session import KVCache


@dataclass
class _State:
    """The incumbent Y with everything one full pass over X ⧺ Y gives.

    dist: (L + 1, vocab) float32 logits; row t is the distribution of the token at position t
        (row 0 from the prompt's last position). kv: cache over X ⧺ Y (length P + L).
    lp: (L,) float64 per-token log p(y_t). ref_lp: (min(L, |R|),) float64 log p(R_t) at the
        positions the reference R covers; None without a reference term.
    greedy_from: smallest g with Y[g:] equal to the regenerated continuation of Y[:g] (greedy,
        or the keyword guide's choices).
    """

    ids: list[int]
    dist: np.ndarray
    kv: KVCache
    lp: np.ndarray
    ref_lp: np.ndarray | None
    J: float
    parts: dict[str, float]
    greedy_from: int
    swaps: np.ndarray | None = None  # (L, k) gradient-proposed tokens per position, best first
    grad_norms: np.ndarray | None = None  # (L,) ‖∂ log P / ∂e_i‖
