"""The KV cache a forward pass takes and returns, and the (logits, cache) pair it comes back in.

Apart from the session so that code which only slices, reorders or stacks caches (the refiner,
the serving scheduler, the steppers) depends on numpy and onnxruntime's OrtValue, never on a
loaded model or the LM facade.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnxruntime as ort


def _shape(a: "np.ndarray | ort.OrtValue") -> tuple[int, ...]:
    """An OrtValue's shape is a method, a numpy array's an attribute: one spelling for both."""
    return tuple(a.shape()) if isinstance(a, ort.OrtValue) else a.shape


def _host(a: "np.ndarray | ort.OrtValue") -> np.ndarray:
    """A device-resident (CUDA) tensor copied to numpy; numpy arrays pass through."""
    return a.numpy() if isinstance(a, ort.OrtValue) else a


def _one_buffer(arrays: list[np.ndarray], batch: int) -> list[np.ndarray] | None:
    """Per-layer (batch, heads, length, dim) arrays carved from one allocation (None if shapes differ).

    A cache is 2 × layers arrays of a few hundred KB each; allocated one by one, every array is a
    fresh mapping whose pages fault in on first write, while numpy advises huge pages for one large
    array, so broadcasting a prefix to many rows copies far faster into one buffer
    (benchmarks/RESULTS.md).
    """
    shape = arrays[0].shape[1:]
    if any(a.shape[1:] != shape or a.dtype != arrays[0].dtype for a in arrays):
        return None
    return list(np.empty((len(arrays), batch, *shape), dtype=arrays[0].dtype))


@dataclass
class KVCache:
    """Past keys/values of a batch, one array per `past_key_values.*` input of the graph.

    arrays[j]: (batch, kv_heads, length, head_dim) in the graph's float dtype. Rows are
    sequences; slicing `length` gives the cache of every prefix for free (DESIGN.md, Scoring).
    On CUDA the arrays are OrtValues that stay on the device while the cache is only fed back
    (decoding); slicing or row selection copies them to the host first.
    """

    arrays: list

    @property
    def length(self) -> int:
        return int(_shape(self.arrays[0])[2])

    @property
    def batch(self) -> int:
        return int(_shape(self.arrays[0])[0])

    def prefix(self, length: int) -> "KVCache":
        """Cache of the first `length` positions (views, no copy)."""
        return KVCache([_host(a)[:, :, :length] for a in self.arrays])

    def rows(self, index: np.ndarray | Sequence[int]) -> "KVCache":
        """Select / reorder / repeat rows (beam reordering, broadcasting one prefix to K rows)."""
        idx = np.asarray(index, dtype=np.int64)
        arrays = [_host(a) for a in self.arrays]
        out = _one_buffer(arrays, len(idx))
        if out is None:
            return KVCache([a[idx] for a in arrays])
        if idx.size and (idx.min() < -self.batch or idx.max() >= self.batch):
            raise IndexError(f"row index out of range for a batch of {self.batch}")
        for a, o in zip(arrays, out):
            # mode="wrap" (bounds checked above): take() buffers `out` in its default mode, an extra
            # copy per layer
            np.take(a, idx, axis=0, out=o, mode="wrap")
        return KVCache(out)

    def repeat(self, n: int) -> "KVCache":
        """One prompt's cache shared by n continuations; an n-row cache is returned as is."""
        if self.batch == n:
            return self
        if self.batch != 1:
            raise ValueError(f"can only broadcast a batch-1 cache, got batch {self.batch}")
        return self.rows(np.zeros(n, dtype=np.int64))

    def on_device(self) -> bool:
        return any(isinstance(a, ort.OrtValue) for a in self.arrays)


@dataclass
class ForwardOutput:
    """logits: (batch, new_tokens, vocab) float32; kv: cache over past + new tokens.

    Beside the cache, not the facade, so the IO-binding path and scripted test models build one
    without a session.
    """

    logits: np.ndarray
    kv: KVCache
