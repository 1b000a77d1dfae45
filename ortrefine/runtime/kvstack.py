"""Batches of KV caches whose rows have different real lengths.

The refiner scores candidates that branch off the incumbent at different positions, so each row
of a batch needs its own prefix of one cache. Every row is right-padded to the widest and the
attention mask hides the padding; position ids come from the mask, so each row computes exactly
as if it were alone.

Cache arrays are (batch, kv_heads, length, head_dim) in the graph's float dtype; masks are
(rows, width) with 1 at real positions.
"""

from __future__ import annotations

import numpy as np

from ortrefine.runtime.session import KVCache


def _host_arrays(kv: KVCache) -> list[np.ndarray]:
    """The cache's arrays as numpy: a CUDA cache is copied to the host, a host one is not copied.

    Goes through `KVCache.prefix` (views of the whole length) so this module needs nothing
    private of the session.
    """
    return kv.prefix(kv.length).arrays


def stack_prefix(kv: KVCache, lengths: np.ndarray) -> tuple[KVCache, np.ndarray]:
    """Row r: the first lengths[r] positions of row 0 of `kv`, right-padded to the longest.

    kv: batch 1. lengths: (R,) int. Returns the (R, ...) cache and its (R, max(lengths)) int64
    mask. The padding sits between each row's prefix and the tokens fed after it, so it has to be
    masked rather than trimmed.
    """
    width = int(lengths.max())
    R = len(lengths)
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    if (lengths == width).all():
        return kv.prefix(width).repeat(R) if R > 1 else kv.prefix(width), mask
    arrays = _host_arrays(kv)
    # one allocation for every layer (see session._one_buffer); zeros, not empty: the gap is
    # masked, but a NaN left in freed memory would still poison the attention sums
    out = np.zeros((len(arrays), R, arrays[0].shape[1], width, arrays[0].shape[3]), dtype=arrays[0].dtype)
    for a, o in zip(arrays, out):
        for r, n in enumerate(lengths):
            o[r, :, :n] = a[0, :, :n]
    return KVCache(list(out)), mask


def compact(kv: KVCache, kv_rows: np.ndarray | None, mask: np.ndarray) -> tuple[KVCache, np.ndarray | None, np.ndarray]:
    """The rows' caches with every masked position dropped, so a batch near the model's context
    can still take new tokens.

    mask: (R, W) int64, one row per row of the batch. kv_rows: (R,) int, the row of `kv` each mask
    row uses (None: the same index). Each row keeps its real positions in order, right-padded to
    the longest row; attention and position ids (from the mask) are unchanged. Returns the
    compacted cache, None (its rows now line up with the mask's) and the (R, W') int64 mask; the
    inputs come back as they are when no column can go.
    """
    counts = mask.sum(axis=1)
    width = int(counts.max()) if len(counts) else 0
    if width == mask.shape[1]:
        return kv, kv_rows, mask
    rows = np.arange(len(mask)) if kv_rows is None else np.asarray(kv_rows)
    arrays = _host_arrays(kv)
    out = np.zeros((len(arrays), len(rows), arrays[0].shape[1], width, arrays[0].shape[3]), dtype=arrays[0].dtype)
    for q, r in enumerate(rows):
        cols = np.flatnonzero(mask[q])
        for a, o in zip(arrays, out):
            o[q, :, : len(cols)] = a[int(r)][:, cols]
    new_mask = (np.arange(width)[None, :] < counts[:, None]).astype(mask.dtype)
    return KVCache(list(out)), None, new_mask
