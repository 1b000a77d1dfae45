"""The scorer's working state: one batch of candidates as a rows object, the best finished
candidate so far, and the drafts of regenerated suffixes taken from the incumbent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from ortrefine.runtime.refine.proposals import _Candidate
    from ortrefine.runtime.session import KVCache


class _Best(NamedTuple):
    """The best finished candidate so far. rank: its index in the group, the tie-break."""

    J: float
    ids: list[int] | None
    cand: _Candidate | None
    lp: np.ndarray | None  # (len(ids),) float64 per-token log-probs
    parts: dict[str, float]
    rank: int


@dataclass
class _Rows:
    """One batch of candidates while their tails are extended, pass by pass.

    Two indexings. Lists are per candidate r (the batch's order, which is also its rank):
    tails[r] are the tokens after cands[r].start scored so far, tail_lp[r] their float64
    log-probs, tail_ref[r] the reference's log-probs at the positions it covers; pending[r] the
    given tokens not fed yet (keep mode: the rest of Y after the edit). Arrays are per alive row
    j, with alive[j] = r: alive (A,) int64, next_dist (A, vocab) float32 logits of each row's next
    token, mask (A, W) int64 over the cache's positions. Finishing, pruning and the screen only
    shrink the arrays, never the lists.

    kv: the cache of the last pass. kv_rows: (A,) int64, the row of kv each alive row uses, or
    None for kv's rows in order; shrinking only composes this index, so the next pass gathers
    its rows once (one KV copy per pass).
    prefix_lp / prefix_ref: (L + 1,) float64 running sums of the incumbent's lp / ref_lp from 0,
    for the bounds of rows that share its first tokens.
    """

    cands: list[_Candidate]
    tails: list[list[int]]
    tail_lp: list[list[float]]
    tail_ref: list[list[float]]
    pending: list[list[int]]
    alive: np.ndarray
    next_dist: np.ndarray
    kv: KVCache
    mask: np.ndarray
    prefix_lp: np.ndarray
    prefix_ref: np.ndarray | None
    can_prune: bool
    screening: bool  # the screen has yet to run on this batch
    kv_rows: np.ndarray | None = None
    finished: list[int] = field(default_factory=list)  # rows r ended since the last judgement
    y: list[int] = field(default_factory=list)  # the incumbent's ids, whose prefix each row keeps

    def length(self, r: int) -> int:
        return self.cands[r].start + len(self.tails[r])

    def ids(self, r: int) -> list[int]:
        """Row r's output so far: the incumbent's prefix and the tail."""
        return self.y[: self.cands[r].start] + self.tails[r]

    def keep(self, keep: np.ndarray) -> None:
        """Only the alive rows at `keep` ((K,) int64 positions in alive) go on."""
        self.alive, self.mask, self.next_dist = self.alive[keep], self.mask[keep], self.next_dist[keep]
        self.kv_rows = keep if self.kv_rows is None else self.kv_rows[keep]


def _draft(y: list[int], start: int, seq: list[int], room: int, eos: set[int]) -> list[int]:
    """Tokens the incumbent Y has after the latest token of `seq` (prompt-lookup drafting).

    Regenerated suffixes usually fall back into Y's words after the edit; verifying Y's next
    tokens in the same pass costs one batched forward instead of one step per token, and is
    exact: a drafted token is kept only where it equals the greedy choice.
    """
    if room <= 0 or seq[-1] in eos:
        return []
    last, prev = seq[-1], (seq[-2] if len(seq) > 1 else (y[start - 1] if start > 0 else None))
    here = start + len(seq) - 1
    best, best_key = None, None
    for p in range(len(y) - 1):
        if y[p] != last:
            continue
        key = (p > 0 and y[p - 1] == prev, -abs(p - here))
        if best_key is None or key > best_key:
            best, best_key = p, key
    if best is None:
        return []
    draft = y[best + 1 : best + 1 + room]
    for k, t in enumerate(draft):
        if t in eos:
            return draft[: k + 1]
    return draft
