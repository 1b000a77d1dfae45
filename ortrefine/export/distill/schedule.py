"""Seeds, data order and learning rate as functions of (seed, step) alone: that is what lets a
resumed run continue the very curve an uninterrupted one would have drawn."""

from __future__ import annotations

import functools
import hashlib
import math

import numpy as np


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs and platforms)."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def batch_indices(seed: int, position: int, size: int, n: int) -> list[int]:
    """Indices of `size` sequences starting at data position `position` (sequences consumed so
    far): epoch e visits a permutation of range(n) drawn from (seed, e) only."""
    out = []
    for p in range(position, position + size):
        epoch, k = divmod(p, n)
        out.append(int(_permutation(seed, epoch, n)[k]))
    return out


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng(_mix(seed, 2, epoch)).permutation(n)


def lr_at(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over the first 5 % of steps, then cosine decay to 10 % of the peak."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
