"""The batched decode step: running rows of different lengths sharing one left-padded KV cache.

The cache is (batch, kv_heads, width, head_dim) with each row's tokens right-aligned and its
attention mask 0 over the gap, and `LM.forward` derives position ids from the mask, so a row sees
exactly what it would see alone. When rows leave, columns that are padding in every remaining row
are cut off, so a finished long request stops costing the short ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ortrefine.runtime.session import KVCache

if TYPE_CHECKING:
    from ortrefine.runtime.session import LM
    from ortrefine.serve.sequence import Seq


class Batch:
    """The running rows and their left-padded shared cache.

    kv[j]: (rows, kv_heads, width, head_dim); mask: (rows, width) int64, 0 over each row's left gap.
    While one row runs alone it steps through `LM.steps` instead (`solo`): the path `generate`
    takes, which on the fused CPU graph extends a KV buffer in place rather than copying the cache
    every step; the cache becomes arrays again when another row joins.
    """

    def __init__(self, lm: "LM") -> None:
        self.lm = lm
        self.rows: list[Seq] = []
        self.kv: list[np.ndarray] = []
        self.mask = np.zeros((0, 0), dtype=np.int64)
        self.solo = None

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def _unsolo(self) -> None:
        if self.solo is not None:
            steps, self.solo = self.solo, None
            if hasattr(steps, "buffers"):  # SharedKVSteps: the filled part of its buffers
                self.kv = [b[:, :, : steps.length] for b in steps.buffers]
            else:
                self.kv = [_host(a) for a in steps.kv.arrays]
            self.mask = np.ones((1, self.rows[0].length), dtype=np.int64)

    def add(self, seq: "Seq", kv: KVCache) -> None:
        self._unsolo()
        arrays = [_host(a) for a in kv.arrays]
        n = arrays[0].shape[2]
        seq.length = n
        if not self.rows:
            self.rows, self.kv, self.mask = [seq], arrays, np.ones((1, n), dtype=np.int64)
            return
        width = max(self.width, n)
        old_pad, new_pad = width - self.width, width - n
        self.kv = [np.concatenate([_left_pad(a, old_pad), _left_pad(b, new_pad)], axis=0) for a, b in zip(self.kv, arrays)]
        row_mask = np.concatenate([np.zeros((1, new_pad), np.int64), np.ones((1, n), np.int64)], axis=1)
        self.mask = np.concatenate([np.pad(self.mask, ((0, 0), (old_pad, 0))), row_mask], axis=0)
        self.rows.append(seq)

    def keep(self, index: list[int]) -> None:
        """Keep only these rows; cut the columns that are now padding in every row."""
        if len(index) == len(self.rows):
            return
        self._unsolo()
        self.rows = [self.rows[i] for i in index]
        if not self.rows:
            self.kv, self.mask = [], np.zeros((0, 0), dtype=np.int64)
            return
        cut = self.width - max(r.length for r in self.rows)
        idx = np.asarray(index, dtype=np.int64)
        self.kv = [np.ascontiguousarray(a[idx, :, cut:]) for a in self.kv]
        self.mask = np.ascontiguousarray(self.mask[idx, cut:])

    def step(self) -> np.ndarray:
        """Feed every row's newest token in one pass; (rows, vocab) float32 logits."""
        if len(self.rows) == 1:  # alone, hence unpadded (keep() cut the gap)
            r = self.rows[0]
            if self.solo is None:
                self.solo = self.lm.steps(KVCache(self.kv), r.params.max_tokens - len(r.ids) + 1)
                self.kv = []
            logits = self.solo.step(r.ids[-1])
            r.length += 1
            return logits[None]
        tokens = np.array([[r.ids[-1]] for r in self.rows], dtype=np.int64)
        mask = np.concatenate([self.mask, np.ones((len(self.rows), 1), dtype=np.int64)], axis=1)
        out = self.lm.forward(tokens, KVCache(self.kv), mask, keep_last=1)
        self.kv = [_host(a) for a in out.kv.arrays]
        self.mask = mask
        for r in self.rows:
            r.length += 1
        return out.logits[:, -1]


def _host(a: object) -> np.ndarray:
    """A cache array on the host (CUDA OrtValues are copied)."""
    return a if isinstance(a, np.ndarray) else np.asarray(a.numpy())


def _left_pad(a: np.ndarray, n: int) -> np.ndarray:
    """a: (rows, heads, length, dim) → (rows, heads, n + length, dim), zeros first."""
    if n == 0:
        return a
    return np.concatenate([np.zeros((*a.shape[:2], n, a.shape[3]), dtype=a.dtype), a], axis=2)
